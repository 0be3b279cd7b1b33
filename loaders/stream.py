"""The out-of-core build: a query's result checked, compared and written from files on disk.

An engine leaves its result as Parquet files in the build's work directory
(:meth:`~loaders.engines.DuckDBEngine.export`). DuckDB reads them under a memory limit, spilling
to that directory, for everything that needs every row at once: the key checks, the row count,
the change report against the previous version, the column statistics that choose the layout,
and the sort. The rules and their messages are :mod:`loaders.validate`'s and
:func:`loaders.snapshot.check_keys`'s: each problem line is the one the in-memory checks give.

Two ways out, by size (:data:`MEMORY_LAYOUT_MAX_ROWS`):

- a result a memory-mode reader can hold is read whole, sorted and handed to
  :func:`loaders.snapshot.write_snapshot`: one row group, as every memory-mode snapshot is;
- a larger one is written by :func:`write_sorted` straight from DuckDB's sorted stream, in row
  groups of :data:`ROW_GROUP_ROWS`, with its blocks (:mod:`loaders.blocks`) from the same batches,
  and uploaded from disk.

No boto3 here: stores come in through :mod:`loaders.store`'s interface.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loaders.engines import DEFAULT_MEMORY_LIMIT, check_result_file, duckdb_config, read_files
from loaders.errors import LoaderError, QueryFailedError, SnapshotInvalidError
from loaders.manifest import (
    BLOCK_INDEX_NAME,
    BLOCKS_NAME,
    DATA_NAME,
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    snapshot_key,
)
from loaders.snapshot import (
    DICTIONARY_MAX_RATIO,
    MAX_EXAMPLES,
    NO_ROWS,
    check_columns,
    key_problems,
    key_type_problem,
    value_type,
)
from loaders.validate import (
    Changes,
    Rules,
    conform,
    conform_types,
    key_format_problems,
    row_count_problems,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import datetime

    from loaders.manifest import Blocks
    from loaders.store import ObjectStore

logger = logging.getLogger(__name__)

# Above this many rows data.parquet is written in row groups from DuckDB's sorted stream; at or
# below it, in one row group from a table held whole, the memory-mode layout. A memory-mode
# reader holds about 60 MB per million rows of the sample table and needs twice that during a
# refresh, and loads about 0.25 s per million rows against Lambda's 10 s init: 20M rows (about
# 1.2 GB, 2.4 GB in a refresh, 5 s to load) is about the most one function can serve from memory,
# so a larger table is served tiered and its data.parquet need not suit a whole-table load.
MEMORY_LAYOUT_MAX_ROWS = 20_000_000
# Rows per row group of a streamed data.parquet: each decodes alone into ~60 MB of Arrow.
ROW_GROUP_ROWS = 1 << 20
# Rows per batch fetched from DuckDB's sorted stream.
BATCH_ROWS = 1 << 16
# A previous snapshot's data up to this size is fetched in one read; larger, by ranges.
WHOLE_READ_MAX_BYTES = 64 << 20
READ_RANGE_BYTES = 16 << 20
HASH_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How a build works out of core.

    Attributes
    ----------
    memory_limit : str, default "4GB"
        DuckDB's ``memory_limit`` (``DUCKDB_MEMORY_LIMIT``): past it, DuckDB spills to disk.
    memory_layout_max_rows : int, default 20,000,000
        The largest result written in the one-row-group memory-mode layout.
    row_group_rows : int, default 1,048,576
        Rows per row group of a larger result's streamed ``data.parquet``.
    """

    memory_limit: str = DEFAULT_MEMORY_LIMIT
    memory_layout_max_rows: int = MEMORY_LAYOUT_MAX_ROWS
    row_group_rows: int = ROW_GROUP_ROWS


