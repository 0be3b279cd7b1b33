"""Immutable Parquet snapshots: check a table's keys, write it, and read it back verified.

This is the only module that turns bytes into a ``pa.Table``. A snapshot is
``snapshots/<version>/data.parquet`` (rows sorted by key, zstd) plus ``manifest.json``. The
manifest describes what a reader will read, not the table the builder held: some Arrow types
come back from Parquet as others (``timestamp[s]`` as ``timestamp[ms]``, ``date64`` as
``date32``), so the builder reads its bytes back, as a reader would, before it writes one.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from loaders.blocks import decode_block, parse_block_index, write_blocks
from loaders.errors import SnapshotInvalidError
from loaders.index import unservable_part
from loaders.manifest import (
    BLOCK_INDEX_NAME,
    BLOCKS_NAME,
    DATA_NAME,
    MANIFEST_NAME,
    Column,
    Manifest,
    Pointer,
    read_manifest,
    read_pointer,
    snapshot_key,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from loaders.blocks import BlockIndex
    from loaders.manifest import Blocks
    from loaders.readback import ReadBack
    from loaders.store import ObjectStore

MAX_EXAMPLES = 20
# String columns with at most this share of distinct values are stored dictionary-encoded, so
# readers get compact dictionary arrays back without re-hashing (segment, region, tier, ...).
DICTIONARY_MAX_RATIO = 0.05


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One verified snapshot: its manifest and its table."""

    manifest: Manifest
    table: pa.Table


def _examples(values: pa.Array | pa.ChunkedArray) -> str:
    return examples_text(values.slice(0, MAX_EXAMPLES).to_pylist())


def examples_text(values: Sequence[object]) -> str:
    """Up to :data:`MAX_EXAMPLES` values as a problem line quotes them."""
    return ", ".join(repr(v) for v in values[:MAX_EXAMPLES])


# The key rules' problem lines, whoever counts (Arrow here, DuckDB in loaders.stream).
NO_ROWS = "table has no rows"


def key_type_problem(key_column: str, key_type: pa.DataType) -> str | None:
    """Why a key column of ``key_type`` cannot be served, or None for a string column."""
    if pa.types.is_string(key_type) or pa.types.is_large_string(key_type):
        return None
    return f"key column {key_column!r} must be a string, not {key_type}"


def key_problems(
    *, nulls: int, empty: int, duplicates: int, duplicate_examples: Sequence[object]
) -> list[str]:
    """The problem lines of keys counted null, empty and duplicated (examples in key order)."""
    problems = []
    if nulls:
        problems.append(f"{nulls} null keys")
    if empty:
        problems.append(f"{empty} empty keys")
    if duplicates:
        problems.append(f"{duplicates} duplicate keys, e.g. {examples_text(duplicate_examples)}")
    return problems


def check_keys(table: pa.Table, key_column: str) -> None:
    """Check that ``table`` can be served by ``key_column``.

    Checks that the column exists and is a string column, that there is at least one row, and
    that keys are non-null, non-empty, unique and sorted. Every failed check is reported, with up
    to 20 example keys each.

    Raises
    ------
    SnapshotInvalidError
        Listing every failed check.
    """
    if key_column not in table.column_names:
        raise SnapshotInvalidError(
            f"key column {key_column!r} is missing", (f"columns are {table.column_names}",)
        )
    keys = table.column(key_column)
    if (wrong_type := key_type_problem(key_column, keys.type)) is not None:
        raise SnapshotInvalidError(wrong_type)
    if table.num_rows == 0:
        raise SnapshotInvalidError(NO_ROWS)
    import pyarrow.compute as pc  # the builder's checks: a reader never imports it for them

    nulls = keys.null_count
    keys = keys.drop_null()
    empty = pc.sum(pc.equal(pc.utf8_length(keys), 0)).as_py() or 0
    counts = pc.value_counts(keys)
    dupes = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    problems = key_problems(
        nulls=nulls,
        empty=empty,
        duplicates=len(dupes),
        duplicate_examples=dupes.slice(0, MAX_EXAMPLES).to_pylist(),
    )
    if len(keys) > 1 and not problems:
        previous, following = keys.slice(0, len(keys) - 1), keys.slice(1)
        out_of_order = pc.less(following, previous)
        if (n_unsorted := pc.sum(out_of_order).as_py() or 0) > 0:
            where = pc.filter(following, out_of_order)
            problems.append(f"{n_unsorted} keys out of order, e.g. {_examples(where)}")
    if problems:
        raise SnapshotInvalidError(f"key column {key_column!r} is not servable", tuple(problems))


