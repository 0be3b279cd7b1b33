"""Query engines that turn the builder's SELECT into Parquet files on local disk, or a ``pa.Table``.

- :class:`AthenaEngine` wraps the SELECT in ``UNLOAD ... TO '<staging>/<run id>/'`` (Parquet, zstd),
  polls with backoff under a deadline, and reads the unloaded files with pyarrow. Once started,
  a query is stopped on any failure. Athena's failure text can quote data values, so errors
  and logs name the query id and the error category and type, never that text.
- :class:`DuckDBEngine`, the embedded default, runs the same SQL over local Parquet/CSV files
  registered under the table names the SQL uses, and writes the result with ``COPY ... TO``.

Both can :meth:`fingerprint` their inputs before a query (``loaders.fingerprint``): Athena's
through Glue and S3 listings, DuckDB's from its files' sizes and modification times.

Both :meth:`export` the result as Parquet files into a local directory, which the builder
checks and sorts out of core (:mod:`loaders.stream`) without holding the rows; :meth:`run` reads
those files into one table, for small results and callers that want one.

Both take their clients, clock and sleep as arguments: tests never wait.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.parquet as pq
import sqlparse
import sqlparse.sql
from botocore.exceptions import BotoCoreError, ClientError
from sqlparse import tokens as T
from sqlparse.exceptions import SQLParseError

from loaders.errors import QueryFailedError, SnapshotInvalidError
from loaders.fingerprint import (
    DEFAULT_BOUND,
    Fingerprint,
    FingerprintBound,
    FingerprintUnavailableError,
    GlueSource,
    fingerprint_files,
)
from loaders.store import parse_uri

Progress = Callable[[str], None]
logger = logging.getLogger(__name__)

# AthenaError.ErrorCategory: 1 system, 2 user (the query or its data), 3 other.
_ERROR_CATEGORIES = {1: "system", 2: "user", 3: "other"}

# DuckDB's memory limit in a build (its own default is 80 % of the machine): past it, sorts,
# joins and aggregates spill to the build's temporary directory.
DEFAULT_MEMORY_LIMIT = "4GB"

# Functions and statements that only Athena/Trino knows, with the DuckDB spelling where one exists.
_ATHENA_ONLY = {
    "unload": "UNLOAD is added by the Athena engine itself; give a plain SELECT",
    "date_parse": "use strptime, or keep the parsing out of the shared query",
    "from_iso8601_timestamp": "use CAST(x AS TIMESTAMP WITH TIME ZONE)",
    "approx_distinct": "use approx_count_distinct in DuckDB, or count(DISTINCT ...)",
    "regexp_like": "use regexp_matches in DuckDB",
}


class QueryEngine(Protocol):
    """Runs one SELECT and returns its rows."""

    name: str

    def run(self, sql: str, *, progress: Progress | None = None) -> pa.Table: ...


@runtime_checkable
class ExportingEngine(Protocol):
    """An engine that can leave its result as Parquet files in a local directory."""

    name: str

    def export(
        self, sql: str, directory: Path, *, progress: Progress | None = None
    ) -> list[Path]: ...


# Bytes fetched per read while an engine's output is copied to local disk: bounded memory
# whatever the output's size.
DOWNLOAD_CHUNK_BYTES = 8 << 20


def _statements(sql: str) -> list[sqlparse.sql.Statement]:
    """The statements in ``sql`` that hold more than comments and semicolons.

    Raises
    ------
    QueryFailedError
        If sqlparse gives up on it (it refuses statements past a token limit).
    """
    try:
        return [
            statement
            for statement in sqlparse.parse(sql)
            if sqlparse.format(statement.value, strip_comments=True).strip(" \t\r\n;")
        ]
    except SQLParseError as exc:
        raise QueryFailedError(f"the query cannot be parsed: {exc}") from exc


def check_select(sql: str) -> str:
    """Return ``sql`` without comments and a trailing ``;`` if it is one SELECT (or WITH ...).

    Parsed with sqlparse, so ``;`` and ``--`` inside string literals are just text.

    Raises
    ------
    QueryFailedError
        If it is empty, holds several statements, or is not a SELECT.
    """
    statements = _statements(sql)
    if not statements:
        raise QueryFailedError("the query is empty")
    if len(statements) > 1:
        raise QueryFailedError(
            f"the query must be a single SELECT statement, found {len(statements)}"
        )
    statement = statements[0]
    if statement.get_type() != "SELECT":
        first = statement.token_first(skip_cm=True)
        word = first.value.upper() if first is not None else "?"
        raise QueryFailedError(f"the query must be a SELECT, not {word}")
    return sqlparse.format(statement.value, strip_comments=True).strip().rstrip(";").strip()


def normalised_select(sql: str) -> str:
    """:func:`check_select` for a fingerprint: SQL that cannot run cannot be fingerprinted.

    Raises
    ------
    FingerprintUnavailableError
        If ``sql`` is not one SELECT; the query then fails with the reason.
    """
    try:
        return check_select(sql)
    except (QueryFailedError, SQLParseError) as exc:  # sqlparse caps what it will group
        raise FingerprintUnavailableError(str(exc)) from exc


def athena_only_features(sql: str) -> list[str]:
    """Athena-only words in ``sql`` (outside literals and comments), each with a hint."""
    words = {
        token.value.lower()
        for statement in sqlparse.parse(sql)
        for token in statement.flatten()
        if token.ttype is not None
        and token.ttype not in T.Literal.String
        and token.ttype not in T.Comment
        and not token.is_whitespace
    }
    return [f"{word}: {hint}" for word, hint in _ATHENA_ONLY.items() if word in words]


class AthenaEngine:
    """Runs a SELECT on Athena as ``UNLOAD`` to Parquet, then reads the files.

    Parameters
    ----------
    athena : Any
        A boto3 Athena client.
    s3 : Any
        A boto3 S3 client, to list and read the unloaded files.
    workgroup : str
        The workgroup the query runs in (its settings and limits apply).
    database : str
        The Glue database the SQL's table names resolve in.
    staging_uri : str
        ``s3://bucket/prefix`` for UNLOAD output; each run writes a fresh ``<run id>/`` below it,
        because UNLOAD refuses a non-empty target.
    deadline_seconds : float, default 900
        Past this the query is stopped and the run fails.
    glue_source : GlueSource, optional
        Fingerprints the tables the SQL reads; without it, :meth:`fingerprint` is unavailable.
    sleep, clock : callable
        Injected so tests need not wait.
    """

    name = "athena"

    def __init__(
        self,
        athena: Any,
        s3: Any,
        *,
        workgroup: str,
        database: str,
        staging_uri: str,
        deadline_seconds: float = 900.0,
        first_poll_seconds: float = 1.0,
        max_poll_seconds: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        run_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        glue_source: GlueSource | None = None,
    ) -> None:
        scheme, bucket, prefix = parse_uri(staging_uri)
        if scheme != "s3":
            raise ValueError(f"staging_uri must be s3://bucket/prefix, got {staging_uri!r}")
        self.athena = athena
        self.s3 = s3
        self.workgroup = workgroup
        self.database = database
        self.bucket = bucket
        self.prefix = prefix
        self.deadline_seconds = deadline_seconds
        self.first_poll_seconds = first_poll_seconds
        self.max_poll_seconds = max_poll_seconds
        self.sleep = sleep
        self.clock = clock
        self.run_id = run_id
        self.glue_source = glue_source
        # What the last query scanned (Athena's bill), once Athena reported it.
        self.scanned_bytes: int | None = None

    def fingerprint(self, sql: str) -> Fingerprint:
        """Fingerprint ``sql`` and the Glue tables it reads, starting no query.

        Raises
        ------
        FingerprintUnavailableError
            See :meth:`GlueSource.fingerprint`; also when no Glue source was given.
        """
        if self.glue_source is None:
            raise FingerprintUnavailableError("no Glue client to fingerprint the source with")
        return self.glue_source.fingerprint(normalised_select(sql))

    def unload_sql(self, sql: str, target_prefix: str) -> str:
        """The UNLOAD statement for ``sql`` writing below ``s3://<bucket>/<target_prefix>``."""
        return (
            f"UNLOAD ({check_select(sql)}) TO 's3://{self.bucket}/{target_prefix}' "
            "WITH (format = 'PARQUET', compression = 'ZSTD')"
        )

    def run(self, sql: str, *, progress: Progress | None = None) -> pa.Table:
        """Run ``sql`` and return its rows (see :meth:`export`).

        Raises
        ------
        QueryFailedError
            As :meth:`export`.
        """
        with tempfile.TemporaryDirectory(prefix="athena-unload-") as tmp:
            return read_files(self.export(sql, Path(tmp), progress=progress), what="UNLOAD output")

    def export(self, sql: str, directory: Path, *, progress: Progress | None = None) -> list[Path]:
        """Run ``sql`` and copy the UNLOAD output into ``directory``, a bounded chunk at a time.

        Once the query has started, any failure (polling, the deadline, listing or copying
        the output, an interrupt) stops it before the error propagates.

        Returns
        -------
        list of Path
            The Parquet files, in the order of their keys.

        Raises
        ------
        QueryFailedError
            If Athena reports FAILED or CANCELLED (naming the error category and type, never
            Athena's message, which can quote data), the deadline passes, a call fails after
            botocore's retries, or the output is not Parquet.
        """
        target = "/".join(p for p in (self.prefix, self.run_id()) if p) + "/"
        self.scanned_bytes = None
        query_id = self._start(self.unload_sql(sql, target))
        try:
            self._wait(query_id, progress or (lambda _msg: None))
            return self._download(target, directory)
        except BaseException as exc:
            # BaseException too: an interrupt or a Lambda shutdown must not leave it running.
            self._stop(query_id, exc)
            raise

    def _start(self, statement: str) -> str:
        try:
            response = self.athena.start_query_execution(
                QueryString=statement,
                QueryExecutionContext={"Database": self.database},
                WorkGroup=self.workgroup,
            )
        except (ClientError, BotoCoreError) as exc:
            raise QueryFailedError(f"Athena did not start the query: {_reason(exc)}") from exc
        return response["QueryExecutionId"]

    def _wait(self, query_id: str, progress: Progress) -> None:
        started = self.clock()
        delay = self.first_poll_seconds
        while True:
            try:
                execution = self.athena.get_query_execution(QueryExecutionId=query_id)
            except (ClientError, BotoCoreError) as exc:
                raise QueryFailedError(f"cannot read query {query_id}: {_reason(exc)}") from exc
            status = execution["QueryExecution"]["Status"]
            state = status["State"]
            scanned = execution["QueryExecution"].get("Statistics", {}).get("DataScannedInBytes")
            if isinstance(scanned, int):
                self.scanned_bytes = scanned
            elapsed = self.clock() - started
            progress(f"query {query_id} {state} after {elapsed:.0f}s")
            if state == "SUCCEEDED":
                return
            if state in ("FAILED", "CANCELLED"):
                raise QueryFailedError(f"Athena query {query_id} {state}: {_athena_error(status)}")
            if elapsed + delay > self.deadline_seconds:
                raise QueryFailedError(
                    f"Athena query {query_id} still {state} after {elapsed:.0f}s; "
                    f"stopped at the {self.deadline_seconds:.0f}s deadline"
                )
            self.sleep(delay)
            delay = min(delay * 2, self.max_poll_seconds)

    def _stop(self, query_id: str, cause: BaseException) -> None:
        """Stop ``query_id`` after ``cause``; a failed stop is logged, never raised over it."""
        try:
            self.athena.stop_query_execution(QueryExecutionId=query_id)
        except (ClientError, BotoCoreError) as exc:
            note = f"stopping Athena query {query_id} failed too: {_reason(exc)}"
            logger.warning("%s (after %s)", note, type(cause).__name__)
            cause.add_note(note)

    def _download(self, target: str, directory: Path) -> list[Path]:
        """Copy every file UNLOAD wrote below ``target`` (they have no extension)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=target
            )
            keys = sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
            for number, key in enumerate(keys):
                path = directory / f"unload-{number:05d}.parquet"
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
                with path.open("wb") as out:
                    shutil.copyfileobj(body, out, DOWNLOAD_CHUNK_BYTES)
                files.append(path)
        except (ClientError, BotoCoreError) as exc:
            raise QueryFailedError(
                f"cannot read UNLOAD output s3://{self.bucket}/{target}: {_reason(exc)}"
            ) from exc
        if not files:
            raise QueryFailedError(f"UNLOAD wrote no files to s3://{self.bucket}/{target}")
        for path in files:
            check_result_file(path, what="UNLOAD output")
        return files


def _reason(exc: ClientError | BotoCoreError) -> str:
    """An AWS error's code (or exception type): its message may echo the request."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__


