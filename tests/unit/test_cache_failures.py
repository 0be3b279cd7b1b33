"""SnapshotCache under failure: the three classes, deadlines, cold fallback, future and oversized
versions, and memory handed back after a swap. In-memory source, fake clocks, no sleeping:
slow sources block on an Event the test releases."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from loaders.errors import SnapshotInvalidError, StoreError
from loaders.manifest import MAX_CLOCK_SKEW_SECONDS
from service.cache import SnapshotCache
from service.errors import SnapshotUnavailableError
from tests.conftest import T0, customers
from tests.unit.conftest import TTL_SECONDS, InMemorySource, make_cache

if TYPE_CHECKING:
    from loaders.blocks import BlockIndex
    from loaders.manifest import Manifest, Pointer
    from loaders.snapshot import Snapshot
    from tests.conftest import FakeClock

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

KEY = "C000000001"
NEW_KEY = "C000000009"
SHORT_WAIT_SECONDS = 0.05


class SlowSource(InMemorySource):
    """A source whose reads block until the test sets ``release`` (a hung S3 endpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.blocking = False

    def _maybe_block(self) -> None:
        if self.blocking:
            self.release.wait(10)

    def read_pointer(self, *, if_none_match: str | None = None) -> Pointer | None:
        self._maybe_block()
        return super().read_pointer(if_none_match=if_none_match)

    def read_data(self, manifest: Manifest) -> Snapshot:
        self._maybe_block()
        return super().read_data(manifest)

    def read_block_index(self, manifest: Manifest) -> BlockIndex:  # a tiered load's read
        self._maybe_block()
        return super().read_block_index(manifest)


@pytest.fixture
def slow() -> SlowSource:
    return SlowSource()


# --- the three failure classes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "downloads_again"),
    [
        pytest.param(SnapshotInvalidError("sha256 mismatch"), False, id="permanent"),
        pytest.param(StoreError("SlowDown"), True, id="transient-store"),
        pytest.param(TimeoutError("read timed out"), True, id="transient-timeout"),
        pytest.param(MemoryError(), True, id="transient-memory"),
        pytest.param(KeyError("a bug"), True, id="bug"),
    ],
)
def test_each_failure_class_keeps_the_last_snapshot_and_decides_the_next_download(
    cache: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    published: str,
    error: Exception,
    downloads_again: bool,
) -> None:
    cache.get()
    new = source.publish(customers([NEW_KEY]))
    source.read_error = error
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert (serving.snapshot["version"], serving.index.get(KEY)["customer_id"]) == (published, KEY)
    source.read_error = None
    clock.advance(TTL_SECONDS + 1)
    expected = new if downloads_again else published
    assert (cache.get().snapshot["version"], source.reads.count(new)) == (
        expected,
        2 if downloads_again else 1,
    )


def test_unparseable_pointer_is_remembered_by_its_etag(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, published: str
) -> None:
    cache.get()
    source.pointer_error = SnapshotInvalidError("bad pointer: not JSON", etag='"bad-pointer"')
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    source.pointer_error = None
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert source.pointer_reads[-1] == '"bad-pointer"'


def test_transient_failure_on_the_first_load_is_tried_again_by_the_next_request(
    cache: SnapshotCache, source: InMemorySource, published: str
) -> None:
    source.read_error = StoreError("connection reset")
    with pytest.raises(SnapshotUnavailableError):
        cache.get()
    source.read_error = None

    assert cache.get().snapshot["version"] == published


# --- deadlines -----------------------------------------------------------------------------


