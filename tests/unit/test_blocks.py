"""loaders.blocks: the tiered layout written, verified and read back, and each way it is bad."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from scripts.sample_data import make_customers

from loaders.blocks import (
    MAX_BLOCK_BYTES,
    ROWS_PER_BLOCK,
    BlockWriter,
    check_all_blocks,
    decode_block,
    parse_block_index,
    write_blocks,
)
from loaders.errors import SnapshotInvalidError
from loaders.manifest import Manifest
from loaders.snapshot import columns_of, prepare_table

KEY = "customer_id"
T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)


def _layout(table: pa.Table, **writer: int) -> tuple[Manifest, bytes, bytes]:
    """A manifest, blocks.bin and blocks.arrow for ``table`` (prepared as snapshots store it)."""
    prepared = prepare_table(table.sort_by([(KEY, "ascending")]), KEY)
    sink = io.BytesIO()
    block_writer = BlockWriter(sink, KEY, **writer)
    for batch in prepared.to_batches(max_chunksize=1000):
        block_writer.write(batch)
    blocks, index_body = block_writer.close()
    manifest = Manifest(
        version="20261123T120000Z-0123abcd",
        created_at=T0,
        key_column=KEY,
        row_count=table.num_rows,
        columns=columns_of(prepared.schema),
        sha256="0" * 64,
        bytes=1,
        blocks=blocks,
    )
    return manifest, sink.getvalue(), index_body


def _block(blocks_bin: bytes, index: object, number: int) -> bytes:
    start = index.offsets[number]  # type: ignore[attr-defined]
    return blocks_bin[start : start + index.lengths[number]]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def layout() -> tuple[Manifest, bytes, bytes]:
    return _layout(make_customers(10_000))


def test_every_row_is_in_one_block_and_answers_as_the_table_does(layout: tuple) -> None:
    manifest, blocks_bin, index_body = layout
    index = parse_block_index(manifest, index_body)
    table = make_customers(10_000).sort_by([(KEY, "ascending")])

    assert len(index) == manifest.blocks.count == 3  # 4,096 + 4,096 + 1,808
    assert list(index.rows) == [ROWS_PER_BLOCK, ROWS_PER_BLOCK, 10_000 - 2 * ROWS_PER_BLOCK]
    assert max(index.lengths) <= MAX_BLOCK_BYTES
    for row in (0, 4095, 4096, 9999):
        key = table.column(KEY)[row].as_py()
        number = index.find(key)
        block = decode_block(manifest, index, number, _block(blocks_bin, index, number))
        assert block.index.get(key)["account_id"] == table.column("account_id")[row].as_py()


def test_keys_outside_every_range_find_no_block(layout: tuple) -> None:
    manifest, _, index_body = layout
    index = parse_block_index(manifest, index_body)

    assert index.find("") is None
    assert index.find("A") is None  # before the first key (keys start with "C")
    assert index.find("D") is None  # after the last
    gap = index.last_keys[0] + "\x00"  # between block 0's last key and block 1's first
    assert gap < index.first_keys[1] and index.find(gap) is None


def test_a_block_over_the_byte_limit_is_split() -> None:
    manifest, blocks_bin, index_body = _layout(make_customers(3000), max_block_bytes=20_000)
    index = parse_block_index(manifest, index_body)

    assert len(index) > 3 and max(index.lengths) <= 20_000
    assert sum(index.rows) == 3000
    assert len(blocks_bin) == manifest.blocks.bytes


def test_a_block_keeps_only_the_dictionary_values_its_rows_use() -> None:
    # 2,048 distinct values that do not compress: a slice of the column still holds them all.
    values = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2048)]
    table = pa.table(
        {
            KEY: [f"K{i:05d}" for i in range(8192)],
            "tier": pa.array([values[i % 2048] for i in range(8192)]).dictionary_encode(),
        }
    )
    blocks, _ = write_blocks(table.slice(0, 10), KEY, io.BytesIO())

    # ~1.4 KB with the 10 values used; the whole dictionary would be ~70 KB.
    assert blocks.count == 1 and blocks.bytes < 8192


def test_the_index_must_match_the_manifest(layout: tuple) -> None:
    manifest, _, index_body = layout
    flipped = bytearray(index_body)
    flipped[len(flipped) // 2] ^= 0xFF
    fewer_rows = dataclasses.replace(manifest, row_count=manifest.row_count - 1)
    no_blocks = dataclasses.replace(manifest, blocks=None)

    with pytest.raises(SnapshotInvalidError, match="sha256 mismatch"):
        parse_block_index(manifest, bytes(flipped))
    with pytest.raises(SnapshotInvalidError, match="bytes, manifest says"):
        parse_block_index(manifest, index_body + b"\x00")
    with pytest.raises(SnapshotInvalidError, match="rows, manifest says"):
        parse_block_index(fewer_rows, index_body)
    with pytest.raises(SnapshotInvalidError, match="has no blocks"):
        parse_block_index(no_blocks, index_body)


def _index_of(manifest: Manifest, columns: dict[str, list]) -> tuple[Manifest, bytes]:
    """A manifest naming a hand-made index (sha256 and size right), and the index's bytes."""
    from loaders.blocks import INDEX_SCHEMA

    table = pa.Table.from_pydict(columns, schema=INDEX_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, INDEX_SCHEMA) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    blocks = dataclasses.replace(
        manifest.blocks,
        count=table.num_rows,
        index_bytes=len(body),
        index_sha256=hashlib.sha256(body).hexdigest(),
    )
    return dataclasses.replace(manifest, blocks=blocks), body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"offset": [0, 99, 200]}, "do not tile", id="gap"),
        pytest.param({"first_key": ["A", "B", "B2"]}, "sorted and disjoint", id="overlap"),
        pytest.param({"last_key": ["Z", "C", "D"]}, "sorted and disjoint", id="backwards"),
        pytest.param({"length": [100, 100, 99]}, "blocks end at", id="short"),
    ],
)
def test_an_index_that_does_not_describe_blocks_bin_is_rejected(
    layout: tuple, change: dict[str, list], message: str
) -> None:
    manifest, _, _ = layout
    good = {
        "first_key": ["A", "C", "E"],
        "last_key": ["B", "D", "F"],
        "offset": [0, 100, 200],
        "length": [100, 100, 100],
        "rows": [4096, 4096, 1808],
        "sha256": [b"\x00" * 32] * 3,
    }
    blocks = dataclasses.replace(manifest.blocks, bytes=300)
    bad_manifest, body = _index_of(dataclasses.replace(manifest, blocks=blocks), good | change)

    with pytest.raises(SnapshotInvalidError, match=message):
        parse_block_index(bad_manifest, body)