def sort_by_key(table: pa.Table, key_column: str) -> pa.Table:
    """Return ``table`` sorted by its key column (byte order), as snapshots require."""
    return table.sort_by([(key_column, "ascending")])


def value_type(data_type: pa.DataType) -> pa.DataType:
    """The logical type of a column: a dictionary column counts as its values' type."""
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def columns_of(schema: pa.Schema) -> tuple[Column, ...]:
    """The manifest's description of a schema (dictionary encoding is a storage detail)."""
    return tuple(Column(f.name, str(value_type(f.type))) for f in schema)


def _compact(table: pa.Table, key_column: str) -> pa.Table:
    import pyarrow.compute as pc

    rows = max(table.num_rows, 1)
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        if name == key_column or not pa.types.is_string(column.type):
            continue
        if pc.count_distinct(column).as_py() <= DICTIONARY_MAX_RATIO * rows:
            table = table.set_column(i, name, pc.dictionary_encode(column))
    return table


def _required(table: pa.Table) -> pa.Table:
    """``table`` with each column that holds no null marked non-nullable (data untouched).

    Parquet then stores those columns without definition levels, which a reader would decode
    for every value only to find none null.
    """
    fields = [
        field.with_nullable(False) if field.nullable and _holds_no_null(column) else field
        for field, column in zip(table.schema, table.columns, strict=True)
    ]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    return pa.Table.from_arrays(table.columns, schema=schema)


def _holds_no_null(column: pa.ChunkedArray) -> bool:
    if column.null_count or pa.types.is_null(column.type):
        return False
    # A dictionary's own values may hold a null that valid indices point at.
    return not pa.types.is_dictionary(column.type) or not any(
        chunk.dictionary.null_count for chunk in column.chunks
    )


def check_columns(schema: pa.Schema) -> None:
    """Check that every column has a type a reader can serve.

    Raises
    ------
    SnapshotInvalidError
        Naming each column whose type (or a type nested in it) has no Parquet or JSON form:
        unions, intervals, run-end encoding.
    """
    problems = tuple(
        f"column {field.name!r} of type {field.type} cannot be served: {part} has no JSON form"
        for field in schema
        if (part := unservable_part(field.type)) is not None
    )
    if problems:
        raise SnapshotInvalidError("table has columns no reader can serve", problems)


def prepare_table(table: pa.Table, key_column: str) -> pa.Table:
    """A checked table as snapshots store it: low-cardinality strings dictionary-encoded, and
    columns without nulls marked required."""
    return _required(_compact(table, key_column))


def encode_table(table: pa.Table, key_column: str, *, prepared: bool = False) -> bytes:
    """Serialise a checked table as zstd Parquet bytes.

    Raises
    ------
    SnapshotInvalidError
        If Parquet cannot hold one of its columns.
    """
    compacted = table if prepared else prepare_table(table, key_column)
    sink = pa.BufferOutputStream()
    try:
        # One row group, however many rows: every column, dictionary columns included, then
        # decodes into a single chunk that the index uses as it is. In 1M-row row groups each
        # dictionary column came back as a chunk per row group, each with its own dictionary,
        # and a 10M-row load paid ~0.15 s to combine them. Pages keep pyarrow's 20,000 rows:
        # larger ones saved zstd contexts but not decode time, and the reader's page buffers
        # come from Arrow's C++ default pool (mimalloc), which kept about one page per thread.
        pq.write_table(
            compacted, sink, compression="zstd", row_group_size=max(compacted.num_rows, 1)
        )
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise SnapshotInvalidError(f"cannot encode the table as Parquet: {exc}") from exc
    return sink.getvalue().to_pybytes()