def _athena_error(status: dict[str, Any]) -> str:
    """Why a query failed, as Athena's error category and type; its message and
    StateChangeReason can quote data values, so they stay in Athena's console."""
    error = status.get("AthenaError") or {}
    category = error.get("ErrorCategory")
    kind = error.get("ErrorType")
    if category is None and kind is None:
        return "no error category given; see the query in the Athena console"
    name = _ERROR_CATEGORIES.get(category, "unknown") if isinstance(category, int) else "unknown"
    return f"{name} error (category {category}, type {kind}); see the query in the Athena console"


class DuckDBEngine:
    """Runs the builder's SQL in DuckDB over local Parquet/CSV files.

    Parameters
    ----------
    tables : mapping of str to path
        Table name used by the SQL -> a local ``.parquet`` or ``.csv`` file (or a directory of
        Parquet files).
    fingerprint_bound : FingerprintBound
        At most ``max_objects`` files are fingerprinted.
    memory_limit : str, default "4GB"
        DuckDB's ``memory_limit``; past it the query spills to the export directory.
    """

    name = "duckdb"

    def __init__(
        self,
        tables: Mapping[str, str | Path],
        *,
        fingerprint_bound: FingerprintBound = DEFAULT_BOUND,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.tables = {name: Path(path) for name, path in tables.items()}
        self.fingerprint_bound = fingerprint_bound
        self.memory_limit = memory_limit
        for name in self.tables:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"table name {name!r} is not a plain SQL identifier")

    def fingerprint(self, sql: str) -> Fingerprint:
        """Fingerprint ``sql`` and the registered files (path, size, modification time).

        Raises
        ------
        FingerprintUnavailableError
            See :func:`~loaders.fingerprint.fingerprint_files`.
        """
        return fingerprint_files(normalised_select(sql), self.tables, bound=self.fingerprint_bound)

    def run(self, sql: str, *, progress: Progress | None = None) -> pa.Table:
        """Run ``sql`` and return its rows (see :meth:`export`).

        Raises
        ------
        QueryFailedError
            As :meth:`export`.
        """
        with tempfile.TemporaryDirectory(prefix="duckdb-build-") as tmp:
            return read_files(
                self.export(sql, Path(tmp), progress=progress), what="DuckDB's result"
            )

    def export(self, sql: str, directory: Path, *, progress: Progress | None = None) -> list[Path]:
        """Run ``sql`` and write its rows to one zstd Parquet file in ``directory``.

        DuckDB runs under ``memory_limit`` and spills to ``directory``, so a result larger
        than memory is written all the same.

        Raises
        ------
        QueryFailedError
            If the SQL uses Athena-only syntax, names a missing table or file, or fails.
        SnapshotInvalidError
            If a result column has a type no reader can serve as it is (INTERVAL).
        """
        import duckdb  # here, not at the top: the Athena builder Lambda does not ship DuckDB

        text = check_select(sql)
        if found := athena_only_features(text):
            raise QueryFailedError(
                "the query uses Athena-only SQL, which DuckDB cannot run: " + "; ".join(found)
            )
        report = progress or (lambda _msg: None)
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / "result.parquet"
        con = duckdb.connect(config=duckdb_config(directory, self.memory_limit))
        try:
            for name, path in self.tables.items():
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM {_reader(path)}")
            report("query running in DuckDB")
            con.execute(f"COPY ({text}) TO '{_quoted(out)}' (FORMAT PARQUET, COMPRESSION ZSTD)")
        except duckdb.Error as exc:
            raise QueryFailedError(f"DuckDB could not run the query: {exc}") from exc
        finally:
            con.close()
        check_result_file(out, what="DuckDB's result")
        return [out]


