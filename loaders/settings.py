"""Settings of the builder: the only reader of ``os.environ`` on the producer side."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loaders.fingerprint import DEFAULT_BOUND, FingerprintBound
from loaders.manifest import Column
from loaders.metrics import DEFAULT_NAMESPACE
from loaders.store import StorageBudget, parse_uri
from loaders.validate import DEFAULT_MAX_ROW_CHANGE, parse_contract

if TYPE_CHECKING:
    from collections.abc import Mapping

ENGINES = ("athena", "duckdb")
DEFAULT_DEADLINE_SECONDS = 900.0
# One S3 or Athena call may take at most attempts x (connect + read); the builder has minutes,
# not the lookup's seconds, but never botocore's 60 s defaults with open-ended retries.
DEFAULT_S3_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_S3_READ_TIMEOUT_SECONDS = 30.0
DEFAULT_S3_MAX_ATTEMPTS = 5
DEFAULT_STORAGE = StorageBudget(
    DEFAULT_S3_CONNECT_TIMEOUT_SECONDS, DEFAULT_S3_READ_TIMEOUT_SECONDS, DEFAULT_S3_MAX_ATTEMPTS
)
DEFAULT_ATHENA_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_ATHENA_READ_TIMEOUT_SECONDS = 30.0
DEFAULT_ATHENA_MAX_ATTEMPTS = 6  # throttling is common; standard mode backs off between tries
# DuckDB's memory limit in a build (DUCKDB_MEMORY_LIMIT): past it, sorts, joins and
# aggregates spill to the build's temporary directory.
DEFAULT_DUCKDB_MEMORY_LIMIT = "4GB"
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# A Glue table as Athena names it: table, database.table or awsdatacatalog.database.table.
_TABLE = re.compile(r"^[A-Za-z0-9_-]{1,255}(\.[A-Za-z0-9_-]{1,255}){0,2}$")


class BuildConfigError(ValueError):
    """A builder setting is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """Everything one build needs to know, from the environment or ``snapshotctl`` options."""

    snapshot_uri: str
    sql: str
    engine: str = "duckdb"  # the embedded default; the builder Lambda sets ENGINE=athena
    key_column: str = "customer_id"
    workgroup: str = "primary"
    database: str = "default"
    staging_uri: str | None = None
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    min_rows: int = 1
    max_row_change: float = DEFAULT_MAX_ROW_CHANGE
    contract: tuple[Column, ...] = ()
    tables: tuple[tuple[str, str], ...] = ()
    storage: StorageBudget = DEFAULT_STORAGE
    athena_connect_timeout_seconds: float = DEFAULT_ATHENA_CONNECT_TIMEOUT_SECONDS
    athena_read_timeout_seconds: float = DEFAULT_ATHENA_READ_TIMEOUT_SECONDS
    athena_max_attempts: int = DEFAULT_ATHENA_MAX_ATTEMPTS
    source_tables: tuple[str, ...] = ()
    fingerprint: FingerprintBound = DEFAULT_BOUND
    metrics_namespace: str = DEFAULT_NAMESPACE
    duckdb_memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> BuildSettings:
        """Read ``SNAPSHOT_URI``, ``QUERY_SQL`` or ``QUERY_FILE``, ``ENGINE``, ``KEY_COLUMN``,
        ``ATHENA_WORKGROUP``, ``ATHENA_DATABASE``, ``ATHENA_STAGING_URI``,
        ``QUERY_DEADLINE_SECONDS``, ``MIN_ROWS``, ``MAX_ROW_CHANGE``, ``CONTRACT_COLUMNS``,
        the S3 budget (see :func:`storage_from_env`) and ``ATHENA_CONNECT_TIMEOUT_SECONDS`` (5),
        ``ATHENA_READ_TIMEOUT_SECONDS`` (30) and ``ATHENA_MAX_ATTEMPTS`` (6, the first try
        included), and the source fingerprint's ``SOURCE_TABLES``, ``FINGERPRINT_MAX_OBJECTS``
        and ``FINGERPRINT_MAX_SECONDS`` (see :func:`fingerprint_from_env`), and
        ``DUCKDB_MEMORY_LIMIT`` (4GB: DuckDB's limit while it checks, compares and sorts the
        rows out of core, and runs the query of the duckdb engine); ``overrides``
        (non-None values, e.g. from command-line options) win.

        Raises
        ------
        BuildConfigError
            Naming the first setting that is missing or malformed.
        """
        env = dict(os.environ if environ is None else environ)
        given = {k: v for k, v in overrides.items() if v is not None}
        sql = given.pop("sql", None) or env.get("QUERY_SQL") or _read_sql(env.get("QUERY_FILE"))
        values = {
            "snapshot_uri": given.pop("snapshot_uri", None) or env.get("SNAPSHOT_URI", ""),
            "sql": sql or "",
            "engine": given.pop("engine", None) or env.get("ENGINE", "duckdb"),
            "key_column": given.pop("key_column", None) or env.get("KEY_COLUMN", "customer_id"),
            "workgroup": given.pop("workgroup", None) or env.get("ATHENA_WORKGROUP", "primary"),
            "database": given.pop("database", None) or env.get("ATHENA_DATABASE", "default"),
            "staging_uri": given.pop("staging_uri", None) or env.get("ATHENA_STAGING_URI"),
            "deadline_seconds": _number(
                given.pop("deadline_seconds", None) or env.get("QUERY_DEADLINE_SECONDS"),
                "QUERY_DEADLINE_SECONDS", DEFAULT_DEADLINE_SECONDS, float,
            ),
            "min_rows": _number(
                given.pop("min_rows", None) or env.get("MIN_ROWS"), "MIN_ROWS", 1, int
            ),
            "max_row_change": _number(
                given.pop("max_row_change", None) or env.get("MAX_ROW_CHANGE"),
                "MAX_ROW_CHANGE", DEFAULT_MAX_ROW_CHANGE, float,
            ),
            "contract": _contract(given.pop("contract", None) or env.get("CONTRACT_COLUMNS")),
            "tables": tuple(given.pop("tables", ())),
            "storage": storage_from_env(env),
            "athena_connect_timeout_seconds": _positive(
                env, "ATHENA_CONNECT_TIMEOUT_SECONDS", DEFAULT_ATHENA_CONNECT_TIMEOUT_SECONDS, float
            ),
            "athena_read_timeout_seconds": _positive(
                env, "ATHENA_READ_TIMEOUT_SECONDS", DEFAULT_ATHENA_READ_TIMEOUT_SECONDS, float
            ),
            "athena_max_attempts": _positive(
                env, "ATHENA_MAX_ATTEMPTS", DEFAULT_ATHENA_MAX_ATTEMPTS, int
            ),
            "source_tables": _source_tables(env.get("SOURCE_TABLES")),
            "fingerprint": fingerprint_from_env(env),
            "metrics_namespace": env.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE,
            "duckdb_memory_limit": (
                env.get("DUCKDB_MEMORY_LIMIT", "").strip() or DEFAULT_DUCKDB_MEMORY_LIMIT
            ),
        }  # fmt: skip
        if given:
            raise BuildConfigError(f"unknown settings: {sorted(given)}")
        return cls(**values)._checked()

    def _checked(self) -> BuildSettings:
        if not self.snapshot_uri:
            raise BuildConfigError("SNAPSHOT_URI is required (--to): file:///abs/path or s3://...")
        try:
            parse_uri(self.snapshot_uri)
        except ValueError as exc:
            raise BuildConfigError(f"SNAPSHOT_URI: {exc}") from exc
        if not self.sql.strip():
            raise BuildConfigError("QUERY_SQL or QUERY_FILE is required (--sql FILE)")
        if self.engine not in ENGINES:
            raise BuildConfigError(f"ENGINE: {self.engine!r} is not one of {ENGINES}")
        if not _MEMORY.fullmatch(self.duckdb_memory_limit):
            raise BuildConfigError(
                f"DUCKDB_MEMORY_LIMIT: {self.duckdb_memory_limit!r} is not a size such as 4GB"
            )
        if not _NAME.fullmatch(self.key_column):
            raise BuildConfigError(f"KEY_COLUMN: {self.key_column!r} is not a column name")
        if self.engine == "athena":
            if not self.staging_uri:
                raise BuildConfigError("ATHENA_STAGING_URI is required for the athena engine")
            if parse_uri(self.staging_uri)[0] != "s3":
                raise BuildConfigError("ATHENA_STAGING_URI must be s3://bucket/prefix")
        return self