def parse_table(body: bytes, *, what: str) -> pa.Table:
    """Parse Parquet bytes into a table, as every reader does.

    Raises
    ------
    SnapshotInvalidError
        If the bytes are not readable Parquet; the message starts with ``what``.
    """
    try:
        # ParquetFile.read gives one chunk per column from a snapshot in one row group
        # (read_table splits into batches), so the index uses the columns as they are. Older
        # snapshots, in 1M-row row groups, still read: their dictionary columns come back in a
        # chunk per row group, which the index combines.
        return pq.ParquetFile(pa.BufferReader(body)).read()
    except (pa.ArrowException, OSError) as exc:
        raise SnapshotInvalidError(f"{what}: unreadable Parquet: {exc}") from exc


def describe(
    table: pa.Table,
    body: bytes,
    *,
    version: str,
    key_column: str,
    created_at: datetime,
    source: dict[str, Any] | None = None,
    query_started_at: datetime | None = None,
    published_at: datetime | None = None,
    read: ReadBack | None = None,
    blocks: Blocks | None = None,
) -> Manifest:
    """The manifest of ``table`` encoded as ``body`` (and as ``blocks``, when written).

    The columns are those a reader gets from ``body``: from ``read`` when the bytes were read
    back (:func:`loaders.readback.read_back`), which also gives ``table_bytes``; otherwise from
    the Parquet schema in ``body``'s footer.
    """
    columns = columns_of(pq.read_schema(pa.BufferReader(body))) if read is None else read.columns
    return Manifest(
        version=version,
        created_at=created_at,
        key_column=key_column,
        row_count=table.num_rows,
        columns=columns,
        sha256=hashlib.sha256(body).hexdigest(),
        bytes=len(body),
        source=dict(source or {}),
        query_started_at=query_started_at,
        published_at=published_at,
        table_bytes=None if read is None else read.table_bytes,
        blocks=blocks,
    )


def write_snapshot(
    store: ObjectStore,
    table: pa.Table,
    *,
    version: str,
    key_column: str,
    created_at: datetime,
    source: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    query_started_at: datetime | None = None,
    published_at: datetime | None = None,
) -> Manifest:
    """Check ``table``, then write its data, any extra files, and last its manifest, create-only.

    The rows are written twice: as ``data.parquet`` (what a memory-mode reader loads whole) and
    as blocks with their index (:mod:`loaders.blocks`, what a tiered reader reads by range).
    Before anything is written, the encoded bytes are read back as a reader would, in a Python
    without pandas (:func:`loaders.readback.read_back`); the manifest gives the columns and the
    decoded size that read found; the block index and some blocks are read back too. Nothing is
    written when a check fails. The manifest goes last
    so that its presence means the snapshot is complete. The pointer is not touched: see
    :func:`loaders.manifest.announce`.

    Raises
    ------
    SnapshotInvalidError
        If the keys fail a check, a column has a type a reader cannot serve, or the read-back
        fails; the message names the column and its type.
    """
    from loaders.readback import read_back  # the builder's: a child Python, kept off the reader

    check_keys(table, key_column)
    check_columns(table.schema)
    prepared = prepare_table(table, key_column)
    body = encode_table(prepared, key_column, prepared=True)
    read = read_back(body, key_column)
    if read.row_count != table.num_rows:
        raise SnapshotInvalidError(
            f"read back {read.row_count} rows from a table of {table.num_rows}"
        )
    blocks_sink = io.BytesIO()
    blocks, block_index = write_blocks(prepared, key_column, blocks_sink)
    del prepared
    manifest = describe(
        table,
        body,
        version=version,
        key_column=key_column,
        created_at=created_at,
        source=source,
        query_started_at=query_started_at,
        published_at=published_at,
        read=read,
        blocks=blocks,
    )
    check_blocks(manifest, block_index, blocks_sink.getbuffer())
    store.put(snapshot_key(version, DATA_NAME), body, if_none_match="*")
    store.put(snapshot_key(version, BLOCKS_NAME), blocks_sink.getvalue(), if_none_match="*")
    store.put(snapshot_key(version, BLOCK_INDEX_NAME), block_index, if_none_match="*")
    for name, extra in (extra_files or {}).items():
        store.put(snapshot_key(version, name), extra, if_none_match="*")
    store.put(snapshot_key(version, MANIFEST_NAME), manifest.to_json(), if_none_match="*")
    return manifest


