"""Settings of the lookup function: the only reader of ``os.environ``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loaders.store import parse_uri

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_KEY_COLUMN = "customer_id"
DEFAULT_REFRESH_TTL_SECONDS = 300.0
DEFAULT_MAX_STALENESS_SECONDS = 172800.0
DEFAULT_MAX_BATCH_KEYS = 100
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
    """

    snapshot_uri: str
    key_column: str = DEFAULT_KEY_COLUMN
    refresh_ttl_seconds: float = DEFAULT_REFRESH_TTL_SECONDS
    max_staleness_seconds: float = DEFAULT_MAX_STALENESS_SECONDS
    max_batch_keys: int = DEFAULT_MAX_BATCH_KEYS

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
        )


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
