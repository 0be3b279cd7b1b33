"""Settings of the builder: the only reader of ``os.environ`` on the producer side."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loaders.manifest import Column
from loaders.store import parse_uri
from loaders.validate import DEFAULT_MAX_ROW_CHANGE, parse_contract

if TYPE_CHECKING:
    from collections.abc import Mapping

ENGINES = ("athena", "duckdb")
DEFAULT_DEADLINE_SECONDS = 900.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


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

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> BuildSettings:
        """Read ``SNAPSHOT_URI``, ``QUERY_SQL`` or ``QUERY_FILE``, ``ENGINE``, ``KEY_COLUMN``,
        ``ATHENA_WORKGROUP``, ``ATHENA_DATABASE``, ``ATHENA_STAGING_URI``,
        ``QUERY_DEADLINE_SECONDS``, ``MIN_ROWS``, ``MAX_ROW_CHANGE`` and ``CONTRACT_COLUMNS``;
        ``overrides`` (non-None values, e.g. from command-line options) win.

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
        if not _NAME.fullmatch(self.key_column):
            raise BuildConfigError(f"KEY_COLUMN: {self.key_column!r} is not a column name")
        if self.engine == "athena":
            if not self.staging_uri:
                raise BuildConfigError("ATHENA_STAGING_URI is required for the athena engine")
            if parse_uri(self.staging_uri)[0] != "s3":
                raise BuildConfigError("ATHENA_STAGING_URI must be s3://bucket/prefix")
        return self


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