def duckdb_config(directory: Path, memory_limit: str) -> dict[str, str]:
    """A DuckDB connection's settings for a build: bounded memory, spilling below ``directory``.

    No ``TimeZone``: it needs the ICU extension, which is not bundled. Without ICU, DuckDB
    converts between plain and zoned timestamps as UTC, as Arrow's casts do.
    """
    spill = directory / "duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    return {
        "memory_limit": memory_limit,
        "temp_directory": str(spill),
        "preserve_insertion_order": "true",
    }


def check_result_file(path: Path, *, what: str) -> pa.Schema:
    """The Arrow schema of one result file, refusing what pyarrow would read as something else.

    DuckDB writes INTERVAL as 12 raw bytes with Parquet's INTERVAL annotation, which pyarrow
    reads as plain binary: served, it would be base64 noise. Only the Parquet schema tells.

    Raises
    ------
    SnapshotInvalidError
        If a column is an INTERVAL.
    QueryFailedError
        If the file is not readable Parquet.
    """
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema
        for i in range(len(schema)):
            column = schema.column(i)
            if column.converted_type == "INTERVAL":
                name = column.path.split(".")[0]
                raise SnapshotInvalidError(
                    f"column {name!r} is an INTERVAL, which cannot be served; "
                    "cast it to a number of seconds or to text in the query"
                )
        return parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise QueryFailedError(f"{what} is not readable Parquet: {exc}") from exc


def read_files(paths: list[Path], *, what: str) -> pa.Table:
    """Read result files into one table (columns of differing types promoted).

    Raises
    ------
    QueryFailedError
        If a file is not readable Parquet.
    """
    try:
        tables = [pq.ParquetFile(path).read() for path in paths]
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, OSError) as exc:
        raise QueryFailedError(f"{what} is not readable Parquet: {exc}") from exc


def _quoted(path: Path) -> str:
    return str(path.resolve()).replace("'", "''")


def _reader(path: Path) -> str:
    if not path.exists():
        raise QueryFailedError(f"table file {path} does not exist")
    quoted = _quoted(path)
    if path.is_dir():
        return f"read_parquet('{quoted}/*')"
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return f"read_csv('{quoted}', header = true)"
    return f"read_parquet('{quoted}')"
