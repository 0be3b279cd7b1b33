"""Settings of the lookup function: the only reader of ``os.environ``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loaders.metrics import DEFAULT_NAMESPACE
from loaders.store import StorageBudget, parse_uri

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_KEY_COLUMN = "customer_id"
DEFAULT_REFRESH_TTL_SECONDS = 300.0
DEFAULT_MAX_STALENESS_SECONDS = 172800.0
DEFAULT_MAX_BATCH_KEYS = 100
# Time budgets (README "Reliability"): one S3 call is at most attempts x (connect + read), the
# warm wait keeps a request with a snapshot near 3 s, and the cold wait answers the first
# request (a 503 with Retry-After at worst) well inside the function's 10 s timeout.
DEFAULT_S3_CONNECT_TIMEOUT_SECONDS = 1.0
DEFAULT_S3_READ_TIMEOUT_SECONDS = 2.0
DEFAULT_S3_MAX_ATTEMPTS = 2
DEFAULT_REFRESH_WAIT_SECONDS = 2.5
DEFAULT_COLD_LOAD_WAIT_SECONDS = 7.0
# Function memory the runtime, imports and requests need besides the snapshots.
DEFAULT_MEMORY_MARGIN_MB = 256
DEFAULT_STORAGE = StorageBudget(
    DEFAULT_S3_CONNECT_TIMEOUT_SECONDS, DEFAULT_S3_READ_TIMEOUT_SECONDS, DEFAULT_S3_MAX_ATTEMPTS
)
# "auto": due pointer checks run outside requests where the platform allows (service.refresher);
# "request": the request that finds the TTL lapsed starts the check, as before.
REFRESH_MODES = ("auto", "request")
SERVE_MODES = ("auto", "memory", "tiered")
SHARE_MODES = ("auto", "on", "off")
DEFAULT_TIERED_CACHE_MB = 128
DEFAULT_TIERED_FETCH_WORKERS = 8
DEFAULT_SHARE_DIR = "/tmp/snapshot-share"
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class ConfigError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated configuration, read once per container.

    Attributes
    ----------
    snapshot_uri : str
        ``file:///abs/path`` or ``s3://bucket/prefix``.
    key_column : str, default "customer_id"
    refresh_ttl_seconds : float, default 300
        How long the pointer is trusted before the next conditional re-check.
    max_staleness_seconds : float, default 172800
        Snapshot age past which answers say ``"stale": true``.
    max_batch_keys : int, default 100
    storage : StorageBudget
        ``S3_CONNECT_TIMEOUT_SECONDS`` (1), ``S3_READ_TIMEOUT_SECONDS`` (2) and
        ``S3_MAX_ATTEMPTS`` (2, the first try included).
    refresh_wait_seconds : float, default 2.5
        ``REFRESH_WAIT_SECONDS``: the longest a request with a snapshot waits on a refresh.
    cold_load_wait_seconds : float, default 7
        ``COLD_LOAD_WAIT_SECONDS``: the longest a request waits for the first load (then 503).
    memory_budget_mb : int or None
        ``MEMORY_BUDGET_MB``; by default ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` less 256 MB, and
        no budget outside Lambda. 0 turns the check off.
    metrics_namespace : str, default "CustomerLookup"
        ``POWERTOOLS_METRICS_NAMESPACE``: where the function's metrics go in CloudWatch.
    refresh_mode : str, default "auto"
        ``REFRESH_MODE``: ``auto`` runs due pointer checks after the response (an internal
        extension) or on a timer where the environment is never frozen; ``request`` keeps
        them in the request that finds the TTL lapsed.
    runtime_api : str or None
        ``AWS_LAMBDA_RUNTIME_API``, set by Lambda: ``host:port`` of the Runtime and
        Extensions APIs. None outside Lambda.
    max_concurrency : int or None
        ``AWS_LAMBDA_MAX_CONCURRENCY``, set by Lambda Managed Instances only (one process per
        concurrent request; the environment is never frozen between requests).
    serve_mode : str, default "auto"
        ``SERVE_MODE``: ``memory`` holds the whole table; ``tiered`` holds only the block index
        and fetches 4,096-row blocks by ranged read into a bounded LRU; ``auto`` picks
        ``tiered`` for a version whose projected memory does not fit the memory budget.
    tiered_cache_mb : int, default 128
        ``TIERED_CACHE_MB``: the most decoded blocks a tiered reader keeps.
    tiered_fetch_workers : int, default 8
        ``TIERED_FETCH_WORKERS``: the most ranged reads one tiered reader runs at once.
    share_mode : str, default "auto"
        ``SHARE_SNAPSHOTS``: ``on`` maps one copy of a memory-mode snapshot per machine from
        ``share_dir``; ``auto`` does where several processes share it (Lambda Managed
        Instances); ``off`` keeps a private copy.
    share_dir : str, default "/tmp/snapshot-share"
        ``SHARE_DIR``: where shared copies and their lock files live.
    share_max_mb : int or None
        ``SHARE_MAX_MB``: the most ``share_dir`` may hold; by default half of its file
        system's size.
    """

    snapshot_uri: str
    key_column: str = DEFAULT_KEY_COLUMN
    refresh_ttl_seconds: float = DEFAULT_REFRESH_TTL_SECONDS
    max_staleness_seconds: float = DEFAULT_MAX_STALENESS_SECONDS
    max_batch_keys: int = DEFAULT_MAX_BATCH_KEYS
    storage: StorageBudget = DEFAULT_STORAGE
    refresh_wait_seconds: float = DEFAULT_REFRESH_WAIT_SECONDS
    cold_load_wait_seconds: float = DEFAULT_COLD_LOAD_WAIT_SECONDS
    memory_budget_mb: int | None = None
    metrics_namespace: str = DEFAULT_NAMESPACE
    refresh_mode: str = "auto"
    runtime_api: str | None = None
    max_concurrency: int | None = None
    serve_mode: str = "auto"
    tiered_cache_mb: int = DEFAULT_TIERED_CACHE_MB
    tiered_fetch_workers: int = DEFAULT_TIERED_FETCH_WORKERS
    share_mode: str = "auto"
    share_dir: str = DEFAULT_SHARE_DIR
    share_max_mb: int | None = None

    @property
    def shares_snapshots(self) -> bool:
        """Whether memory-mode snapshots are mapped from one copy per machine."""
        if self.share_mode == "auto":
            return self.max_concurrency is not None
        return self.share_mode == "on"

    @property
    def memory_budget_bytes(self) -> int | None:
        """The memory budget in bytes, or None for no check."""
        return self.memory_budget_mb * 1024 * 1024 if self.memory_budget_mb else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable.

        Raises
        ------
        ConfigError
            Naming the first variable that is missing or malformed.
        """
        env = os.environ if environ is None else environ
        uri = env.get("SNAPSHOT_URI", "").strip()
        if not uri:
            raise ConfigError("SNAPSHOT_URI is required: file:///abs/path or s3://bucket/prefix")
        try:
            parse_uri(uri)
        except ValueError as exc:
            raise ConfigError(f"SNAPSHOT_URI: {exc}") from exc
        key_column = env.get("KEY_COLUMN", DEFAULT_KEY_COLUMN)
        if not _COLUMN_NAME.fullmatch(key_column):
            raise ConfigError(f"KEY_COLUMN: {key_column!r} is not a column name")
        return cls(
            snapshot_uri=uri,
            key_column=key_column,
            refresh_ttl_seconds=_number(env, "REFRESH_TTL_SECONDS", DEFAULT_REFRESH_TTL_SECONDS, 0),
            max_staleness_seconds=_number(
                env, "MAX_STALENESS_SECONDS", DEFAULT_MAX_STALENESS_SECONDS, 1
            ),
            max_batch_keys=int(
                _number(env, "MAX_BATCH_KEYS", DEFAULT_MAX_BATCH_KEYS, 1, integer=True)
            ),
            storage=StorageBudget(
                connect_timeout_seconds=_number(
                    env, "S3_CONNECT_TIMEOUT_SECONDS", DEFAULT_S3_CONNECT_TIMEOUT_SECONDS, 0.1
                ),
                read_timeout_seconds=_number(
                    env, "S3_READ_TIMEOUT_SECONDS", DEFAULT_S3_READ_TIMEOUT_SECONDS, 0.1
                ),
                max_attempts=int(
                    _number(env, "S3_MAX_ATTEMPTS", DEFAULT_S3_MAX_ATTEMPTS, 1, integer=True)
                ),
            ),
            refresh_wait_seconds=_number(
                env, "REFRESH_WAIT_SECONDS", DEFAULT_REFRESH_WAIT_SECONDS, 0
            ),
            cold_load_wait_seconds=_number(
                env, "COLD_LOAD_WAIT_SECONDS", DEFAULT_COLD_LOAD_WAIT_SECONDS, 0
            ),
            memory_budget_mb=_memory_budget_mb(env),
            metrics_namespace=_namespace(env),
            refresh_mode=_refresh_mode(env),
            runtime_api=(env.get("AWS_LAMBDA_RUNTIME_API") or "").strip() or None,
            max_concurrency=_max_concurrency(env),
            serve_mode=_choice(env, "SERVE_MODE", SERVE_MODES),
            tiered_cache_mb=int(
                _number(env, "TIERED_CACHE_MB", DEFAULT_TIERED_CACHE_MB, 1, integer=True)
            ),
            tiered_fetch_workers=int(
                _number(env, "TIERED_FETCH_WORKERS", DEFAULT_TIERED_FETCH_WORKERS, 1, integer=True)
            ),
            share_mode=_choice(env, "SHARE_SNAPSHOTS", SHARE_MODES),
            share_dir=(env.get("SHARE_DIR") or "").strip() or DEFAULT_SHARE_DIR,
            share_max_mb=int(_number(env, "SHARE_MAX_MB", 0, 0, integer=True)) or None,
        )


def _refresh_mode(env: Mapping[str, str]) -> str:
    return _choice(env, "REFRESH_MODE", REFRESH_MODES)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first by default), case-insensitive."""
    value = (env.get(name) or "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _max_concurrency(env: Mapping[str, str]) -> int | None:
    if not (env.get("AWS_LAMBDA_MAX_CONCURRENCY") or "").strip():
        return None
    return int(_number(env, "AWS_LAMBDA_MAX_CONCURRENCY", 1, 1, integer=True))


def _namespace(env: Mapping[str, str]) -> str:
    namespace = (env.get("POWERTOOLS_METRICS_NAMESPACE") or "").strip() or DEFAULT_NAMESPACE
    # CloudWatch namespaces: 1-255 of letters, digits and . - _ / # : and spaces.
    if not re.fullmatch(r"[A-Za-z0-9.\-_/#: ]{1,255}", namespace):
        raise ConfigError(f"POWERTOOLS_METRICS_NAMESPACE: {namespace!r} is not a namespace")
    return namespace


def _memory_budget_mb(env: Mapping[str, str]) -> int | None:
    """``MEMORY_BUDGET_MB`` if set, else the Lambda function's memory less a margin."""
    if (env.get("MEMORY_BUDGET_MB") or "").strip():
        return int(_number(env, "MEMORY_BUDGET_MB", 0, 0, integer=True)) or None
    if not (env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or "").strip():
        return None
    size = int(_number(env, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0, 128, integer=True))
    return max(size - DEFAULT_MEMORY_MARGIN_MB, size // 2)


def in_lambda(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a Lambda execution environment (set by the runtime)."""
    env = os.environ if environ is None else environ
    return bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))


def _number(
    env: Mapping[str, str], name: str, default: float, minimum: float, *, integer: bool = False
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}: {raw!r} is not {kind}") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name}: {raw!r} must be a finite number >= {minimum}")
    return value
