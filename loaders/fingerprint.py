"""Fingerprints of a build's inputs: when they match the current snapshot's, no query runs.

A fingerprint is the sha256 of canonical JSON (sorted keys, no spaces) that holds the
normalised SQL and, for each source table, what changes when its data changes:

- a Glue table (Athena): its update time, location, type, parameters, columns and partition
  keys; each partition's values and location; and the key, size and ETag of every object
  under those locations;
- a local file (DuckDB): its path, size and modification time; for a directory, those of
  each file under it.

A fingerprint may err in one direction only. A change it misses would keep stale rows in
service until the next change, which may be months away. A change it imagines costs one
query. So whatever it cannot see whole raises :class:`FingerprintUnavailableError`, and the
build runs its query. That covers a view, a table function, a file read from the SQL, a
clock or random function in the SQL, a source past its bound, and an AWS error.

Table names come from ``SOURCE_TABLES`` when it is set. Otherwise they come from the SQL:
see :func:`table_names`. This module reads the clock only through its injected ``clock``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import sqlparse
import sqlparse.sql as S
from botocore.exceptions import BotoCoreError, ClientError
from sqlparse import tokens as T

from loaders.errors import LoaderError

# Part of every fingerprint document: a new way of fingerprinting costs one query, never a
# false match.
FORMAT = 1
DEFAULT_MAX_OBJECTS = 10_000
DEFAULT_MAX_SECONDS = 5.0
# The only catalog Athena reads Glue tables through; any other is a federated source.
GLUE_CATALOG = "awsdatacatalog"
# Words whose value moves with the clock or with chance, not with the inputs: a query that
# uses one can change its result while the source stays the same.
VOLATILE_WORDS = frozenset(
    {
        "current_date",
        "current_time",
        "current_timestamp",
        "localtime",
        "localtimestamp",
        "now",
        "today",
        "get_current_time",
        "random",
        "rand",
        "uuid",
        "gen_random_uuid",
        "shuffle",
    }
)
# Functions allowed after FROM/JOIN: they read the rows of other sources, not new data.
ROW_FUNCTIONS = frozenset({"unnest"})
_QUERY_STARTS = frozenset({"SELECT", "WITH", "VALUES"})
# Words after FROM/JOIN that start something other than a table name.
NOT_TABLES = frozenset({"LATERAL", "TABLE", "ONLY", "VALUES", "UNNEST"})


class FingerprintUnavailableError(LoaderError):
    """The inputs cannot be fingerprinted whole; the build runs its query instead.

    It never fails a build: ``loaders.build.build`` logs it and goes on to query.
    """


@dataclass(frozen=True, slots=True)
class FingerprintBound:
    """How much of a source a fingerprint may read before it gives up and the build queries.

    ``max_objects`` bounds the S3 objects (or local files) listed, and separately the Glue
    partitions read. ``max_seconds`` bounds the whole fingerprint, checked between pages,
    and it is also the read timeout of each Glue and S3 call that the fingerprint makes.
    """

    max_objects: int = DEFAULT_MAX_OBJECTS
    max_seconds: float = DEFAULT_MAX_SECONDS


DEFAULT_BOUND = FingerprintBound()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The sha256 of a build's inputs, with a summary for the manifest's ``source``.

    Attributes
    ----------
    sha256 : str
        Hex digest of the canonical JSON document.
    kind : str
        ``"glue"`` or ``"files"``.
    tables : tuple of str
        The source tables, as resolved (``database.table`` for Glue).
    objects : int
        S3 objects (or local files) listed.
    partitions : int
        Glue partitions read.
    """

    sha256: str
    kind: str
    tables: tuple[str, ...]
    objects: int
    partitions: int = 0

    def including(self, extra: Mapping[str, Any]) -> Fingerprint:
        """This fingerprint combined with more inputs, e.g. the rules that shape a snapshot."""
        return replace(self, sha256=digest({"inputs": self.sha256, **extra}))

    def to_dict(self) -> dict[str, Any]:
        """The summary stored as ``source["fingerprint"]`` in a manifest."""
        return {
            "sha256": self.sha256,
            "kind": self.kind,
            "tables": list(self.tables),
            "objects": self.objects,
            "partitions": self.partitions,
        }

    def matches(self, source: Mapping[str, Any]) -> bool:
        """Whether a manifest's ``source`` records this fingerprint."""
        recorded = source.get("fingerprint")
        return isinstance(recorded, dict) and recorded.get("sha256") == self.sha256