def check_blocks(manifest: Manifest, index_body: bytes, blocks: memoryview | bytes) -> None:
    """Read back a snapshot's block index, and its first, middle and last blocks, as a tiered
    reader would.

    Raises
    ------
    SnapshotInvalidError
        If the index or one of those blocks does not verify or decode.
    """
    index = parse_block_index(manifest, index_body)
    for number in sorted({0, len(index) // 2, len(index) - 1}):
        start = index.offsets[number]
        decode_block(manifest, index, number, bytes(blocks[start : start + index.lengths[number]]))


def decode_snapshot(manifest: Manifest, body: bytes) -> Snapshot:
    """Verify data bytes against their manifest and parse them.

    Raises
    ------
    SnapshotInvalidError
        On a size or sha256 mismatch, unreadable Parquet, or a row count, schema or key column
        that differs from the manifest.
    """
    if len(body) != manifest.bytes:
        raise SnapshotInvalidError(
            f"snapshot {manifest.version}: data is {len(body)} bytes, "
            f"manifest says {manifest.bytes}"
        )
    digest = hashlib.sha256(body).hexdigest()
    if digest != manifest.sha256:
        raise SnapshotInvalidError(f"snapshot {manifest.version}: sha256 mismatch ({digest})")
    table = parse_table(body, what=f"snapshot {manifest.version}")
    if table.num_rows != manifest.row_count:
        raise SnapshotInvalidError(
            f"snapshot {manifest.version}: {table.num_rows} rows, "
            f"manifest says {manifest.row_count}"
        )
    if columns_of(table.schema) != manifest.columns:
        raise SnapshotInvalidError(f"snapshot {manifest.version}: columns differ from the manifest")
    if manifest.key_column not in table.column_names:
        raise SnapshotInvalidError(
            f"snapshot {manifest.version}: key column {manifest.key_column!r} is missing"
        )
    # Decoding leaves freed pages in the allocator; hand them back so RSS tracks the table.
    pa.default_memory_pool().release_unused()
    return Snapshot(manifest, table)


def read_snapshot(store: ObjectStore, version: str) -> Snapshot:
    """Read one version's manifest and data from ``store`` and verify them."""
    manifest = read_manifest(store, version)
    return decode_snapshot(manifest, store.read(snapshot_key(version, DATA_NAME)))


class SnapshotReader:
    """The consumer's view of a store: watch the pointer, retrieve verified snapshots.

    Parameters
    ----------
    store : ObjectStore
        The snapshot root.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def read_pointer(self, *, if_none_match: str | None = None) -> Pointer | None:
        """The current pointer, or ``None`` if it still has ETag ``if_none_match``."""
        return read_pointer(self.store, if_none_match=if_none_match)

    def read(self, version: str) -> Snapshot:
        """One verified snapshot."""
        return read_snapshot(self.store, version)

    def read_manifest(self, version: str) -> Manifest:
        """One version's checked manifest: a small read, made before committing to the data."""
        return read_manifest(self.store, version)

    def read_data(self, manifest: Manifest) -> Snapshot:
        """The data ``manifest`` describes, verified against it."""
        return decode_snapshot(manifest, self.store.read(snapshot_key(manifest.version, DATA_NAME)))

    def read_block_index(self, manifest: Manifest) -> BlockIndex:
        """The block index of ``manifest``'s tiered layout, verified against it.

        Raises
        ------
        SnapshotInvalidError
            If the snapshot has no blocks, or its index does not verify.
        """
        if manifest.blocks is None:
            raise SnapshotInvalidError(f"snapshot {manifest.version} has no blocks")
        body = self.store.read(snapshot_key(manifest.version, BLOCK_INDEX_NAME))
        return parse_block_index(manifest, body)

    def read_block(self, manifest: Manifest, blocks: BlockIndex, number: int) -> bytes:
        """Block ``number``'s bytes: one ranged read (verified by the caller on decode)."""
        key = snapshot_key(manifest.version, BLOCKS_NAME)
        return self.store.read_range(key, blocks.offsets[number], blocks.lengths[number])