def _name(column: str) -> str:
    """A column name quoted as a DuckDB identifier."""
    return '"' + column.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class StagedResult:
    """A query's result as Parquet files on local disk, with a DuckDB connection over them.

    Parameters
    ----------
    files : list of Path
        The result files (one schema, or schemas that promote to one).
    directory : Path
        The build's work directory: DuckDB spills below it.
    settings : StreamSettings
    """

    def __init__(self, files: list[Path], directory: Path, settings: StreamSettings) -> None:
        import duckdb  # the builder's: a reader never imports it

        if not files:
            raise QueryFailedError("the query left no result files")
        self.files = tuple(files)
        self.directory = directory
        self.settings = settings
        schemas = [check_result_file(path, what="the query's result") for path in files]
        try:
            self.schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowException, TypeError) as exc:
            raise QueryFailedError(f"the result files' columns do not agree: {exc}") from exc
        self.row_count = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
        self._error = duckdb.Error
        self._connection: Any = None
        self.sql("SELECT 1")  # a bad setting fails here, not mid-build

    @property
    def con(self) -> Any:
        """The DuckDB connection, with the ``staged`` view over the files; opened on demand."""
        if self._connection is None:
            import duckdb

            con = duckdb.connect(config=duckdb_config(self.directory, self.settings.memory_limit))
            listed = ", ".join(_literal(str(path.resolve())) for path in self.files)
            con.execute(
                f"CREATE VIEW staged AS SELECT * FROM read_parquet([{listed}], "
                "union_by_name = true)"
            )
            self._connection = con
        return self._connection

    def sql(self, text: str) -> list[tuple[Any, ...]]:
        """Run one statement and fetch all its rows (DuckDB wants every result finished before
        the next statement); DuckDB's errors become :class:`QueryFailedError`."""
        try:
            return self.con.execute(text).fetchall()
        except self._error as exc:
            raise QueryFailedError(f"DuckDB could not check the result: {exc}") from exc

    def release(self) -> None:
        """Close the connection: DuckDB keeps what its queries allocated (about 0.7 GB after
        the checks of 10M rows) until its database closes. The next statement reopens it."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        self.release()

    def __enter__(self) -> StagedResult:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def stage_table(table: pa.Table, directory: Path) -> list[Path]:
    """Write an engine's in-memory result as the one result file of a build.

    Raises
    ------
    SnapshotInvalidError
        If a column has a type no reader can serve, or Parquet cannot hold it.
    """
    check_columns(table.schema)  # what write_snapshot says of such a column, before Parquet does
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "result.parquet"
    try:
        pq.write_table(table, path, compression="zstd")
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise SnapshotInvalidError(f"cannot encode the table as Parquet: {exc}") from exc
    return [path]


# --- checks ---------------------------------------------------------------------------------


def check(staged: StagedResult, rules: Rules, previous: Manifest | None) -> pa.Schema:
    """Run every rule of :func:`loaders.validate.validate` over the staged files.

    Returns
    -------
    pa.Schema
        The result's schema conformed to the contract: what the snapshot will hold.

    Raises
    ------
    SnapshotInvalidError
        ``"build rejected"``, listing every problem, as :func:`~loaders.validate.validate`
        words them and in its order.
    """
    contract = rules.contract or (previous.columns if previous is not None else ())
    schema, problems = conform_types(staged.schema, contract, _scanning_cast(staged))
    if rules.key_column not in schema.names:
        problems.append(f"key column {rules.key_column!r} is missing")
    else:
        key_type = schema.field(rules.key_column).type
        problems.extend(_key_problems(staged, rules, key_type))
    problems.extend(row_count_problems(staged.row_count, rules, previous))
    if problems:
        raise SnapshotInvalidError("build rejected", tuple(problems))
    check_columns(schema)
    return schema


def _scanning_cast(staged: StagedResult) -> Callable[[str, pa.DataType], None]:
    """A cast check for :func:`~loaders.validate.conform_types` that reads one column at a time."""

    def cast(name: str, target: pa.DataType) -> None:
        for path in staged.files:
            parquet = pq.ParquetFile(path)
            if name not in parquet.schema_arrow.names:
                continue
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[name]):
                pc.cast(batch.column(0), target, safe=True)

    return cast


def _key_problems(staged: StagedResult, rules: Rules, key_type: pa.DataType) -> list[str]:
    """The key rules of ``check_keys`` and ``check_key_format``, counted by DuckDB.

    Examples come in key order, as the in-memory checks find them in the sorted table.
    """
    key = _name(rules.key_column)
    problems: list[str] = []
    if (wrong_type := key_type_problem(rules.key_column, key_type)) is not None:
        problems.append(wrong_type)
    elif staged.row_count == 0:
        problems.append(NO_ROWS)
    else:
        nulls, empty = staged.sql(
            f"SELECT count(*) FILTER (WHERE {key} IS NULL), count(*) FILTER (WHERE {key} = '') "
            "FROM staged"
        )[0]
        staged.sql(
            f"CREATE OR REPLACE TEMP TABLE duplicates AS SELECT {key} AS k FROM staged "
            f"WHERE {key} IS NOT NULL GROUP BY {key} HAVING count(*) > 1"
        )
        (duplicates,) = staged.sql("SELECT count(*) FROM duplicates")[0]
        shown = staged.sql(f"SELECT k FROM duplicates ORDER BY k LIMIT {MAX_EXAMPLES}")
        staged.sql("DROP TABLE duplicates")
        problems += key_problems(
            nulls=nulls,
            empty=empty,
            duplicates=duplicates,
            duplicate_examples=[row[0] for row in shown],
        )
    if pa.types.is_string(value_type(key_type)) and staged.row_count:
        # RE2 in both: regexp_matches searches as Arrow's match_substring_regex does.
        outside = f"{key} IS NOT NULL AND NOT regexp_matches({key}, {_literal(rules.key_format)})"
        (count,) = staged.sql(f"SELECT count(*) FROM staged WHERE {outside}")[0]
        shown = (
            staged.sql(
                f"SELECT {key} FROM staged WHERE {outside} ORDER BY {key} LIMIT {MAX_EXAMPLES}"
            )
            if count
            else []
        )
        problems += key_format_problems(count, rules.key_format, [row[0] for row in shown])
    return problems


# --- the sorted rows ------------------------------------------------------------------------


def read_sorted(staged: StagedResult, rules: Rules, previous: Manifest | None) -> pa.Table:
    """The whole checked result as one table sorted by key, as :func:`validate` returns it.

    For results within ``memory_layout_max_rows``: read as the engine's ``run`` reads them and
    conformed as ``validate`` conforms them, so every type is the one the in-memory build had.
    """
    table = read_files(list(staged.files), what="the query's result")
    contract = rules.contract or (previous.columns if previous is not None else ())
    table, problems = conform(table, contract)
    if problems:  # the checks passed: only files changed under the build get here
        raise SnapshotInvalidError("build rejected", tuple(problems))
    return table.sort_by([(rules.key_column, "ascending")])


@dataclass(frozen=True, slots=True)
class Layout:
    """How a streamed data.parquet stores its columns, decided from DuckDB's statistics."""

    dictionary: frozenset[str]
    required: frozenset[str]

    def apply(self, schema: pa.Schema) -> pa.Schema:
        """``schema`` as stored: dictionary columns and required (non-nullable) columns."""
        fields = []
        for field in schema:
            if field.name in self.dictionary:
                field = field.with_type(pa.dictionary(pa.int32(), field.type))
            if field.name in self.required:
                field = field.with_nullable(False)
            fields.append(field)
        return pa.schema(fields, metadata=schema.metadata)


