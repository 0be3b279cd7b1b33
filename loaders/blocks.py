"""The tiered layout: a snapshot's sorted rows as standalone Parquet blocks, and their index.

``blocks.bin`` is a run of small zstd Parquet files, each holding up to 4,096 consecutive rows
(fewer where that many would pass 128 KiB), end to end. Each block is a whole Parquet file with
its own footer, so a reader fetches one with a single ranged read and decodes it alone: it never
needs the footer of a large file (about 14 MB of row-group metadata at 10M rows).

``blocks.arrow`` (an Arrow IPC file, a few bytes per block) gives each block's first and last
key, byte offset and length, rows and sha256. A tiered reader holds only that index: a lookup
bisects the first keys, then reads one block (or finds it cached). The manifest's
:class:`loaders.manifest.Blocks` names the index's size and sha256, so a reader starts from
the manifest without listing or scanning anything.

Writing is streamed (:class:`BlockWriter` takes batches in key order), so the builder can write
blocks straight from an engine's sorted output.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import pyarrow as pa

from loaders.errors import SnapshotInvalidError
from loaders.index import KeyIndex
from loaders.manifest import Blocks

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from loaders.manifest import Manifest

ROWS_PER_BLOCK = 4096
# One ranged read per cold key stays small: a block that would pass this is split in two.
MAX_BLOCK_BYTES = 128 * 1024
INDEX_SCHEMA = pa.schema(
    [
        pa.field("first_key", pa.string(), nullable=False),
        pa.field("last_key", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("rows", pa.int32(), nullable=False),
        pa.field("sha256", pa.binary(32), nullable=False),
    ]
)


def encode_block(table: pa.Table) -> bytes:
    """One block as a standalone zstd Parquet file, in one row group."""
    import pyarrow.parquet as pq  # the builder's: a reader only decodes

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=max(table.num_rows, 1))
    return sink.getvalue().to_pybytes()


def _own_dictionaries(table: pa.Table) -> pa.Table:
    """``table`` with each dictionary column re-encoded to the values its rows use.

    A slice of a dictionary array keeps the whole dictionary; a block must not carry the
    dictionary of a whole column.
    """
    import pyarrow.compute as pc

    for i, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            plain = column.cast(column.type.value_type)
            encoded = pc.dictionary_encode(plain).cast(column.type)
            table = table.set_column(i, table.field(i), encoded)
    return table


class BlockWriter:
    """Writes rows, in key order, as blocks to ``sink``; :meth:`close` gives the index.

    Parameters
    ----------
    sink : binary file
        Where ``blocks.bin``'s bytes go, in order (a file, or ``io.BytesIO``).
    key_column : str
        The rows' key; each block's first and last key go into the index.
    rows_per_block : int, default 4096
    max_block_bytes : int, default 128 KiB
        A block that encodes larger is split (a single row is never split).
    """

    def __init__(
        self,
        sink: BinaryIO,
        key_column: str,
        *,
        rows_per_block: int = ROWS_PER_BLOCK,
        max_block_bytes: int = MAX_BLOCK_BYTES,
    ) -> None:
        self._sink = sink
        self._key_column = key_column
        self._rows_per_block = rows_per_block
        self._max_block_bytes = max_block_bytes
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._offset = 0
        self._entries: dict[str, list[object]] = {name: [] for name in INDEX_SCHEMA.names}

    def write(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Add rows that follow (in key order) every row written so far."""
        table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self._rows_per_block:
            self._drain(final=False)

    def close(self) -> tuple[Blocks, bytes]:
        """Write the last block; return the manifest's record and ``blocks.arrow``'s bytes."""
        self._drain(final=True)
        count = len(self._entries["offset"])
        if count == 0:
            raise SnapshotInvalidError("no rows to write as blocks")
        columns = [pa.array(self._entries[f.name], f.type) for f in INDEX_SCHEMA]
        index = pa.Table.from_arrays(columns, schema=INDEX_SCHEMA)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, INDEX_SCHEMA) as writer:
            writer.write_table(index)
        body = sink.getvalue().to_pybytes()
        blocks = Blocks(
            count=count,
            bytes=self._offset,
            rows_per_block=self._rows_per_block,
            index_bytes=len(body),
            index_sha256=hashlib.sha256(body).hexdigest(),
        )
        return blocks, body

    def _drain(self, *, final: bool) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        start = 0
        while table.num_rows - start >= self._rows_per_block or (final and start < table.num_rows):
            rows = min(self._rows_per_block, table.num_rows - start)
            self._emit(table.slice(start, rows))
            start += rows
        rest = table.slice(start)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def _emit(self, table: pa.Table) -> None:
        body = encode_block(_own_dictionaries(table).combine_chunks())
        if len(body) > self._max_block_bytes and table.num_rows > 1:
            half = table.num_rows // 2
            self._emit(table.slice(0, half))
            self._emit(table.slice(half))
            return
        keys = table.column(self._key_column)
        self._sink.write(body)
        entries = self._entries
        entries["first_key"].append(keys[0].as_py())
        entries["last_key"].append(keys[-1].as_py())
        entries["offset"].append(self._offset)
        entries["length"].append(len(body))
        entries["rows"].append(table.num_rows)
        entries["sha256"].append(hashlib.sha256(body).digest())
        self._offset += len(body)