def storage_from_env(environ: Mapping[str, str] | None = None) -> StorageBudget:
    """The budget of each S3 call: ``S3_CONNECT_TIMEOUT_SECONDS`` (5),
    ``S3_READ_TIMEOUT_SECONDS`` (30) and ``S3_MAX_ATTEMPTS`` (5, the first try included).

    Raises
    ------
    BuildConfigError
        If one of them is not a positive number.
    """
    env = os.environ if environ is None else environ
    return StorageBudget(
        connect_timeout_seconds=_positive(
            env, "S3_CONNECT_TIMEOUT_SECONDS", DEFAULT_S3_CONNECT_TIMEOUT_SECONDS, float
        ),
        read_timeout_seconds=_positive(
            env, "S3_READ_TIMEOUT_SECONDS", DEFAULT_S3_READ_TIMEOUT_SECONDS, float
        ),
        max_attempts=_positive(env, "S3_MAX_ATTEMPTS", DEFAULT_S3_MAX_ATTEMPTS, int),
    )


def fingerprint_from_env(environ: Mapping[str, str] | None = None) -> FingerprintBound:
    """How much of the source a fingerprint may read before the build just queries:
    ``FINGERPRINT_MAX_OBJECTS`` (10,000 S3 objects or local files, and as many Glue
    partitions) and ``FINGERPRINT_MAX_SECONDS`` (5, the whole fingerprint, and the read
    timeout of each Glue and S3 call it makes).

    Raises
    ------
    BuildConfigError
        If one of them is not a positive number.
    """
    env = os.environ if environ is None else environ
    return FingerprintBound(
        max_objects=_positive(env, "FINGERPRINT_MAX_OBJECTS", DEFAULT_BOUND.max_objects, int),
        max_seconds=_positive(env, "FINGERPRINT_MAX_SECONDS", DEFAULT_BOUND.max_seconds, float),
    )


