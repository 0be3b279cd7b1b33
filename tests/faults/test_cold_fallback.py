"""Cold fallback: a reader with nothing loaded that rejects the announced version serves the
newest version in the pointer's ``previous`` list that loads, and says ``"degraded": true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.faults.conftest import (
    FAST_COLD_LOAD_WAIT_SECONDS,
    SLACK_SECONDS,
    V2_IDS,
    data_key,
    manifest_key,
)
from tests.faults.hostile import BAD_VERSIONS, BadVersion, bad_in_each_mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from loaders.store import S3Store
    from tests.faults.conftest import Lookup, Versions

# Rejected after the download, before it (too big), and before it (from the future).
# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

FALLBACK_NAMES = (
    "flipped byte in data",
    "table_bytes far above the memory budget",
    "created hours in the future",
)
FALLBACK_CASES = [bad for bad in BAD_VERSIONS if bad.name in FALLBACK_NAMES]
FLIPPED = BAD_VERSIONS[0]


@bad_in_each_mode(FALLBACK_CASES)
def test_cold_reader_serves_the_newest_loadable_previous_version_degraded(
    make_lookup: Callable[..., Lookup], versions: Versions, bad: BadVersion
) -> None:
    """Current version bad, previous good: the first request is served from it, degraded."""
    versions.publish()
    v2 = versions.publish(V2_IDS)
    bad.plant(versions)
    lookup = make_lookup()

    answer = lookup.ask()

    assert answer.status == 200
    assert answer.version == v2
    assert answer.body["snapshot"]["degraded"] is True
    assert answer.seconds < FAST_COLD_LOAD_WAIT_SECONDS + SLACK_SECONDS


def test_cold_reader_skips_previous_versions_that_are_bad_too(
    make_lookup: Callable[..., Lookup], versions: Versions
) -> None:
    """Fallback walks the previous list newest first, past every version it rejects."""
    v1 = versions.publish()
    FLIPPED.plant(versions)
    FLIPPED.plant(versions)
    lookup = make_lookup()

    answer = lookup.ask()

    assert answer.status == 200
    assert answer.version == v1
    assert answer.body["snapshot"]["degraded"] is True


def test_cold_reader_with_no_loadable_version_answers_503_with_retry_after(
    make_lookup: Callable[..., Lookup], versions: Versions
) -> None:
    """When neither the current nor any previous version loads, the answer is a 503, not a 500."""
    FLIPPED.plant(versions)
    FLIPPED.plant(versions)
    lookup = make_lookup()

    answer = lookup.ask()

    assert answer.status == 503
    assert answer.body["error"]["code"] == "snapshot_unavailable"
    assert answer.headers["Retry-After"] == "1"
    assert answer.seconds < FAST_COLD_LOAD_WAIT_SECONDS + SLACK_SECONDS


def test_degraded_reader_takes_the_next_good_announced_version(
    make_lookup: Callable[..., Lookup], versions: Versions
) -> None:
    """After a fallback, the next good version announced is served after the TTL, not degraded."""
    versions.publish()
    FLIPPED.plant(versions)
    lookup = make_lookup()
    assert lookup.ask().body["snapshot"]["degraded"] is True
    v3 = versions.publish(["C000000001", "C000000009"])
    lookup.lapse_ttl()

    lookup.ask()
    lookup.settle()
    answer = lookup.ask()

    assert answer.version == v3
    assert "degraded" not in answer.body["snapshot"]


def forget(store: S3Store, version: str) -> None:
    """Delete a version's objects, as a clean-up of old versions would."""
    for key in (manifest_key(version), data_key(version)):
        store.client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")


def test_cold_reader_falls_back_past_a_previous_version_that_is_gone(
    make_lookup: Callable[..., Lookup], versions: Versions, publisher: S3Store
) -> None:
    """A previous version deleted from the store is skipped; an older one that loads serves."""
    v1 = versions.publish()
    forget(publisher, versions.publish(V2_IDS))
    FLIPPED.plant(versions)
    lookup = make_lookup()

    answer = lookup.ask()

    assert answer.status == 200
    assert answer.version == v1
    assert answer.body["snapshot"]["degraded"] is True


def test_cold_reader_does_not_download_a_rejected_version_again(
    make_lookup: Callable[..., Lookup], versions: Versions, publisher: S3Store
) -> None:
    """A rejected current version is downloaded once, even when no fallback loads either."""
    forget(publisher, versions.publish())
    rejected = FLIPPED.plant(versions)
    lookup = make_lookup()

    answers = []
    for _ in range(3):
        answers.append(lookup.ask())
        lookup.settle()

    assert [a.status for a in answers] == [503] * 3
    assert lookup.calls.count(versions.loaded_key(rejected)) == 1