def write_blocks(table: pa.Table, key_column: str, sink: BinaryIO) -> tuple[Blocks, bytes]:
    """Write a whole sorted table as blocks (see :class:`BlockWriter`)."""
    writer = BlockWriter(sink, key_column)
    for batch in table.to_batches(max_chunksize=1 << 16):
        writer.write(batch)
    return writer.close()


@dataclass(frozen=True, slots=True)
class BlockIndex:
    """Where each block of one snapshot is, and which keys it may hold: all a tiered reader
    keeps of a snapshot besides the blocks it has cached."""

    version: str
    first_keys: Sequence[str]
    last_keys: Sequence[str]
    offsets: Sequence[int]
    lengths: Sequence[int]
    rows: Sequence[int]
    digests: Sequence[bytes]
    nbytes: int  # what the index itself holds, roughly

    def __len__(self) -> int:
        return len(self.offsets)

    def find(self, key: str) -> int | None:
        """The block whose key range holds ``key``, or None when no block's does.

        Python orders ``str`` by code point, which for UTF-8 is the byte order snapshots
        are sorted in.
        """
        i = bisect.bisect_right(self.first_keys, key) - 1
        if i < 0 or key > self.last_keys[i]:
            return None
        return i


def parse_block_index(manifest: Manifest, body: bytes) -> BlockIndex:
    """Verify ``blocks.arrow``'s bytes against the manifest and read them.

    Raises
    ------
    SnapshotInvalidError
        On a size or sha256 mismatch, an unreadable file, or blocks that do not tile
        ``blocks.bin``, do not add up to the manifest's rows, or whose key ranges overlap.
    """
    what = f"snapshot {manifest.version}: block index"
    blocks = manifest.blocks
    if blocks is None:
        raise SnapshotInvalidError(f"snapshot {manifest.version} has no blocks")
    if len(body) != blocks.index_bytes:
        raise SnapshotInvalidError(
            f"{what} is {len(body)} bytes, manifest says {blocks.index_bytes}"
        )
    digest = hashlib.sha256(body).hexdigest()
    if digest != blocks.index_sha256:
        raise SnapshotInvalidError(f"{what}: sha256 mismatch ({digest})")
    try:
        table = pa.ipc.open_file(pa.BufferReader(body)).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise SnapshotInvalidError(f"{what}: unreadable: {exc}") from exc
    if not table.schema.equals(INDEX_SCHEMA, check_metadata=False):
        raise SnapshotInvalidError(f"{what}: unexpected columns {table.schema.names}")
    columns = {name: table.column(name).to_pylist() for name in INDEX_SCHEMA.names}
    index = BlockIndex(
        version=manifest.version,
        first_keys=columns["first_key"],
        last_keys=columns["last_key"],
        offsets=columns["offset"],
        lengths=columns["length"],
        rows=columns["rows"],
        digests=columns["sha256"],
        nbytes=table.nbytes * 2,  # Python strings and ints cost about twice Arrow's bytes
    )
    _check_tiling(index, manifest, what)
    return index


