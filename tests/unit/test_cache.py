"""SnapshotCache over an in-memory source: loading, the TTL gate, swaps, failures and staleness."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from loaders.errors import SnapshotInvalidError, StoreError
from service.errors import SnapshotUnavailableError
from tests.conftest import customers
from tests.unit.conftest import MAX_STALENESS_SECONDS, TTL_SECONDS

if TYPE_CHECKING:
    from service.cache import SnapshotCache
    from tests.conftest import FakeClock
    from tests.unit.conftest import InMemorySource

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

KEY = "C000000001"
NEW_KEY = "C000000009"


def logged(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.fixture
def loaded(cache: SnapshotCache, published: str) -> str:
    """``cache`` after its first get, serving ``published``."""
    cache.get()
    return published


def test_version_is_none_before_the_first_get(cache: SnapshotCache, published: str) -> None:
    assert cache.version is None


def test_first_get_loads_the_announced_snapshot(
    cache: SnapshotCache, source: InMemorySource, published: str
) -> None:
    serving = cache.get()

    assert serving.index.get(KEY)["customer_id"] == KEY
    assert (cache.version, source.reads) == (published, [published])


def test_first_get_reads_the_pointer_unconditionally(
    cache: SnapshotCache, source: InMemorySource, published: str
) -> None:
    cache.get()

    assert source.pointer_reads == [None]


def test_status_block_describes_the_served_snapshot(
    cache: SnapshotCache, wall_clock: FakeClock, published: str, serve_mode: str
) -> None:
    wall_clock.advance(90.7)

    assert cache.get().snapshot == {
        "version": published,
        "created_at": "2026-11-23T12:00:00Z",
        "age_seconds": 90,
        "stale": False,
        "checked_at": "2026-11-23T12:01:30Z",
        "mode": serve_mode,
    }


def test_get_within_ttl_reads_no_pointer(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    clock.advance(TTL_SECONDS - 1)

    cache.get()
    cache.get()

    assert len(source.pointer_reads) == 1


def test_new_version_is_not_seen_within_ttl(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.publish(customers([NEW_KEY]))
    clock.advance(TTL_SECONDS - 1)

    assert (cache.get().snapshot["version"], cache.get().index.get(NEW_KEY)) == (loaded, None)


def test_get_after_ttl_rechecks_the_pointer_with_its_etag(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    etag = source.pointer.etag
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert source.pointer_reads == [None, etag]


def test_unchanged_pointer_downloads_nothing(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert (source.reads, serving.snapshot["version"]) == ([loaded], loaded)


def test_pointer_rewritten_to_the_same_version_downloads_nothing(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.announce(loaded)
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert source.reads == [loaded]


def test_pointer_rewritten_to_the_same_version_is_remembered_by_its_new_etag(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    new_etag = source.announce(loaded).etag
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert source.pointer_reads[-1] == new_etag


def test_new_version_is_swapped_in_after_ttl(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    new = source.publish(customers([NEW_KEY]))
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert (cache.version, serving.snapshot["version"]) == (new, new)
    assert (serving.index.get(NEW_KEY) is not None, serving.index.get(KEY)) == (True, None)


def test_swap_is_logged(
    cache: SnapshotCache, caplog: pytest.LogCaptureFixture, published: str, serve_mode: str
) -> None:
    caplog.set_level(logging.INFO)

    cache.get()

    assert logged(caplog, logging.INFO) == [f"serving snapshot {published} (3 rows, {serve_mode})"]


def test_failed_pointer_read_keeps_serving_the_last_snapshot(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.pointer_error = StoreError("s3 timed out")
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert (serving.snapshot["version"], serving.index.get(KEY)["customer_id"]) == (loaded, KEY)


def test_failed_pointer_read_is_logged_as_a_warning(
    cache: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    loaded: str,
) -> None:
    source.pointer_error = StoreError("s3 timed out")
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert logged(caplog, logging.WARNING) == [f"refresh failed; serving {loaded}: s3 timed out"]


def test_failed_download_keeps_serving_the_last_snapshot(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.publish(customers([NEW_KEY]))
    source.read_error = StoreError("connection reset")
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == loaded


def test_failed_refresh_waits_a_ttl_before_trying_again(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.pointer_error = StoreError("s3 timed out")
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    clock.advance(TTL_SECONDS - 1)

    cache.get()

    assert len(source.pointer_reads) == 2


def test_store_error_version_is_retried_after_ttl(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    new = source.publish(customers([NEW_KEY]))
    source.read_error = StoreError("connection reset")
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    source.read_error = None
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == new


def test_checksum_mismatch_keeps_serving_the_last_snapshot(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.corrupt(source.publish(customers([NEW_KEY])))
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert (serving.snapshot["version"], serving.index.get(NEW_KEY)) == (loaded, None)


def test_checksum_mismatch_is_logged_as_an_error(
    cache: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    loaded: str,
    serve_mode: str,
) -> None:
    bad = source.publish(customers([NEW_KEY]))
    source.corrupt(bad)
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    (message,) = logged(caplog, logging.ERROR)
    what = "sha256" if serve_mode == "memory" else "block index: sha256"  # what each mode reads
    assert message.startswith(f"snapshot rejected; serving {loaded}: snapshot {bad}: {what}")


# Memory-only: data.parquet is what memory mode reads; a tiered reader never reads it (its
# counterpart, an unreadable blocks.arrow, is in test_tiered_cache.py).
@pytest.mark.parametrize("serve_mode", ["memory"], indirect=True)
def test_unreadable_parquet_keeps_serving_the_last_snapshot(
    cache: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    loaded: str,
) -> None:
    bad = source.put(customers([NEW_KEY]))
    source.replace_data(bad, b"PAR1 this is not parquet PAR1")
    source.announce(bad)
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == loaded
    assert "unreadable Parquet" in logged(caplog, logging.ERROR)[0]


def test_snapshot_with_unsorted_keys_is_rejected(
    cache: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    loaded: str,
    serve_mode: str,
) -> None:
    unsorted = pa.table({"customer_id": ["C000000009", "C000000005"]})
    source.publish(unsorted)
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == loaded
    # Memory mode checks the whole key column; tiered mode, the block index's key ranges.
    why = "unique and sorted" if serve_mode == "memory" else "not sorted and disjoint"
    assert why in logged(caplog, logging.ERROR)[0]


def test_rejected_version_is_not_downloaded_again_while_the_pointer_is_unchanged(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    bad = source.publish(customers([NEW_KEY]))
    source.corrupt(bad)
    for _ in range(3):
        clock.advance(TTL_SECONDS + 1)
        cache.get()

    assert source.reads == [loaded, bad]


def test_rejected_version_is_rechecked_with_the_rejected_pointers_etag(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.corrupt(source.publish(customers([NEW_KEY])))
    rejected_etag = source.pointer.etag
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert source.pointer_reads[-1] == rejected_etag


def test_version_after_a_rejected_one_is_loaded(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.corrupt(source.publish(customers([NEW_KEY])))
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    good = source.publish(customers([NEW_KEY]))
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == good


def test_bug_in_a_refresh_is_logged_with_its_stack_and_keeps_serving(
    cache: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    loaded: str,
) -> None:
    source.publish(customers([NEW_KEY]))
    source.read_error = RuntimeError("a bug, not a loader failure")
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert (serving.snapshot["version"], serving.index.get(KEY)["customer_id"]) == (loaded, KEY)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])


def test_cache_refreshes_again_after_a_bug(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    new = source.publish(customers([NEW_KEY]))
    source.read_error = RuntimeError("a bug, not a loader failure")
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    source.read_error = None
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == new


def test_bad_pointer_keeps_serving_the_last_snapshot(
    cache: SnapshotCache, source: InMemorySource, clock: FakeClock, loaded: str
) -> None:
    source.pointer_error = SnapshotInvalidError("bad pointer memory://CURRENT")
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == loaded


def test_snapshot_is_not_stale_up_to_max_staleness(
    cache: SnapshotCache, wall_clock: FakeClock, loaded: str
) -> None:
    wall_clock.advance(MAX_STALENESS_SECONDS)

    assert cache.get().snapshot["stale"] is False


def test_snapshot_turns_stale_past_max_staleness_and_is_still_served(
    cache: SnapshotCache, source: InMemorySource, wall_clock: FakeClock, loaded: str
) -> None:
    source.pointer_error = StoreError("s3 is down")
    wall_clock.advance(MAX_STALENESS_SECONDS + 1)

    serving = cache.get()

    assert (serving.snapshot["stale"], serving.snapshot["age_seconds"]) == (
        True,
        int(MAX_STALENESS_SECONDS) + 1,
    )
    assert serving.index.get(KEY)["customer_id"] == KEY


def test_age_never_goes_negative(cache: SnapshotCache, wall_clock: FakeClock, loaded: str) -> None:
    wall_clock.advance(-60)

    assert cache.get().snapshot["age_seconds"] == 0


def test_nothing_announced_raises_snapshot_unavailable(cache: SnapshotCache) -> None:
    with pytest.raises(SnapshotUnavailableError) as raised:
        cache.get()

    assert raised.value.status == HTTPStatus.SERVICE_UNAVAILABLE


def test_failed_first_load_raises_snapshot_unavailable(
    cache: SnapshotCache, source: InMemorySource, published: str
) -> None:
    source.read_error = StoreError("access denied")

    with pytest.raises(SnapshotUnavailableError):
        cache.get()


def test_serving_without_a_snapshot_raises_snapshot_unavailable(
    cache: SnapshotCache, published: str
) -> None:
    with pytest.raises(SnapshotUnavailableError):
        cache.serving()


def test_without_a_snapshot_each_get_tries_again(
    cache: SnapshotCache, source: InMemorySource, small_table: pa.Table
) -> None:
    with pytest.raises(SnapshotUnavailableError):
        cache.get()
    version = source.publish(small_table)

    assert cache.get().snapshot["version"] == version


def test_snapshot_keyed_by_another_column_is_rejected(
    cache: SnapshotCache,
    source: InMemorySource,
    caplog: pytest.LogCaptureFixture,
    small_table: pa.Table,
) -> None:
    source.publish(small_table, key_column="account_id")

    with pytest.raises(SnapshotUnavailableError):
        cache.get()
    assert "keyed by 'account_id', not 'customer_id'" in logged(caplog, logging.ERROR)[0]


def test_refresh_checks_the_pointer_within_ttl(
    cache: SnapshotCache, source: InMemorySource, loaded: str
) -> None:
    new = source.publish(customers([NEW_KEY]))

    assert (cache.refresh(), cache.version) == (True, new)


def test_refresh_of_an_unchanged_pointer_returns_false(
    cache: SnapshotCache, source: InMemorySource, loaded: str
) -> None:
    assert (cache.refresh(), len(source.pointer_reads), source.reads) == (False, 2, [loaded])


def test_refresh_loads_the_first_snapshot(cache: SnapshotCache, published: str) -> None:
    assert (cache.refresh(), cache.version) == (True, published)


def test_serving_taken_before_a_swap_answers_from_its_own_version(
    cache: SnapshotCache, source: InMemorySource, loaded: str
) -> None:
    before = cache.get()
    new = source.publish(customers(["C000000001", NEW_KEY], segment="enterprise"))
    cache.refresh()
    after = cache.get()

    assert (before.snapshot["version"], before.index.get(KEY)["segment"]) == (loaded, "smb")
    assert before.index.get(NEW_KEY) is None
    assert (after.snapshot["version"], after.index.get(KEY)["segment"]) == (new, "enterprise")
