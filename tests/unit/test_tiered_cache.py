"""Tiered serving through the real SnapshotCache and handler, over the in-memory source.

Block reads are counted by the source (``InMemorySource.block_reads``: one entry per ranged
read). Reads that must hang are held on a ``threading.Event`` past a short injected wait, so
nothing here sleeps or times anything: a 503 answered while its read is still held could not
have waited for that read.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.blocks import MAX_BLOCK_BYTES, ROWS_PER_BLOCK, parse_block_index
from loaders.errors import ObjectNotFoundError, StoreError
from loaders.metrics import MetricsRecorder
from service.errors import RowsUnavailableError
from service.handler import LookupFunction, Service
from service.local_server import LocalContext
from service.settings import Settings
from service.tiered import TieredIndex
from tests.conftest import T0, FakeClock, customers, load_event
from tests.unit.conftest import KEY_COLUMN, TTL_SECONDS, InMemorySource, make_cache

if TYPE_CHECKING:
    from collections.abc import Callable

    import pyarrow as pa

    from loaders.blocks import BlockIndex
    from loaders.manifest import Manifest
    from service.cache import SnapshotCache

MB = 1 << 20
# Four blocks: three of 4,096 rows and one of 100. Keys are even numbers, so an odd key is a
# miss inside a block's range or between two blocks' ranges.
ROWS = 3 * ROWS_PER_BLOCK + 100
IDS = [f"C{2 * i:09d}" for i in range(1, ROWS + 1)]
# A request's wait on its reads (the cache's refresh wait): long where reads are free to
# finish, short where a held read must end the request first. Never a timed assertion.
WAIT_SECONDS = 10.0
SHORT_WAIT_SECONDS = 0.5
HELD_SECONDS = 10  # the longest a held read waits for its release: a failed test's bound


def key_in_block(number: int, offset: int = 10) -> str:
    return IDS[number * ROWS_PER_BLOCK + offset]


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return customers(IDS)


class HeldSource(InMemorySource):
    """Block reads fail with ``error`` while it is set, and wait on ``release`` while ``hold``
    is set (an S3 that stopped answering); ``reading`` is set once a held read started and
    ``returned`` once it gave its bytes back."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None
        self.failing: set[int] | None = None  # the blocks ``error`` applies to (None: all)
        self.hold = False
        self.reading = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def read_block(self, manifest: Manifest, blocks: BlockIndex, number: int) -> bytes:
        body = super().read_block(manifest, blocks, number)
        if self.error is not None and (self.failing is None or number in self.failing):
            raise self.error
        if self.hold:
            self.reading.set()
            self.release.wait(HELD_SECONDS)
            self.returned.set()
        return body


@pytest.fixture
def held() -> HeldSource:
    return HeldSource()


def tiered_cache(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, **options: Any
) -> SnapshotCache:
    options = {"serve_mode": "tiered", "refresh_wait_seconds": WAIT_SECONDS, **options}
    return make_cache(source, clock, wall_clock, **options)