def _check_tiling(index: BlockIndex, manifest: Manifest, what: str) -> None:
    blocks = manifest.blocks
    assert blocks is not None
    if len(index) != blocks.count:
        raise SnapshotInvalidError(f"{what}: {len(index)} blocks, manifest says {blocks.count}")
    if sum(index.rows) != manifest.row_count:
        raise SnapshotInvalidError(
            f"{what}: blocks hold {sum(index.rows)} rows, manifest says {manifest.row_count}"
        )
    expected = 0
    for offset, length, rows in zip(index.offsets, index.lengths, index.rows, strict=True):
        if offset != expected or length < 1 or rows < 1:
            raise SnapshotInvalidError(f"{what}: blocks do not tile blocks.bin at byte {offset}")
        expected = offset + length
    if expected != blocks.bytes:
        raise SnapshotInvalidError(
            f"{what}: blocks end at {expected}, manifest says {blocks.bytes}"
        )
    ranges = zip(index.first_keys, index.last_keys, strict=True)
    previous_last: str | None = None
    for first, last in ranges:
        if first > last or (previous_last is not None and first <= previous_last):
            raise SnapshotInvalidError(f"{what}: block key ranges are not sorted and disjoint")
        previous_last = last


# What one read of a full check takes at most: several blocks end to end.
CHECK_READ_BYTES = 8 << 20


def check_all_blocks(
    manifest: Manifest, index: BlockIndex, read_range: Callable[[int, int], bytes]
) -> int:
    """Read and decode every block, as readers would one at a time; the number checked.

    ``read_range(start, length)`` reads ``blocks.bin``; consecutive blocks are read together,
    up to :data:`CHECK_READ_BYTES` at a time, so memory stays bounded for any table.

    Raises
    ------
    SnapshotInvalidError
        Naming the first block that does not verify or decode.
    """
    number = 0
    while number < len(index):
        first, start, length = number, index.offsets[number], 0
        while number < len(index) and (
            length == 0 or length + index.lengths[number] <= CHECK_READ_BYTES
        ):
            length += index.lengths[number]
            number += 1
        body = read_range(start, length)
        if len(body) != length:
            raise SnapshotInvalidError(
                f"snapshot {manifest.version}: blocks.bin ends at byte {start + len(body)}, "
                f"the index says {start + length}"
            )
        view = memoryview(body)
        for n in range(first, number):
            at = index.offsets[n] - start
            decode_block(manifest, index, n, bytes(view[at : at + index.lengths[n]]))
    return len(index)


@dataclass(frozen=True, slots=True)
class Block:
    """One decoded, verified block: its rows' index and what it holds in memory."""

    number: int
    index: KeyIndex
    nbytes: int


def decode_block(manifest: Manifest, index: BlockIndex, number: int, body: bytes) -> Block:
    """Verify one block's bytes against the index and decode them, as a reader serves them.

    Raises
    ------
    SnapshotInvalidError
        On a size or sha256 mismatch, unreadable Parquet, or rows, columns or keys that differ
        from what the index and manifest say.
    """
    import pyarrow.parquet as pq

    from loaders.snapshot import columns_of

    what = f"snapshot {manifest.version}: block {number}"
    if len(body) != index.lengths[number]:
        raise SnapshotInvalidError(
            f"{what} is {len(body)} bytes, the index says {index.lengths[number]}"
        )
    if hashlib.sha256(body).digest() != index.digests[number]:
        raise SnapshotInvalidError(f"{what}: sha256 mismatch")
    try:
        # One thread: a block is small, the reader's own pool runs blocks in parallel, and
        # Arrow's CPU pool busy at interpreter exit could abort the process (apache/arrow#34314).
        table = pq.ParquetFile(pa.BufferReader(body)).read(use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise SnapshotInvalidError(f"{what}: unreadable Parquet: {exc}") from exc
    if table.num_rows != index.rows[number]:
        raise SnapshotInvalidError(
            f"{what}: {table.num_rows} rows, the index says {index.rows[number]}"
        )
    if columns_of(table.schema) != manifest.columns:
        raise SnapshotInvalidError(f"{what}: columns differ from the manifest")
    keys = KeyIndex(table, manifest.key_column)
    stored = table.column(manifest.key_column)
    expected = (index.first_keys[number], index.last_keys[number])
    if (stored[0].as_py(), stored[-1].as_py()) != expected:
        raise SnapshotInvalidError(f"{what}: keys differ from the index")
    return Block(number, keys, keys.nbytes)