@runtime_checkable
class Fingerprinter(Protocol):
    """Something that can fingerprint the inputs of one SQL query (the engines do)."""

    def fingerprint(self, sql: str) -> Fingerprint: ...


def digest(document: Any) -> str:
    """The sha256 of ``document`` as canonical JSON: sorted keys, compact, UTF-8.

    >>> digest({"b": 1, "a": [1, "x"]}) == digest({"a": [1, "x"], "b": 1})
    True
    """
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


# --- the SQL: its table names, and whether its result depends on more than its inputs -------


def check_stable(sql: str) -> None:
    """Refuse SQL whose result can change while its inputs stay the same.

    Raises
    ------
    FingerprintUnavailableError
        If ``sql`` uses a clock or random function (outside literals and comments).
    """
    words = {
        token.value.lower()
        for statement in sqlparse.parse(sql)
        for token in statement.flatten()
        if token.ttype in T.Name or token.ttype in T.Keyword
    }
    if found := sorted(words & VOLATILE_WORDS):
        raise FingerprintUnavailableError(
            f"the SQL uses {', '.join(found)}: its result can change while the source does not"
        )


def table_names(sql: str) -> tuple[str, ...]:
    """The tables ``sql`` reads, lower-cased and sorted, as written (``t`` or ``db.t``).

    A name is whatever follows ``FROM`` or ``JOIN`` (or a comma after one) in a query scope:
    the statement, a subquery or a CTE body. ``FROM`` inside a function, as in
    ``EXTRACT(YEAR FROM ts)``, does not count, nor does ``IS DISTINCT FROM``. CTE names are
    left out where they are in scope. sqlparse does the tokenising, so literals and comments
    are just text. A word sqlparse takes for a keyword (``data``, ``events``) still counts
    as a name: a wrong name only fails its Glue look-up, and the build then queries.

    Raises
    ------
    FingerprintUnavailableError
        If a source is not a plain name: a table function (other than ``UNNEST``), a string
        (DuckDB reads a file named so), a parenthesised join or anything unrecognised.

    Examples
    --------
    >>> table_names("WITH r AS (SELECT * FROM raw.events) SELECT * FROM r JOIN Customers c ON 1=1")
    ('customers', 'raw.events')
    """
    names: set[str] = set()
    for statement in sqlparse.parse(sql):
        _Scan(frozenset(), names, query=True).run(statement)
    return tuple(sorted(names))


def _meaningful(group: S.TokenList) -> list[S.Token]:
    return [t for t in group.tokens if not t.is_whitespace and t.ttype not in T.Comment]


def _is_query(parenthesis: S.Parenthesis) -> bool:
    inner = _meaningful(parenthesis)[1:2]
    return bool(inner) and inner[0].normalized in _QUERY_STARTS


def _is_bare_word(token: S.Token) -> bool:
    """A name sqlparse left ungrouped, often because it took it for a keyword (``data``)."""
    return not token.is_group and (token.ttype in T.Name or token.ttype is T.Keyword)