def test_hung_pointer_check_holds_a_warm_request_only_up_to_the_refresh_wait(
    slow: SlowSource, clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    old = slow.publish(small_table)
    cache = make_cache(slow, clock, wall_clock, refresh_wait_seconds=SHORT_WAIT_SECONDS)
    cache.get()
    new = slow.publish(customers([NEW_KEY]))
    slow.blocking = True
    clock.advance(TTL_SECONDS + 1)

    started = time.monotonic()
    serving = cache.get()
    elapsed = time.monotonic() - started

    assert serving.snapshot["version"] == old
    assert elapsed < 1.0
    slow.release.set()
    assert cache.wait(5)
    assert cache.get().snapshot["version"] == new


def test_requests_during_a_hung_check_do_not_wait_at_all(
    slow: SlowSource, clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    old = slow.publish(small_table)
    cache = make_cache(slow, clock, wall_clock, refresh_wait_seconds=SHORT_WAIT_SECONDS)
    cache.get()
    slow.blocking = True
    clock.advance(TTL_SECONDS + 1)
    cache.get()  # starts the check, waits its short deadline

    # A second request while the check hangs would wait 10 s if it joined the check.
    started = time.monotonic()
    version = cache.get().snapshot["version"]

    assert (version, time.monotonic() - started < 1.0) == (old, True)
    slow.release.set()
    cache.wait(5)


def test_hung_first_load_answers_503_with_retry_after_at_the_load_wait(
    slow: SlowSource, clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    version = slow.publish(small_table)
    slow.blocking = True
    cache = make_cache(
        slow, clock, wall_clock, load_wait_seconds=SHORT_WAIT_SECONDS, retry_after_seconds=7
    )

    started = time.monotonic()
    with pytest.raises(SnapshotUnavailableError) as raised:
        cache.get()

    assert (time.monotonic() - started < 1.0, raised.value.headers) == (True, {"Retry-After": "7"})
    slow.release.set()
    assert cache.wait(5)
    assert cache.get().snapshot["version"] == version


def test_refresh_returns_at_the_deadline_while_the_check_goes_on(
    slow: SlowSource, clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    slow.publish(small_table)
    cache = make_cache(slow, clock, wall_clock, refresh_wait_seconds=SHORT_WAIT_SECONDS)
    cache.get()
    new = slow.publish(customers([NEW_KEY]))
    slow.blocking = True

    assert cache.refresh() is False
    slow.release.set()
    assert cache.wait(5)
    assert cache.version == new


# --- cold fallback -------------------------------------------------------------------------


def test_cold_reader_falls_back_to_the_newest_previous_version_that_loads(
    cache: SnapshotCache, source: InMemorySource, small_table: Any
) -> None:
    oldest = source.publish(small_table)
    previous = source.publish(customers([KEY, NEW_KEY]))
    source.corrupt(previous)
    current = source.publish(customers([NEW_KEY]))
    source.corrupt(current)

    serving = cache.get()

    assert serving.snapshot["version"] == oldest
    assert serving.snapshot["degraded"] is True
    assert source.reads == [current, previous, oldest]


def test_degraded_reader_follows_the_pointer_when_it_moves(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, small_table: Any
) -> None:
    source.publish(small_table)
    source.corrupt(source.publish(customers([NEW_KEY])))
    cache.get()
    fixed = source.publish(customers([KEY, NEW_KEY]))
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert serving.snapshot["version"] == fixed
    assert "degraded" not in serving.snapshot


def test_degraded_reader_does_not_download_the_rejected_version_again(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, small_table: Any
) -> None:
    source.publish(small_table)
    bad = source.publish(customers([NEW_KEY]))
    source.corrupt(bad)
    cache.get()
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert source.reads.count(bad) == 1


def test_warm_reader_that_rejects_a_version_keeps_its_own_not_a_previous_one(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, published: str
) -> None:
    cache.get()
    source.corrupt(source.publish(customers([NEW_KEY])))
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert serving.snapshot["version"] == published and "degraded" not in serving.snapshot


def test_rollback_to_an_older_version_is_followed(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, published: str
) -> None:
    source.publish(customers([NEW_KEY]))
    cache.get()
    source.announce(published)
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == published


# --- versions from the future, and memory ----------------------------------------------------


def test_version_created_in_the_future_is_rejected_before_download(
    cache: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    published: str,
) -> None:
    cache.get()
    future = T0.replace(hour=T0.hour + 1)
    source.publish(customers([NEW_KEY]), created_at=future)
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == published
    assert any("in the future" in r.getMessage() for r in caplog.records)


def test_version_within_the_allowed_skew_is_served(
    cache: SnapshotCache, source: InMemorySource, wall_clock: FakeClock, small_table: Any
) -> None:
    wall_clock.advance(-(MAX_CLOCK_SKEW_SECONDS - 60))
    version = source.publish(small_table)

    serving = cache.get()

    assert (serving.snapshot["version"], serving.snapshot["age_seconds"]) == (version, 0)


def _with_table_bytes(source: InMemorySource, version: str, table_bytes: int) -> None:
    manifest, body = source.blobs[version]
    source.blobs[version] = (replace(manifest, table_bytes=table_bytes), body)


# Memory-only: a tiered reader holds the block index and a bounded LRU, not the table, so
# there is nothing to refuse (test_tiered_cache.py: auto serves such a version tiered).
@pytest.mark.parametrize("serve_mode", ["memory"], indirect=True)
def test_version_that_cannot_fit_beside_the_current_one_is_refused_with_both_figures(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    small_table: Any,
) -> None:
    caplog.set_level(logging.INFO)
    cache = make_cache(source, clock, wall_clock, memory_budget_bytes=100 << 20)
    old = source.publish(small_table)
    _with_table_bytes(source, old, 40 << 20)
    cache.get()
    new = source.publish(customers([NEW_KEY]))
    _with_table_bytes(source, new, 50 << 20)
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == old
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "needs about 60 MB beside the 48 MB held; the memory budget is 100 MB" in message


def test_version_that_fits_the_budget_is_loaded(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    cache = make_cache(source, clock, wall_clock, memory_budget_bytes=100 << 20)
    version = source.publish(small_table)
    _with_table_bytes(source, version, 10 << 20)

    assert cache.get().snapshot["version"] == version


def test_memory_is_handed_back_after_each_swap(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    releases: list[str | None] = []
    cache = make_cache(source, clock, wall_clock, release_memory=lambda: releases.append(None))
    source.publish(small_table)
    cache.get()
    source.publish(customers([NEW_KEY]))
    clock.advance(TTL_SECONDS + 1)
    cache.get()

    assert len(releases) == 2


def test_cache_logs_through_its_module_logger_by_default(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    small_table: Any,
) -> None:
    caplog.set_level(logging.INFO, logger="service.cache")
    cache = make_cache(source, clock, wall_clock)
    source.publish(small_table)

    cache.get()

    assert [r.name for r in caplog.records] == ["service.cache"]
