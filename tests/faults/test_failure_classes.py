"""The three failure classes, end to end: permanent is remembered by the pointer's ETag,
transient is retried after the TTL, a bug is logged with its stack; the last good snapshot
keeps serving in every class, within the refresh wait.

Each test loads a good version, announces a faulty one (or breaks CURRENT, or the wire), lets
the TTL lapse on the cache's FakeClock, and counts what the next checks fetch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from tests.faults.conftest import (
    CACHE_LOGGER,
    FAST_COLD_LOAD_WAIT_SECONDS,
    FAST_REFRESH_WAIT_SECONDS,
    SLACK_SECONDS,
    TTL_SECONDS,
    V2_IDS,
    Answer,
    pointer_etag,
    write_pointer,
)
from tests.faults.hostile import (
    BAD_POINTERS,
    BAD_VERSIONS,
    BUG,
    NO_ROWS,
    TRANSIENT_FAULTS,
    BadVersion,
    StorageFault,
    UnexpectedError,
    bad_in_each_mode,
    lift,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from loaders.store import S3Store
    from tests.faults.conftest import FaultProxy, Lookup, Versions


# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")


def assert_served_within_refresh_wait(answer: Answer, version: str) -> None:
    assert answer.status == 200
    assert answer.version == version
    assert answer.body["item"]["customer_id"] == "C000000001"
    assert answer.seconds < FAST_REFRESH_WAIT_SECONDS + SLACK_SECONDS


def loaded(make_lookup: Callable[..., Lookup], versions: Versions) -> tuple[Lookup, str]:
    """A lookup serving a good first version."""
    lookup = make_lookup()
    v1 = versions.publish()
    assert lookup.ask().version == v1
    return lookup, v1


# --- permanent: the snapshot itself is bad ---------------------------------------------------


@bad_in_each_mode(BAD_VERSIONS)
def test_rejected_version_keeps_the_last_good_and_is_not_fetched_again(
    make_lookup: Callable[..., Lookup],
    versions: Versions,
    publisher: S3Store,
    bad: BadVersion,
) -> None:
    """A bad version is rejected, the last good one serves, and nothing of it is fetched again."""
    lookup, v1 = loaded(make_lookup, versions)
    rejected = bad.plant(versions)
    rejected_pointer = pointer_etag(publisher)
    lookup.lapse_ttl()

    assert_served_within_refresh_wait(lookup.ask(), v1)
    lookup.settle()
    fetched = lookup.calls.count_under(f"snapshots/{rejected}/")
    lookup.lapse_ttl()
    answer = lookup.ask()
    lookup.settle()

    assert_served_within_refresh_wait(answer, v1)
    assert lookup.calls.count_under(f"snapshots/{rejected}/") == fetched
    assert lookup.calls.conditions("CURRENT")[-1] == rejected_pointer


@pytest.mark.parametrize("serve_mode", ["tiered"], indirect=True)
@pytest.mark.parametrize("bad", [b for b in BAD_VERSIONS if b.memory_only], ids=str)
def test_a_version_only_memory_cannot_hold_is_served_by_a_tiered_reader(
    make_lookup: Callable[..., Lookup], versions: Versions, bad: BadVersion
) -> None:
    """What memory mode must reject (too big for its budget) a tiered reader serves."""
    lookup, _ = loaded(make_lookup, versions)
    served = bad.plant(versions)
    lookup.lapse_ttl()

    answer = lookup.ask()

    assert_served_within_refresh_wait(answer, served)
    assert answer.body["snapshot"]["mode"] == "tiered"
    assert "degraded" not in answer.body["snapshot"]


@pytest.mark.parametrize("body", BAD_POINTERS.values(), ids=BAD_POINTERS.keys())
def test_rejected_pointer_keeps_the_last_good_and_is_not_downloaded_again(
    make_lookup: Callable[..., Lookup], versions: Versions, publisher: S3Store, body: bytes
) -> None:
    """A CURRENT that cannot be parsed is remembered by its ETag: the next check is a 304."""
    lookup, v1 = loaded(make_lookup, versions)
    write_pointer(publisher, body)
    rejected_pointer = pointer_etag(publisher)
    lookup.lapse_ttl()

    assert_served_within_refresh_wait(lookup.ask(), v1)
    lookup.settle()
    lookup.lapse_ttl()
    answer = lookup.ask()
    lookup.settle()

    assert_served_within_refresh_wait(answer, v1)
    assert lookup.calls.conditions("CURRENT")[-1] == rejected_pointer
    # v1's manifest and data, once; tiered: its manifest, block index and first block
    assert lookup.calls.count_under("snapshots/") == (2 if versions.serve_mode == "memory" else 3)


def test_snapshot_with_no_rows_is_rejected_and_the_last_good_keeps_serving(
    make_lookup: Callable[..., Lookup], versions: Versions
) -> None:
    """A version of zero rows breaks the key contract: it must not replace a good snapshot."""
    lookup, v1 = loaded(make_lookup, versions)
    NO_ROWS.plant(versions)
    lookup.lapse_ttl()
    lookup.ask()
    lookup.settle()

    assert_served_within_refresh_wait(lookup.ask(), v1)


def test_rejection_is_forgotten_when_the_pointer_moves(
    make_lookup: Callable[..., Lookup], versions: Versions
) -> None:
    """After a rejected version, the next announced good version is loaded at the next check."""
    lookup, _ = loaded(make_lookup, versions)
    BAD_VERSIONS[0].plant(versions)
    lookup.lapse_ttl()
    lookup.ask()
    lookup.settle()
    v3 = versions.publish(["C000000001", "C000000007"])
    lookup.lapse_ttl()

    lookup.ask()
    lookup.settle()

    assert lookup.ask().version == v3


# --- transient: storage, time and memory -----------------------------------------------------


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS, ids=str)
def test_transient_fault_keeps_the_last_good_and_is_retried_after_the_ttl(
    make_lookup: Callable[..., Lookup],
    versions: Versions,
    proxy: FaultProxy,
    fault: StorageFault,
) -> None:
    """A storage fault on a new version's download is retried only once the TTL lapses again."""
    lookup, v1 = loaded(make_lookup, versions)
    v2 = versions.publish(V2_IDS, segment="enterprise")
    fault.inject(lookup, proxy, f"/{versions.loaded_name}")
    lookup.lapse_ttl()

    assert_served_within_refresh_wait(lookup.ask(), v1)
    lookup.settle()
    lift(lookup, proxy)
    assert lookup.calls.count(versions.loaded_key(v2)) == 1
    assert_served_within_refresh_wait(lookup.ask(), v1)  # within the TTL: no retry yet
    assert lookup.calls.count(versions.loaded_key(v2)) == 1
    lookup.lapse_ttl()
    lookup.ask()
    lookup.settle()

    assert lookup.calls.count(versions.loaded_key(v2)) == 2
    assert lookup.ask().version == v2