class _Scan:
    """One pass over a token group, adding the tables read in it to ``names``.

    ``scope`` holds the CTE names in scope. ``query`` says whether ``FROM`` opens sources
    here: it does in a statement or a subquery, not in a function's arguments.
    """

    def __init__(self, scope: frozenset[str], names: set[str], *, query: bool) -> None:
        self.scope = scope
        self.names = names
        self.query = query
        # What the previous token leaves open: "with" (a WITH list comes), "sources" (after
        # FROM/JOIN or a comma), "source" (after one), "bare" (after an ungrouped word, whose
        # alias sqlparse may group with the sources after it).
        self.state = ""
        self.previous: S.Token | None = None

    def run(self, group: S.TokenList) -> None:
        for token in _meaningful(group):
            self.state = self._step(token)
            self.previous = token

    def _step(self, token: S.Token) -> str:
        state = self.state
        if token.ttype in T.Keyword.CTE or (state == "with" and token.normalized == "RECURSIVE"):
            return "with"
        if state == "with":
            self.scope = _with(token, self.scope, self.names)
            return ""
        if self.query and self._opens_sources(token):
            return "sources"
        if state == "sources":
            return self._sources(_items(token))
        if state in ("source", "bare") and token.match(T.Punctuation, ","):
            return "sources"
        if state == "bare" and (after := self._after_bare(token)):
            return after
        if token.is_group:
            self._descend(token)
        return ""

    def _sources(self, items: list[S.Token]) -> str:
        for item in items:
            _source(item, self.scope, self.names)
        return "bare" if _is_bare_word(items[-1]) else "source"

    def _after_bare(self, token: S.Token) -> str:
        """After an ungrouped word: its alias, perhaps grouped with the sources after it."""
        if token.match(T.Keyword, "AS"):
            return "bare"
        if isinstance(token, S.IdentifierList):  # ``FROM data d, other o``
            self._sources(_items(token)[1:])
            return "source"
        return "source" if isinstance(token, S.Identifier) else ""

    def _opens_sources(self, token: S.Token) -> bool:
        if token.ttype is not T.Keyword:
            return False
        if token.normalized == "FROM":  # but not in ``a IS DISTINCT FROM b``
            return self.previous is None or self.previous.normalized != "DISTINCT"
        return token.normalized.endswith("JOIN")

    def _descend(self, group: S.TokenList) -> None:
        """A parenthesis is a query scope when a query starts in it; a function's arguments
        never are (``EXTRACT(YEAR FROM ts)``); other groups inherit it."""
        if isinstance(group, S.Parenthesis):
            query = _is_query(group)
        else:
            query = self.query and not isinstance(group, S.Function)
        _Scan(self.scope, self.names, query=query).run(group)


def _items(token: S.Token) -> list[S.Token]:
    if isinstance(token, S.IdentifierList):
        return list(token.get_identifiers())
    return [token]


def _with(token: S.Token, scope: frozenset[str], names: set[str]) -> frozenset[str]:
    """Read a WITH list: its CTE names join the scope, and their bodies are scanned."""
    ctes = [item for item in _items(token) if isinstance(item, S.Identifier)]
    if not ctes:
        raise FingerprintUnavailableError(f"cannot read the WITH list {token.value[:60]!r}")
    scope = scope | {_unquote(item.token_first(skip_cm=True)).lower() for item in ctes}
    for item in ctes:
        for part in item.tokens:
            if isinstance(part, S.Parenthesis):
                _Scan(scope, names, query=True).run(part)
    return scope


def _source(item: S.Token, scope: frozenset[str], names: set[str]) -> None:
    """One source after FROM/JOIN: a table name, a subquery, or an UNNEST."""
    first = item.token_first(skip_cm=True) if isinstance(item, S.Identifier) else item
    parts = _name_parts(item) if isinstance(item, S.Identifier) else []
    if isinstance(first, S.Parenthesis):
        if not _is_query(first):
            raise FingerprintUnavailableError(f"cannot read the source {item.value[:60]!r}")
        _Scan(scope, names, query=True).run(first)
    elif isinstance(first, S.Function):
        if (first.get_name() or "").lower() not in ROW_FUNCTIONS:
            raise FingerprintUnavailableError(
                f"the SQL reads from the function {first.value[:60]!r}, not from a table"
            )
        _Scan(scope, names, query=False).run(first)
    elif parts or (_is_bare_word(item) and item.normalized not in NOT_TABLES):
        parts = parts or [item.value.lower()]
        if len(parts) > 1 or parts[0] not in scope:
            names.add(".".join(parts))
    else:
        raise FingerprintUnavailableError(
            f"the SQL reads from {item.value[:60]!r}, which is not a table name"
        )


def _name_parts(identifier: S.Identifier) -> list[str]:
    """``db.t AS x`` -> ``["db", "t"]``; [] when it does not start with a dotted name."""
    parts: list[str] = []
    for token in identifier.tokens:
        if token.ttype in T.Name or token.ttype in T.String.Symbol or token.ttype is T.Keyword:
            parts.append(_unquote(token).lower())
        elif not token.match(T.Punctuation, "."):
            break
    return parts


def _unquote(token: S.Token | None) -> str:
    text = "" if token is None else token.value
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '"`':
        return text[1:-1].replace(text[0] * 2, text[0])
    return text


# --- local files (DuckDB) -------------------------------------------------------------------


