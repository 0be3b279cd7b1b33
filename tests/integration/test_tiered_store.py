"""Ranged reads through the store interface, and a tiered cache over each kind of store.

The same cases run over a directory (``file://``), in-process moto and a moto server
(``any_store``). A ``RecordingStore`` between the cache and the store counts every read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from loaders.blocks import MAX_BLOCK_BYTES, ROWS_PER_BLOCK
from loaders.errors import ObjectNotFoundError, StoreError
from loaders.manifest import BLOCK_INDEX_NAME, BLOCKS_NAME, MANIFEST_NAME, snapshot_key
from loaders.snapshot import SnapshotReader
from service.cache import SnapshotCache
from tests.conftest import customers, publish
from tests.integration.rawstore import RecordingStore

if TYPE_CHECKING:
    from loaders.store import ObjectStore
    from tests.conftest import FakeClock

BODY = bytes(range(256)) * 4  # 1,024 bytes, each offset's value known
KEY = "snapshots/v/blocks.bin"
# Two blocks (4,096 rows and 104); even keys, so odd ones fall between rows.
IDS = [f"C{2 * i:09d}" for i in range(1, ROWS_PER_BLOCK + 105)]


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 10), (500, 100), (1014, 10), (0, 1024), (1023, 1)],
    ids=["start", "middle", "end", "whole", "last byte"],
)
def test_read_range_gives_the_bytes_asked_for(
    any_store: ObjectStore, start: int, length: int
) -> None:
    any_store.put(KEY, BODY)

    assert any_store.read_range(KEY, start, length) == BODY[start : start + length]


def test_read_range_past_the_end_gives_the_bytes_up_to_it(any_store: ObjectStore) -> None:
    any_store.put(KEY, BODY)

    assert any_store.read_range(KEY, 1020, 100) == BODY[1020:]


def test_read_range_starting_past_the_end_raises_store_error_everywhere(
    any_store: ObjectStore,
) -> None:
    any_store.put(KEY, BODY)

    with pytest.raises(StoreError, match="InvalidRange"):
        any_store.read_range(KEY, 1024, 10)


def test_read_range_of_a_missing_key_raises_object_not_found(any_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        any_store.read_range("snapshots/nothing/blocks.bin", 0, 10)


@pytest.mark.parametrize(("start", "length"), [(-1, 10), (0, 0)], ids=["negative start", "empty"])
def test_read_range_refuses_a_bad_range(any_store: ObjectStore, start: int, length: int) -> None:
    with pytest.raises(ValueError, match="bad range"):
        any_store.read_range(KEY, start, length)


# --- a tiered cache over the store -----------------------------------------------------------


def test_tiered_lookups_read_one_small_range_per_cold_block(
    any_store: ObjectStore, clock: FakeClock, wall_clock: FakeClock
) -> None:
    version = publish(any_store, customers(IDS))
    recording = RecordingStore(any_store)
    cache = SnapshotCache(
        SnapshotReader(recording),
        key_column="customer_id",
        ttl_seconds=300,
        max_staleness_seconds=86_400,
        clock=clock,
        wall_clock=wall_clock,
        serve_mode="tiered",
    )
    index = cache.get().index
    blocks_key = snapshot_key(version, BLOCKS_NAME)
    at_load = [(method, key) for method, key, _ in recording.calls]
    first_block = recording.ranged_reads[:]
    recording.calls.clear()

    cold = index.get(IDS[-1])  # block 1
    after_cold = recording.ranged_reads[:]
    hot = index.get(IDS[-2])
    batch, missing = index.get_many([IDS[0], IDS[-3], "C000000003", "C999999999"])

    assert at_load == [
        ("get", "CURRENT"),
        ("read", snapshot_key(version, MANIFEST_NAME)),
        ("read", snapshot_key(version, BLOCK_INDEX_NAME)),
        ("read_range", blocks_key),
    ]
    assert [(key, start) for key, start, _ in first_block] == [(blocks_key, 0)]
    ((key, start, length),) = after_cold
    assert (key, start) == (blocks_key, first_block[0][2])  # block 1 starts where 0 ends
    assert length <= MAX_BLOCK_BYTES
    assert (cold["customer_id"], hot["customer_id"]) == (IDS[-1], IDS[-2])
    assert [row["customer_id"] for row in batch] == [IDS[0], IDS[-3]]
    assert missing == ["C000000003", "C999999999"]
    assert recording.ranged_reads == after_cold  # hot keys and misses read nothing more