def _source_tables(raw: str | None) -> tuple[str, ...]:
    """``SOURCE_TABLES``: the Glue tables the query reads, comma-separated (``t``, ``db.t``).

    When empty, the fingerprint takes the names after ``FROM`` and ``JOIN`` in the SQL. Set
    it when the SQL reads a table in a way that parsing cannot see; a table missing from it
    would go unwatched, and a change there would not trigger a build.
    """
    names = tuple(name.strip() for name in (raw or "").split(",") if name.strip())
    for name in names:
        if not _TABLE.fullmatch(name):
            raise BuildConfigError(f"SOURCE_TABLES: {name!r} is not a table name")
    return names


def _positive(env: Mapping[str, str], name: str, default: float, kind: type) -> Any:
    value = _number(env.get(name), name, default, kind)
    if value <= 0:
        raise BuildConfigError(f"{name}: {env.get(name)!r} must be positive")
    return value


def _read_sql(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise BuildConfigError(f"QUERY_FILE: cannot read {path}: {exc.strerror}") from exc


def _number(raw: object, name: str, default: float, kind: type) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise BuildConfigError(f"{name}: {raw!r} is not {kind.__name__}") from None
    if value < 0:
        raise BuildConfigError(f"{name}: {raw!r} must not be negative")
    return value


def _contract(raw: object) -> tuple[Column, ...]:
    if raw is None or raw == "":
        return ()
    if isinstance(raw, tuple):
        return raw
    try:
        return parse_contract(str(raw))
    except ValueError as exc:
        raise BuildConfigError(f"CONTRACT_COLUMNS: {exc}") from exc