def function_over(cache: SnapshotCache) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The lookup function over ``cache``: direct invocations in, decoded answers out."""
    lookup = LookupFunction(Service(Settings("file:///unused", key_column=KEY_COLUMN), cache))
    return lambda payload: lookup(payload, LocalContext())


def http_get(cache: SnapshotCache, key: str) -> dict[str, Any]:
    """GET /customers/<key> through the HTTP API sample event."""
    event = load_event("http_v2_get_customer")
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/customers/{key}"
    event["pathParameters"] = {"customer_id": key}
    lookup = LookupFunction(Service(Settings("file:///unused", key_column=KEY_COLUMN), cache))
    return lookup(event, LocalContext())


def reads_since(source: InMemorySource, before: int) -> list[int]:
    return [number for _, number in source.block_reads[before:]]


# --- choosing the mode ---------------------------------------------------------------------


def _with_table_bytes(source: InMemorySource, version: str, table_bytes: int) -> None:
    manifest, body = source.blobs[version]
    source.blobs[version] = (replace(manifest, table_bytes=table_bytes), body)


def test_auto_serves_tiered_when_the_table_does_not_fit_the_budget_and_says_why(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    small_table: pa.Table,
    caplog: pytest.LogCaptureFixture,
) -> None:
    version = source.publish(small_table)
    _with_table_bytes(source, version, 200 * MB)
    cache = make_cache(source, clock, wall_clock, serve_mode="auto", memory_budget_bytes=64 * MB)

    with caplog.at_level(logging.INFO):
        serving = cache.get()

    assert serving.snapshot["mode"] == "tiered"
    assert serving.index.get("C000000001")["customer_id"] == "C000000001"
    assert any(
        f"snapshot {version} needs about 240 MB beside the 0 MB held, over the 64 MB budget: "
        "serving it tiered" in r.getMessage()
        for r in caplog.records
    )


def test_auto_serves_from_memory_when_the_table_fits(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, small_table: pa.Table
) -> None:
    version = source.publish(small_table)
    _with_table_bytes(source, version, 10 * MB)
    cache = make_cache(source, clock, wall_clock, serve_mode="auto", memory_budget_bytes=64 * MB)

    assert cache.get().snapshot["mode"] == "memory"
    assert source.block_reads == []


# --- what a lookup reads ---------------------------------------------------------------------


def test_blocks_hold_at_most_4096_rows_and_128_kib(source: InMemorySource, table: pa.Table) -> None:
    version = source.publish(table)
    index = parse_block_index(source.blobs[version][0], source.block_blobs[version][0])

    assert list(index.rows) == [ROWS_PER_BLOCK] * 3 + [100]
    assert max(index.lengths) <= MAX_BLOCK_BYTES


def test_load_reads_the_first_block_only(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    version = source.publish(table)

    tiered_cache(source, clock, wall_clock).get()

    assert source.block_reads == [(version, 0)]


def test_cold_key_costs_one_ranged_read_and_a_hot_key_none(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    source.publish(table)
    cache = tiered_cache(source, clock, wall_clock)
    index = cache.get().index
    before = len(source.block_reads)

    cold = index.get(key_in_block(2))
    after_cold = reads_since(source, before)
    hot = index.get(key_in_block(2, offset=11))

    assert (cold["customer_id"], hot["customer_id"]) == (key_in_block(2), key_in_block(2, 11))
    assert after_cold == [2]
    assert reads_since(source, before) == [2]


def test_batch_of_100_reads_each_distinct_block_at_most_once(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    source.publish(table)
    index = tiered_cache(source, clock, wall_clock).get().index
    before = len(source.block_reads)
    keys = [key_in_block(n % 4, offset=n) for n in range(100)]

    items, missing = index.get_many(keys)

    assert ([item["customer_id"] for item in items], missing) == (keys, [])
    assert sorted(reads_since(source, before)) == [1, 2, 3]  # block 0 was read at load


def test_misses_between_and_outside_blocks_cost_no_read(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    source.publish(table)
    index = tiered_cache(source, clock, wall_clock).get().index
    last_of_block_1 = IDS[2 * ROWS_PER_BLOCK - 1]
    between = f"C{int(last_of_block_1[1:]) + 1:09d}"  # odd: after block 1, before block 2
    before = len(source.block_reads)

    found = [index.get(key) for key in (between, "A", "C000000000", "C999999999", "Z")]
    batch = index.get_many([between, "A", "Z"])

    assert found == [None] * 5
    assert batch == ([], [between, "A", "Z"])
    assert reads_since(source, before) == []


def test_miss_inside_a_block_reads_that_block_only(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    source.publish(table)
    index = tiered_cache(source, clock, wall_clock).get().index
    inside = f"C{int(key_in_block(3)[1:]) + 1:09d}"
    before = len(source.block_reads)

    assert index.get(inside) is None
    assert reads_since(source, before) == [3]


def test_lru_stays_within_its_bytes_and_evicts_the_least_recent(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    source.publish(table)
    probe = tiered_cache(source, clock, wall_clock).get().index
    block_bytes = probe.nbytes - probe.blocks.nbytes  # block 0, cached at load
    budget = int(block_bytes * 1.5)  # one full block fits, not two
    index = tiered_cache(source, clock, wall_clock, tiered_cache_bytes=budget).get().index
    before = len(source.block_reads)

    for number in (1, 2, 1, 1):
        index.get(key_in_block(number))

    assert reads_since(source, before) == [1, 2, 1]  # 1 was evicted by 2; then a hit
    assert index.cached_blocks == 1
    assert index.nbytes - index.blocks.nbytes <= budget


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_requests_for_one_block_share_one_read(
    held: HeldSource, table: pa.Table
) -> None:
    version = held.publish(table)
    manifest = held.blobs[version][0]
    blocks = held.read_block_index(manifest)
    held.hold = True
    with ThreadPoolExecutor(4) as pool:
        index = TieredIndex(
            manifest,
            blocks,
            lambda number: held.read_block(manifest, blocks, number),
            pool=pool,
            cache_bytes=64 * MB,
            wait_seconds=SHORT_WAIT_SECONDS,
        )
        # Both requests find the read held: each answers 503 at its wait, the second having
        # joined the first one's read instead of starting its own.
        for key in (key_in_block(2), key_in_block(2, offset=20)):
            with pytest.raises(RowsUnavailableError):
                index.get(key)
        with pytest.raises(RowsUnavailableError):
            index.get_many([key_in_block(2, offset=30), key_in_block(2, offset=40)])
        held.release.set()
    # The pool has shut down: every read it was given has finished.

    assert held.block_reads == [(version, 2)]
    assert index.get(key_in_block(2, offset=20))["customer_id"] == key_in_block(2, offset=20)
    assert held.block_reads == [(version, 2)]


# --- a block that cannot be read: 503 for that request only ---------------------------------


def _assert_rows_unavailable(response: dict[str, Any], snapshot: dict[str, Any]) -> None:
    assert response["statusCode"] == 503
    assert response["headers"]["Retry-After"] == "1"
    assert response["headers"]["Content-Type"] == "application/json"
    body = json.loads(response["body"])
    assert body["error"]["code"] == "rows_unavailable"
    assert body["snapshot"] == snapshot


@pytest.mark.parametrize(
    "error",
    [
        StoreError("cannot read memory://snapshots/v/blocks.bin: SlowDown"),
        ObjectNotFoundError("memory://snapshots/v/blocks.bin does not exist (AccessDenied)"),
        ObjectNotFoundError("memory://snapshots/v/blocks.bin does not exist (NoSuchKey)"),
        TimeoutError("read timed out"),
    ],
    ids=["store error", "403", "404", "timeout"],
)
def test_failed_block_read_is_a_503_for_that_request_only(
    held: HeldSource,
    clock: FakeClock,
    wall_clock: FakeClock,
    table: pa.Table,
    error: Exception,
) -> None:
    version = held.publish(table)
    cache = tiered_cache(held, clock, wall_clock)
    snapshot = cache.get().snapshot
    held.error = error

    failed = http_get(cache, key_in_block(3))
    held.error = None
    served = http_get(cache, key_in_block(3))

    _assert_rows_unavailable(failed, snapshot)
    assert served["statusCode"] == 200
    assert json.loads(served["body"])["snapshot"] == snapshot
    assert cache.version == version


def test_block_read_past_the_wait_is_a_503_and_the_next_request_is_served(
    held: HeldSource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    version = held.publish(table)
    cache = tiered_cache(held, clock, wall_clock, refresh_wait_seconds=SHORT_WAIT_SECONDS)
    snapshot = cache.get().snapshot
    held.hold = True
    before = len(held.block_reads)

    hung = http_get(cache, key_in_block(1))
    still_held = not held.release.is_set() and not held.returned.is_set()
    held.hold = False
    held.release.set()
    assert held.returned.wait(HELD_SECONDS)
    served = http_get(cache, key_in_block(1))

    # Answered while its read was still held: the request never waited for the read.
    assert still_held
    _assert_rows_unavailable(hung, snapshot)
    body = json.loads(served["body"])
    assert (served["statusCode"], body["snapshot"]["version"]) == (200, version)
    assert reads_since(held, before) == [1]  # the read went on, and its block was kept


def test_failed_batch_is_a_503_with_the_snapshot_and_the_next_batch_is_served(
    held: HeldSource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    held.publish(table)
    cache = tiered_cache(held, clock, wall_clock)
    cache.get()
    call = function_over(cache)
    keys = [key_in_block(1), key_in_block(3), "C999999999"]
    # One block fails: its failure ends the request. (Had both failed, the slower failing
    # read could still be in flight for the next batch to join, and fail it too.)
    held.error = StoreError("cannot read memory://snapshots/v/blocks.bin: InternalError")
    held.failing = {3}

    failed = call({"customer_ids": keys})
    held.error = None
    served = call({"customer_ids": keys})

    assert failed["error"]["code"] == "rows_unavailable"
    assert failed["snapshot"] == served["snapshot"]
    assert [item["customer_id"] for item in served["items"]] == keys[:2]
    assert served["missing"] == ["C999999999"]


def test_corrupt_block_is_a_503_logged_as_bad_without_the_key_and_never_cached(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    table: pa.Table,
    caplog: pytest.LogCaptureFixture,
) -> None:
    version = source.publish(table)
    source.corrupt_block(version, 3)
    cache = tiered_cache(source, clock, wall_clock)
    snapshot = cache.get().snapshot
    key = key_in_block(3)
    before = len(source.block_reads)

    with caplog.at_level(logging.INFO):
        answers = [http_get(cache, key) for _ in range(2)]
    served = http_get(cache, key_in_block(2))

    for answer in answers:
        _assert_rows_unavailable(answer, snapshot)
    assert reads_since(source, before) == [3, 3, 2]  # read again each time: never cached
    assert served["statusCode"] == 200
    bad = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in bad] == [
        f"block 3 of snapshot {version} is bad: snapshot {version}: block 3: sha256 mismatch"
    ] * 2
    logged = " ".join(f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in caplog.records)
    assert key not in logged


# --- a version whose tiered layout is bad: rejected at load ---------------------------------


def test_corrupt_block_index_is_rejected_and_the_last_good_serves(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, small_table: pa.Table
) -> None:
    good = source.publish(small_table)
    cache = tiered_cache(source, clock, wall_clock)
    cache.get()
    source.corrupt(source.publish(customers(["C000000009"])))
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert (serving.snapshot["version"], serving.snapshot["mode"]) == (good, "tiered")
    assert serving.index.get("C000000001")["customer_id"] == "C000000001"


def test_missing_block_index_keeps_the_last_good_and_is_retried_after_the_ttl(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, small_table: pa.Table
) -> None:
    good = source.publish(small_table)
    cache = tiered_cache(source, clock, wall_clock)
    cache.get()
    new = source.publish(customers(["C000000009"]))
    layout = source.block_blobs.pop(new)
    clock.advance(TTL_SECONDS + 1)
    assert cache.get().snapshot["version"] == good
    source.block_blobs[new] = layout
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == new


def test_cold_reader_falls_back_past_a_corrupt_and_a_missing_block_index(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, small_table: pa.Table
) -> None:
    oldest = source.publish(small_table)
    gone = source.publish(customers(["C000000001", "C000000005"]))
    del source.block_blobs[gone]
    source.corrupt(source.publish(customers(["C000000009"])))

    serving = tiered_cache(source, clock, wall_clock).get()

    assert (serving.snapshot["version"], serving.snapshot["degraded"]) == (oldest, True)
    assert serving.snapshot["mode"] == "tiered"


def test_blocks_that_disagree_with_the_manifest_reject_the_version_at_load(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    small_table: pa.Table,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A manifest naming other columns than its blocks hold (a broken builder): found when the
    # first block is read at load, so the version is rejected, as memory mode rejects its
    # data, rather than loaded to fail every lookup.
    good = source.publish(small_table)
    cache = tiered_cache(source, clock, wall_clock)
    cache.get()
    bad = source.publish(customers(["C000000009"]))
    manifest, body = source.blobs[bad]
    source.blobs[bad] = (replace(manifest, columns=manifest.columns[:-1]), body)
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert serving.snapshot["version"] == good
    assert serving.index.get("C000000001")["customer_id"] == "C000000001"
    assert any(
        f"snapshot {bad}: block 0: columns differ from the manifest" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )


# --- the pointer check and the swap, unchanged ----------------------------------------------


def test_refresh_swaps_to_the_new_version_and_reads_its_blocks(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    old = source.publish(table)
    cache = tiered_cache(source, clock, wall_clock)
    cache.get().index.get(key_in_block(2))
    new = source.publish(customers([*IDS[:100], "C999999998"]))
    clock.advance(TTL_SECONDS - 1)
    assert cache.get().snapshot["version"] == old  # within the TTL: no pointer read
    clock.advance(2)

    serving = cache.get()

    assert (serving.snapshot["version"], serving.snapshot["mode"]) == (new, "tiered")
    assert serving.index.get("C999999998")["customer_id"] == "C999999998"
    assert serving.index.get(key_in_block(2)) is None
    assert source.block_reads[-1] == (new, 0)
    assert len(source.pointer_reads) == 2


# --- metrics ---------------------------------------------------------------------------------


def test_block_reads_hits_bytes_and_failures_are_counted(
    held: HeldSource, clock: FakeClock, wall_clock: FakeClock, table: pa.Table
) -> None:
    version = held.publish(table)
    documents: list[str] = []
    recorder = MetricsRecorder(
        namespace="Test", service="customer-lookup", enabled=True, emit=documents.append
    )
    cache = tiered_cache(held, clock, wall_clock, metrics=recorder)
    call = LookupFunction(Service(Settings("file:///unused"), cache, recorder))
    index_body = held.block_blobs[version][0]
    lengths = parse_block_index(held.blobs[version][0], index_body).lengths

    def counts(payload: dict[str, Any]) -> dict[str, float]:
        call(payload, LocalContext())
        doc = json.loads(documents[-1])
        names = [m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
        return {name: doc[name] for name in names if name.startswith("Block")}

    cold = counts({"customer_id": key_in_block(2)})  # block 0 is read at load, in this request
    hot = counts({"customer_id": key_in_block(2, offset=11)})
    held.error = StoreError("cannot read memory://snapshots/v/blocks.bin: SlowDown")
    failed = counts({"customer_id": key_in_block(3)})

    assert cold == {"BlockReads": [2], "BlockReadBytes": [lengths[0] + lengths[2]]}
    assert hot == {"BlockCacheHits": [1]}
    assert failed == {"BlockReadFailures": [1]}


# --- the same answers as memory mode ---------------------------------------------------------


@pytest.fixture(scope="module")
def both_modes(table: pa.Table) -> tuple[Any, Any]:
    """One multi-block snapshot served from memory and tiered, each by its own cache."""
    source = InMemorySource()
    source.publish(table)
    wall = FakeClock(T0.timestamp())
    memory, tiered = (
        make_cache(source, FakeClock(), wall, serve_mode=mode, refresh_wait_seconds=WAIT_SECONDS)
        .get()
        .index
        for mode in ("memory", "tiered")
    )
    return memory, tiered


# Present keys at block edges and inside, misses inside and between blocks, before and after.
EDGES = [IDS[0], IDS[-1], *(IDS[n * ROWS_PER_BLOCK + d] for n in range(1, 4) for d in (-1, 0))]
MISSES = ["A", "C000000000", "C000000001", "C999999999", "Z", *(f"{k}0" for k in EDGES)]
KEYS = st.one_of(st.sampled_from(IDS), st.sampled_from(EDGES + MISSES))


@given(keys=st.lists(KEYS, min_size=1, max_size=100))  # routes refuse an empty batch
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_tiered_answers_every_batch_exactly_as_memory_does(
    both_modes: tuple[Any, Any], keys: list[str]
) -> None:
    memory, tiered = both_modes

    assert tiered.get_many(keys) == memory.get_many(keys)
    assert [tiered.get(key) for key in keys[:5]] == [memory.get(key) for key in keys[:5]]