def layout(staged: StagedResult, schema: pa.Schema, key_column: str) -> Layout:
    """Choose the stored layout as :func:`loaders.snapshot.prepare_table` does, from counts.

    String columns (not the key) with at most ``DICTIONARY_MAX_RATIO`` distinct values per row
    are dictionary-encoded; columns with no null are required. Distinct values are estimated
    first (HyperLogLog), and counted exactly only where the estimate is near the bound, so a
    high-cardinality column costs no exact count.
    """
    rows = max(staged.row_count, 1)
    bound = DICTIONARY_MAX_RATIO * rows
    strings = [f.name for f in schema if f.name != key_column and pa.types.is_string(f.type)]
    parts = [f"count({_name(f.name)})" for f in schema]
    parts += [f"approx_count_distinct({_name(name)})" for name in strings]
    counts = staged.sql(f"SELECT {', '.join(parts)} FROM staged")[0]
    valid = dict(zip(schema.names, counts[: len(schema)], strict=True))
    estimates = dict(zip(strings, counts[len(schema) :], strict=True))
    dictionary = set()
    for name in strings:
        if estimates[name] > 2 * bound + 1000:  # HyperLogLog's error is a few percent
            continue
        (exact,) = staged.sql(f"SELECT count(DISTINCT {_name(name)}) FROM staged")[0]
        if exact <= bound:
            dictionary.add(name)
    required = {
        f.name for f in schema if valid[f.name] == staged.row_count and not pa.types.is_null(f.type)
    }
    return Layout(frozenset(dictionary), frozenset(required))