def test_a_block_must_match_its_index_entry(layout: tuple) -> None:
    manifest, blocks_bin, index_body = layout
    index = parse_block_index(manifest, index_body)
    body = _block(blocks_bin, index, 1)
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0xFF
    other_columns = dataclasses.replace(manifest, columns=manifest.columns[:-1])

    with pytest.raises(SnapshotInvalidError, match=r"block 1 is \d+ bytes, the index says"):
        decode_block(manifest, index, 1, body[:-1])
    with pytest.raises(SnapshotInvalidError, match="block 1: sha256 mismatch"):
        decode_block(manifest, index, 1, bytes(flipped))
    with pytest.raises(SnapshotInvalidError, match="columns differ"):
        decode_block(other_columns, index, 1, body)


def test_a_block_whose_keys_are_not_its_entrys_is_rejected(layout: tuple) -> None:
    manifest, blocks_bin, index_body = layout
    index = parse_block_index(manifest, index_body)
    # Block 0's bytes where the index says block 1 is: sizes differ, so give it block 1's entry.
    body = _block(blocks_bin, index, 0)
    swapped = dataclasses.replace(
        index,
        lengths=[len(body), len(body), index.lengths[2]],
        digests=[index.digests[0]] * 2 + [index.digests[2]],
    )

    with pytest.raises(SnapshotInvalidError, match="keys differ from the index"):
        decode_block(manifest, swapped, 1, body)


def test_no_rows_make_no_blocks() -> None:
    with pytest.raises(SnapshotInvalidError, match="no rows"):
        BlockWriter(io.BytesIO(), KEY).close()


def test_a_full_check_reads_blocks_together_within_its_read_size(
    layout: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loaders.blocks

    manifest, blocks_bin, index_body = layout
    index = parse_block_index(manifest, index_body)
    monkeypatch.setattr(loaders.blocks, "CHECK_READ_BYTES", index.lengths[0] + index.lengths[1])
    reads: list[tuple[int, int]] = []

    def read_range(start: int, length: int) -> bytes:
        reads.append((start, length))
        return blocks_bin[start : start + length]

    assert check_all_blocks(manifest, index, read_range) == 3
    assert reads == [(0, index.offsets[2]), (index.offsets[2], index.lengths[2])]
    with pytest.raises(SnapshotInvalidError, match=r"blocks\.bin ends at byte"):
        check_all_blocks(manifest, index, lambda start, length: blocks_bin[start : start + 9])