def fingerprint_files(
    sql: str, tables: Mapping[str, Path], *, bound: FingerprintBound = DEFAULT_BOUND
) -> Fingerprint:
    """Fingerprint normalised ``sql`` over local files registered under table names.

    Every registered table counts, used or not, as the engine registers them all.

    Raises
    ------
    FingerprintUnavailableError
        If the SQL is not stable, reads a source other than a registered table (a file path,
        a table function), a file is missing or unreadable, or there are more than
        ``bound.max_objects`` files.
    """
    check_stable(sql)
    registered = {name.lower() for name in tables}
    if unknown := [name for name in table_names(sql) if name not in registered]:
        raise FingerprintUnavailableError(
            f"the SQL reads {', '.join(unknown)}, which are not registered tables"
        )
    listed: dict[str, list[list[Any]]] = {}
    count = 0
    try:
        for name, path in sorted(tables.items()):
            entries = []
            for file in _files(Path(path).resolve()):
                count += 1
                if count > bound.max_objects:
                    raise FingerprintUnavailableError(
                        f"more than {bound.max_objects:,} source files (FINGERPRINT_MAX_OBJECTS)"
                    )
                stat = file.stat()
                entries.append([str(file), stat.st_size, stat.st_mtime_ns])
            listed[name.lower()] = entries
    except OSError as exc:
        raise FingerprintUnavailableError(f"cannot stat a source file: {exc}") from exc
    document = {"format": FORMAT, "kind": "files", "sql": sql, "tables": listed}
    return Fingerprint(digest(document), "files", tuple(sorted(listed)), count)


def _files(path: Path) -> Iterable[Path]:
    if not path.is_dir():
        return [path]  # a missing path fails its stat()
    return sorted(p for p in path.rglob("*") if p.is_file())


# --- Glue tables and their S3 objects (Athena) ----------------------------------------------


@dataclass
class _Budget:
    """What one fingerprint has left to spend."""

    bound: FingerprintBound
    clock: Callable[[], float]
    started: float
    objects: int = 0
    partitions: int = 0

    def spend(self, *, objects: int = 0, partitions: int = 0) -> None:
        self.objects += objects
        self.partitions += partitions
        if max(self.objects, self.partitions) > self.bound.max_objects:
            what = "S3 objects" if self.objects > self.bound.max_objects else "Glue partitions"
            raise FingerprintUnavailableError(
                f"more than {self.bound.max_objects:,} {what} (FINGERPRINT_MAX_OBJECTS)"
            )
        elapsed = self.clock() - self.started
        if elapsed > self.bound.max_seconds:
            raise FingerprintUnavailableError(
                f"listing the source took over {self.bound.max_seconds:g}s "
                f"(FINGERPRINT_MAX_SECONDS) after {self.objects:,} objects"
            )