def sorted_batches(
    staged: StagedResult, schema: pa.Schema, key_column: str
) -> Iterator[pa.RecordBatch]:
    """The checked result sorted by key (byte order, as Arrow sorts), in ``schema``'s types."""
    columns = ", ".join(_name(name) for name in schema.names)
    try:
        relation = staged.con.sql(f"SELECT {columns} FROM staged ORDER BY {_name(key_column)}")
        reader = relation.to_arrow_reader(BATCH_ROWS)
        for batch in reader:
            arrays = [
                pc.cast(batch.column(i), field.type, safe=True) for i, field in enumerate(schema)
            ]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    except staged._error as exc:
        raise QueryFailedError(f"DuckDB could not sort the result: {exc}") from exc


@dataclass(frozen=True, slots=True)
class WrittenFiles:
    """A streamed snapshot's files on local disk, before they are read back and uploaded."""

    data: Path
    rows: int
    blocks: Blocks
    blocks_path: Path
    block_index: bytes


def write_sorted(
    staged: StagedResult, schema: pa.Schema, key_column: str, directory: Path
) -> WrittenFiles:
    """Write data.parquet and blocks.bin from DuckDB's sorted stream, a row group at a time.

    Raises
    ------
    SnapshotInvalidError
        If keys come out of order (the sort and Arrow disagree), or Parquet cannot hold a column.
    """
    from loaders.blocks import BlockWriter

    stored = layout(staged, schema, key_column)
    final = stored.apply(schema)
    data_path = directory / DATA_NAME
    blocks_path = directory / BLOCKS_NAME
    group_rows = staged.settings.row_group_rows
    order = _KeyOrder(key_column)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    rows = 0
    with (
        blocks_path.open("wb") as blocks_sink,
        pq.ParquetWriter(data_path, final, compression="zstd") as writer,
    ):
        blocks = BlockWriter(blocks_sink, key_column)

        def flush(count: int) -> None:
            nonlocal pending, pending_rows, rows
            table = pa.Table.from_batches(pending, schema=schema).combine_chunks()
            group, rest = table.slice(0, count), table.slice(count)
            group = _stored(group, final, stored)
            order.check(group)
            writer.write_table(group, row_group_size=max(group.num_rows, 1))
            blocks.write(group)
            rows += group.num_rows
            pending = rest.to_batches() if rest.num_rows else []
            pending_rows = rest.num_rows

        try:
            for batch in sorted_batches(staged, schema, key_column):
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= group_rows:
                    flush(group_rows)
            if pending_rows:
                flush(pending_rows)
            blocks_record, block_index = blocks.close()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SnapshotInvalidError(f"cannot encode the table as Parquet: {exc}") from exc
    return WrittenFiles(data_path, rows, blocks_record, blocks_path, block_index)