def test_transient_pointer_fault_keeps_the_last_good_and_waits_a_ttl(
    make_lookup: Callable[..., Lookup], versions: Versions, proxy: FaultProxy
) -> None:
    """A failing pointer read is not retried by every request: the next check waits a TTL."""
    lookup, v1 = loaded(make_lookup, versions)
    TRANSIENT_FAULTS[0].inject(lookup, proxy, "CURRENT")
    lookup.lapse_ttl()
    assert_served_within_refresh_wait(lookup.ask(), v1)
    lookup.settle()
    reads = lookup.calls.count("CURRENT")

    lookup.clock.advance(TTL_SECONDS - 1)
    assert_served_within_refresh_wait(lookup.ask(), v1)

    assert lookup.calls.count("CURRENT") == reads


# --- bug: anything else ----------------------------------------------------------------------


def test_bug_in_a_refresh_is_logged_with_its_stack_and_never_reaches_the_request(
    make_lookup: Callable[..., Lookup],
    versions: Versions,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception while refreshing is logged with its stack; requests get a 200."""
    lookup, v1 = loaded(make_lookup, versions)
    versions.publish(V2_IDS)
    BUG.inject(lookup, proxy, f"/{versions.loaded_name}")
    lookup.lapse_ttl()

    with caplog.at_level(logging.INFO, logger=CACHE_LOGGER):
        answer = lookup.ask()
        lookup.settle()

    assert_served_within_refresh_wait(answer, v1)
    stacks = [r.exc_info for r in caplog.records if r.name == CACHE_LOGGER and r.exc_info]
    assert [type(exc) for _, exc, _ in stacks] == [UnexpectedError]
    assert "boom" not in str(answer.body)


def test_bug_on_a_cold_load_answers_503_not_500(
    make_lookup: Callable[..., Lookup], versions: Versions, proxy: FaultProxy
) -> None:
    """With nothing loaded, a bug in the load is a 503 with Retry-After, never a 500."""
    versions.publish()
    lookup = make_lookup()
    BUG.inject(lookup, proxy, f"/{versions.loaded_name}")

    answer = lookup.ask()

    assert answer.status == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.seconds < FAST_COLD_LOAD_WAIT_SECONDS + SLACK_SECONDS