class GlueSource:
    """Fingerprints the Glue tables an Athena query reads, and their objects in S3.

    Parameters
    ----------
    glue : Any
        A boto3 Glue client (``get_table``, ``get_partitions``).
    s3 : Any
        A boto3 S3 client (``list_objects_v2``).
    database : str
        The Glue database that unqualified table names resolve in.
    tables : sequence of str, default ()
        The tables to fingerprint (``t``, ``db.t``); when empty, :func:`table_names` finds
        them in the SQL.
    bound : FingerprintBound
        Past it, the fingerprint is unavailable and the build queries.
    clock : callable, default time.monotonic
        Seconds, for the time bound.
    """

    def __init__(
        self,
        glue: Any,
        s3: Any,
        *,
        database: str,
        tables: Sequence[str] = (),
        bound: FingerprintBound = DEFAULT_BOUND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.glue = glue
        self.s3 = s3
        self.database = database
        self.tables = tuple(tables)
        self.bound = bound
        self.clock = clock

    def fingerprint(self, sql: str) -> Fingerprint:
        """Fingerprint normalised ``sql`` and the Glue tables it reads.

        Raises
        ------
        FingerprintUnavailableError
            If the SQL is not stable or names no table; a table is a view, is not in Glue, or
            lives outside S3; the listing passes the bound; or a Glue or S3 call fails.
        """
        check_stable(sql)
        names = self.tables or table_names(sql)
        if not names:
            raise FingerprintUnavailableError("the SQL names no table (set SOURCE_TABLES)")
        budget = _Budget(self.bound, self.clock, self.clock())
        tables = sorted({self._resolve(name) for name in names})
        try:
            described = {f"{db}.{name}": self._table(db, name, budget) for db, name in tables}
        except (ClientError, BotoCoreError) as exc:
            raise FingerprintUnavailableError(f"AWS answered {_reason(exc)}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise FingerprintUnavailableError(
                f"unexpected Glue or S3 answer ({type(exc).__name__}: {exc})"
            ) from exc
        document = {"format": FORMAT, "kind": "glue", "sql": sql, "tables": described}
        return Fingerprint(
            digest(document), "glue", tuple(described), budget.objects, budget.partitions
        )

    def _resolve(self, name: str) -> tuple[str, str]:
        parts = name.lower().split(".")
        if len(parts) == 3 and parts[0] == GLUE_CATALOG:
            parts = parts[1:]
        if len(parts) == 1:
            return self.database.lower(), parts[0]
        if len(parts) == 2:
            return parts[0], parts[1]
        raise FingerprintUnavailableError(f"{name} is not in the Glue catalog")

    def _table(self, database: str, name: str, budget: _Budget) -> dict[str, Any]:
        table = self.glue.get_table(DatabaseName=database, Name=name)["Table"]
        budget.spend()
        if table.get("TableType") == "VIRTUAL_VIEW" or table.get("ViewOriginalText"):
            raise FingerprintUnavailableError(
                f"{database}.{name} is a view: the tables it reads are unknown"
            )
        parameters = table.get("Parameters") or {}
        if any("NOW" in str(v).upper() for k, v in parameters.items() if "projection" in k):
            raise FingerprintUnavailableError(
                f"{database}.{name} projects partitions relative to NOW"
            )
        storage = table.get("StorageDescriptor") or {}
        partitions = self._partitions(database, name, budget) if table.get("PartitionKeys") else []
        locations = [storage.get("Location"), *(p["location"] for p in partitions)]
        return {
            "update_time": _time(table.get("UpdateTime")),
            "type": table.get("TableType"),
            "location": storage.get("Location"),
            "parameters": parameters,
            "columns": _columns(storage.get("Columns")),
            "partition_keys": _columns(table.get("PartitionKeys")),
            "partitions": partitions,
            "objects": self._objects(f"{database}.{name}", locations, budget),
        }

    def _partitions(self, database: str, name: str, budget: _Budget) -> list[dict[str, Any]]:
        found = []
        pages = self.glue.get_paginator("get_partitions").paginate(
            DatabaseName=database, TableName=name, ExcludeColumnSchema=True
        )
        for page in pages:
            batch = page.get("Partitions", [])
            budget.spend(partitions=len(batch))
            found += [
                {
                    "values": list(p.get("Values", [])),
                    "location": (p.get("StorageDescriptor") or {}).get("Location"),
                }
                for p in batch
            ]
        return sorted(found, key=lambda p: (p["values"], p["location"] or ""))

    def _objects(
        self, table: str, locations: Sequence[str | None], budget: _Budget
    ) -> list[list[Any]]:
        """Key, size and ETag of every object under ``locations``, each prefix listed once."""
        if not locations[0] and not any(locations[1:]):
            raise FingerprintUnavailableError(f"{table} has no storage location")
        listed: list[list[Any]] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for bucket, prefix in _cover(table, [loc for loc in locations if loc]):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                contents = page.get("Contents", [])
                budget.spend(objects=len(contents))
                listed += [[bucket, o["Key"], o["Size"], o.get("ETag")] for o in contents]
        return sorted(listed)


def _cover(table: str, locations: Iterable[str]) -> list[tuple[str, str]]:
    """The fewest ``(bucket, prefix)`` pairs that hold every location, each ending in ``/``.

    Partitions usually live under the table's location: one listing then covers them all.
    """
    prefixes = set()
    for location in locations:
        scheme, _, rest = location.partition("://")
        if scheme not in ("s3", "s3a", "s3n") or not rest:
            raise FingerprintUnavailableError(f"{table} lives outside S3: {location}")
        bucket, _, key = rest.partition("/")
        key = key.strip("/")
        prefixes.add((bucket, f"{key}/" if key else ""))
    kept: list[tuple[str, str]] = []
    for bucket, prefix in sorted(prefixes):
        if not any(b == bucket and prefix.startswith(p) for b, p in kept):
            kept.append((bucket, prefix))
    return kept


def _columns(columns: Sequence[Mapping[str, Any]] | None) -> list[list[Any]]:
    return [[c.get("Name"), c.get("Type")] for c in columns or []]


def _time(moment: object) -> str | None:
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat()
    return None if moment is None else str(moment)


def _reason(exc: ClientError | BotoCoreError) -> str:
    """An AWS error's code (or exception type): its message may echo the request."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__