def _stored(table: pa.Table, final: pa.Schema, stored: Layout) -> pa.Table:
    """One row group in the stored layout: a dictionary per dictionary column."""
    columns = [
        pc.dictionary_encode(column).cast(field.type) if field.name in stored.dictionary else column
        for column, field in zip(table.columns, final, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=final)


class _KeyOrder:
    """Checks that keys written so far strictly increase, across row groups too."""

    def __init__(self, key_column: str) -> None:
        self.key_column = key_column
        self.last: str | None = None

    def check(self, table: pa.Table) -> None:
        keys = table.column(self.key_column)
        if not len(keys):
            return
        bad = 0
        if self.last is not None and keys[0].as_py() <= self.last:
            bad += 1
        if len(keys) > 1:
            bad += pc.sum(pc.less_equal(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py() or 0
        if bad:
            raise SnapshotInvalidError(
                f"key column {self.key_column!r} is not servable",
                (f"{bad} keys out of order in the sorted result",),
            )
        self.last = keys[-1].as_py()


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read a chunk at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_staged_snapshot(
    store: ObjectStore,
    staged: StagedResult,
    schema: pa.Schema,
    *,
    version: str,
    key_column: str,
    created_at: datetime,
    source: dict[str, Any] | None = None,
    query_started_at: datetime | None = None,
    published_at: datetime | None = None,
) -> Manifest:
    """Write a checked result larger than the memory layout as a snapshot, streaming.

    As :func:`loaders.snapshot.write_snapshot`: everything is read back (row group by row
    group, in a Python without pandas) before anything is written, then data, blocks, block
    index and last the manifest, create-only.

    Raises
    ------
    SnapshotInvalidError
        If the read-back or the blocks' check fails; nothing is written.
    """
    from loaders.readback import read_back_file
    from loaders.snapshot import check_blocks

    directory = staged.directory / f"snapshot-{version}"
    directory.mkdir()
    try:
        written = write_sorted(staged, schema, key_column, directory)
        if written.rows != staged.row_count:
            raise SnapshotInvalidError(f"wrote {written.rows} rows of {staged.row_count}")
        read = read_back_file(written.data, key_column)
        if read.row_count != written.rows:
            raise SnapshotInvalidError(
                f"read back {read.row_count} rows from a table of {written.rows}"
            )
        manifest = Manifest(
            version=version,
            created_at=created_at,
            key_column=key_column,
            row_count=written.rows,
            columns=read.columns,
            sha256=sha256_file(written.data),
            bytes=written.data.stat().st_size,
            source=dict(source or {}),
            query_started_at=query_started_at,
            published_at=published_at,
            table_bytes=read.table_bytes,
            blocks=written.blocks,
        )
        with (
            written.blocks_path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        ):
            check_blocks(manifest, written.block_index, memoryview(mapped))
        store.put_file(snapshot_key(version, DATA_NAME), written.data, if_none_match="*")
        store.put_file(snapshot_key(version, BLOCKS_NAME), written.blocks_path, if_none_match="*")
        store.put(snapshot_key(version, BLOCK_INDEX_NAME), written.block_index, if_none_match="*")
        store.put(snapshot_key(version, MANIFEST_NAME), manifest.to_json(), if_none_match="*")
        return manifest
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- the previous version and the change report ---------------------------------------------


def download_data(store: ObjectStore, manifest: Manifest, directory: Path) -> Path:
    """Copy one version's data.parquet to ``directory``, verified against its manifest.

    Raises
    ------
    LoaderError
        If it cannot be read, or its size, sha256 or row count differ from the manifest.
    """
    key = snapshot_key(manifest.version, DATA_NAME)
    path = directory / f"previous-{manifest.version}.parquet"
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as out:
        if manifest.bytes <= WHOLE_READ_MAX_BYTES:
            chunks: Iterator[bytes] = iter([store.read(key)])
        else:
            chunks = _ranges(store, key, manifest.bytes)
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    what = f"snapshot {manifest.version}"
    if size != manifest.bytes:
        raise SnapshotInvalidError(f"{what}: data is {size} bytes, manifest says {manifest.bytes}")
    if digest.hexdigest() != manifest.sha256:
        raise SnapshotInvalidError(f"{what}: sha256 mismatch ({digest.hexdigest()})")
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise SnapshotInvalidError(f"{what}: unreadable Parquet: {exc}") from exc
    if rows != manifest.row_count:
        raise SnapshotInvalidError(f"{what}: {rows} rows, manifest says {manifest.row_count}")
    return path


def _ranges(store: ObjectStore, key: str, total: int) -> Iterator[bytes]:
    start = 0
    while start < total:
        chunk = store.read_range(key, start, min(READ_RANGE_BYTES, total - start))
        if not chunk:
            return
        yield chunk
        start += len(chunk)


@dataclass(frozen=True, slots=True)
class Previous:
    """A version a build is compared with, and as much of it as could be read."""

    version: str | None
    manifest: Manifest | None = None
    data: Path | None = None


def previous(
    store: ObjectStore,
    version: str | None,
    directory: Path,
    progress: Callable[[str], None],
    *,
    data: bool = True,
) -> Previous:
    """The version ``version`` for the checks and (with ``data``) the change report; what
    cannot be read is left out with a warning (a broken earlier snapshot must not block a good
    new one)."""
    if version is None:
        return Previous(None)
    try:
        manifest = read_manifest(store, version)
    except LoaderError as exc:
        logger.warning("snapshot %s unreadable: %s", version, exc)
        return Previous(version)
    found = Previous(version, manifest)
    return with_data(store, found, directory, progress) if data else found


def with_data(
    store: ObjectStore, found: Previous, directory: Path, progress: Callable[[str], None]
) -> Previous:
    """``found`` with its data.parquet downloaded to ``directory``, if it can be read.

    A build downloads it only for the change report, after its own snapshot is written and
    its files deleted: a build then never holds both versions' files on disk at once.
    """
    if found.manifest is None or found.data is not None:
        return found
    progress(f"version {found.version}: downloading for the change report")
    try:
        return Previous(
            found.version, found.manifest, download_data(store, found.manifest, directory)
        )
    except LoaderError as exc:
        # Its manifest still carried the row count for the checks.
        logger.warning("snapshot %s unreadable: %s", found.version, exc)
        return found


def diff(
    staged: StagedResult,
    schema: pa.Schema,
    old: Path | None,
    *,
    key_column: str,
    previous_version: str | None,
) -> Changes:
    """:func:`loaders.validate.diff` over the staged result and the previous data file.

    One FULL OUTER JOIN on the key keeps only the keys that differ (spilling when there are
    many); counts and the first examples in key order come from those. Values compare with
    ``IS DISTINCT FROM``: a null equals only a null, NaN equals NaN, nested values compare
    element by element.
    """
    if old is None:
        return Changes(previous_version, staged.row_count, 0, 0)
    old_schema = pq.read_schema(old)
    shared = [n for n in schema.names if n != key_column and n in old_schema.names]
    retyped = [
        n
        for n in shared
        if value_type(schema.field(n).type) != value_type(old_schema.field(n).type)
    ]
    if retyped:
        # Values of two types don't compare: every row present in both counts as changed.
        differs = "TRUE"
    elif shared:
        differs = " OR ".join(f"n.{_name(c)} IS DISTINCT FROM o.{_name(c)}" for c in shared)
    else:
        differs = "FALSE"
    key = _name(key_column)
    staged.sql(
        f"CREATE OR REPLACE TEMP TABLE delta AS SELECT coalesce(n.{key}, o.{key}) AS k, "
        f"CASE WHEN o.{key} IS NULL THEN 'added' WHEN n.{key} IS NULL THEN 'removed' "
        "ELSE 'changed' END AS kind "
        f"FROM staged n FULL OUTER JOIN read_parquet({_literal(str(old))}) o ON n.{key} = o.{key} "
        f"WHERE n.{key} IS NULL OR o.{key} IS NULL OR ({differs})"
    )
    counts = dict(staged.sql("SELECT kind, count(*) FROM delta GROUP BY kind"))
    examples = {}
    for kind in ("added", "removed", "changed"):
        shown = staged.sql(
            f"SELECT k FROM delta WHERE kind = '{kind}' ORDER BY k LIMIT {MAX_EXAMPLES}"
        )
        examples[kind] = [row[0] for row in shown]
    staged.sql("DROP TABLE delta")
    return Changes(
        previous_version,
        counts.get("added", 0),
        counts.get("removed", 0),
        counts.get("changed", 0),
        examples,
        retyped,
    )
