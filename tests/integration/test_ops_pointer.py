"""``rollback``, ``pin``, ``unpin`` and ``announce`` (loaders.ops_pointer) over ``file://`` and S3
on a moto server: each moves ``CURRENT`` by compare-and-swap to a verified version, readers
follow, and a race is lost loudly, never silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from loaders.errors import PreconditionFailedError
from loaders.manifest import DATA_NAME, POINTER_KEY, Pin, snapshot_key, try_read_pointer
from loaders.ops_pointer import PinnedError, announce_version, pin, rollback, unpin
from loaders.ops_status import BadVersionError, NotKeptError, OperatorError
from loaders.snapshot import SnapshotReader
from loaders.store import FileStore, S3Store
from service.cache import SnapshotCache
from tests.conftest import BUCKET, PREFIX, T0, FakeClock, customers, publish
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from loaders.store import ObjectStore, StoredObject

IDS = [f"C{i:09d}" for i in range(1, 21)]
NOW = T0 + timedelta(hours=5)
WHO = {"by": "alice", "at": NOW}


# What differs by store is covered on both; the rest runs on file:// only.
FILE_ONLY = pytest.mark.parametrize("root", ["file"], indirect=True)


@pytest.fixture(params=["file", "moto_server"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "snapshots")
    return S3Store(request.getfixturevalue("server_s3"), BUCKET, PREFIX)


@pytest.fixture
def file_root(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "snapshots")


def three_versions(store: ObjectStore) -> list[str]:
    """v0, v1, v2 an hour apart, each announced: CURRENT = v2, previous = [v1, v0]."""
    return [
        publish(store, customers(IDS[: 18 + n], segment=f"s{n}"), T0 + timedelta(hours=n))
        for n in range(3)
    ]


@pytest.fixture
def versions(root: ObjectStore) -> list[str]:
    return three_versions(root)


@pytest.fixture
def file_versions(file_root: FileStore) -> list[str]:
    return three_versions(file_root)


def pointer(store: ObjectStore) -> Any:
    found = try_read_pointer(store)
    assert found is not None
    return found


@dataclass
class HookStore:
    """Forwards to ``inner`` and calls ``on_read(key)`` before each whole-object read: where a
    test lets someone else act while an operation verifies its target."""

    inner: ObjectStore
    on_read: Callable[[str], None]
    reads: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return self.inner.uri

    def read(self, key: str) -> bytes:
        self.reads.append(key)
        self.on_read(key)
        return self.inner.read(key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.inner.read_range(key, start, length)

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        return self.inner.get(key, if_none_match=if_none_match)

    def put(self, key: str, body: bytes, **conditions: Any) -> str:
        return self.inner.put(key, body, **conditions)

    def list_prefixes(self, prefix: str) -> list[str]:
        return self.inner.list_prefixes(prefix)


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_moves_current_to_the_newest_previous_version_and_pins_it(
    root: ObjectStore, versions: list[str]
) -> None:
    change = rollback(root, **WHO)

    after = pointer(root)
    assert (change.before, change.after) == (versions[2], versions[1])
    assert after.version == versions[1]
    assert after.pin == Pin("alice", NOW, f"rollback from {versions[2]}")
    assert change.verification.ok and change.verification.rows == 19


@FILE_ONLY
def test_rollback_drops_the_version_it_leaves_from_the_previous_list(
    root: ObjectStore, versions: list[str]
) -> None:
    rollback(root, **WHO)

    # A cold reader rejecting v1 must not fall back to the bad v2; a second rollback goes to v0.
    assert pointer(root).previous == (versions[0],)


@FILE_ONLY
def test_second_rollback_steps_further_back(root: ObjectStore, versions: list[str]) -> None:
    rollback(root, **WHO)
    change = rollback(root, **WHO, reason="v1 is bad too")

    after = pointer(root)
    assert (after.version, after.previous, after.pin.reason) == (versions[0], (), "v1 is bad too")
    assert change.before == versions[1]


@FILE_ONLY
def test_rollback_to_a_named_kept_version(root: ObjectStore, versions: list[str]) -> None:
    rollback(root, versions[0], **WHO, reason="bad segment data since v1")

    after = pointer(root)
    assert (after.version, after.previous) == (versions[0], (versions[1],))
    assert after.pin.reason == "bad segment data since v1"


def test_rollback_to_a_version_that_fails_verification_leaves_current(
    file_root: FileStore, file_versions: list[str]
) -> None:
    key = snapshot_key(file_versions[1], DATA_NAME)
    raw_write(file_root, key, flip_bytes(raw_read(file_root, key)))
    before = file_root.read(POINTER_KEY)

    with pytest.raises(OperatorError, match=f"{file_versions[1]} failed verification: .*sha256"):
        rollback(file_root, **WHO)

    assert file_root.read(POINTER_KEY) == before


def test_rollback_without_a_previous_version_says_so(file_root: FileStore) -> None:
    publish(file_root, customers(IDS), T0)

    with pytest.raises(OperatorError, match="lists no previous version"):
        rollback(file_root, **WHO)


def test_rollback_refuses_a_newer_version(file_root: FileStore, file_versions: list[str]) -> None:
    rollback(file_root, **WHO)

    with pytest.raises(OperatorError, match="is newer than the current"):
        rollback(file_root, file_versions[2], **WHO)


@pytest.mark.parametrize(
    ("version", "error"),
    [("v1", BadVersionError), ("20200101T000000Z-00000000", NotKeptError)],
    ids=["malformed", "not-kept"],
)
def test_rollback_to_a_bad_or_unkept_version_is_refused(
    file_root: FileStore, file_versions: list[str], version: str, error: type[Exception]
) -> None:
    before = file_root.read(POINTER_KEY)

    with pytest.raises(error):
        rollback(file_root, version, **WHO)

    assert file_root.read(POINTER_KEY) == before


def test_readers_follow_a_rollback_on_their_next_pointer_check(
    root: ObjectStore, versions: list[str]
) -> None:
    clock = FakeClock()
    cache = SnapshotCache(
        SnapshotReader(root),
        key_column="customer_id",
        ttl_seconds=300.0,
        max_staleness_seconds=10 * 86_400.0,
        clock=clock,
        wall_clock=FakeClock(NOW.timestamp()),
    )
    assert cache.get().snapshot["version"] == versions[2]

    rollback(root, **WHO)
    served_within_ttl = cache.get().snapshot["version"]
    clock.advance(301)
    served_after_ttl = cache.get().snapshot["version"]

    assert (served_within_ttl, served_after_ttl) == (versions[2], versions[1])
    assert cache.get().index.get(IDS[19]) is None  # v1 has 19 rows: the 20th key is gone


def test_two_rollbacks_racing_one_wins_and_the_other_loses_the_swap(
    root: ObjectStore, versions: list[str]
) -> None:
    won: list[Any] = []

    def the_other_operator(key: str) -> None:
        # While the first verifies v1's data, a second operator rolls back to v0.
        if key.endswith(DATA_NAME) and not won:
            won.append(rollback(root, versions[0], by="bob", at=NOW))

    with pytest.raises(PreconditionFailedError):
        rollback(HookStore(root, the_other_operator), **WHO)

    after = pointer(root)
    assert (after.version, after.pin.by) == (versions[0], "bob")
    assert won[0].after == versions[0]


# --- pin and unpin ----------------------------------------------------------------------------


@FILE_ONLY
def test_pin_of_the_current_version_keeps_version_and_previous(
    root: ObjectStore, versions: list[str]
) -> None:
    change = pin(root, versions[2], **WHO, reason="hold for QA")

    after = pointer(root)
    assert (after.version, after.previous) == (versions[2], (versions[1], versions[0]))
    assert after.pin == Pin("alice", NOW, "hold for QA")
    assert change.verification is None  # nothing moved: nothing to verify


def test_pin_of_another_version_verifies_it_and_moves_current_there(
    root: ObjectStore, versions: list[str]
) -> None:
    change = pin(root, versions[0], **WHO, reason="serve v0 while we look")

    after = pointer(root)
    assert (after.version, after.previous) == (versions[0], (versions[2], versions[1]))
    assert change.verification.rows == 18


def test_pin_needs_a_reason(file_root: FileStore, file_versions: list[str]) -> None:
    with pytest.raises(OperatorError, match="needs a reason"):
        pin(file_root, file_versions[2], **WHO, reason="  ")


def test_unpin_clears_the_pin_and_keeps_version_and_previous(
    root: ObjectStore, versions: list[str]
) -> None:
    rollback(root, **WHO)
    pinned = pointer(root)

    change = unpin(root)

    after = pointer(root)
    assert (after.version, after.previous, after.pin) == (pinned.version, pinned.previous, None)
    assert change.written


def test_unpin_of_an_unpinned_pointer_writes_nothing(
    file_root: FileStore, file_versions: list[str]
) -> None:
    before = file_root.read(POINTER_KEY)

    change = unpin(file_root)

    assert not change.written
    assert file_root.read(POINTER_KEY) == before


def test_unpin_of_an_empty_root_says_nothing_is_announced(file_root: FileStore) -> None:
    with pytest.raises(OperatorError, match="nothing is announced"):
        unpin(file_root)


# --- announce ---------------------------------------------------------------------------------


def test_announce_moves_current_back_or_forth_without_a_pin(
    root: ObjectStore, versions: list[str]
) -> None:
    back = announce_version(root, versions[0])
    forth = announce_version(root, versions[2])

    after = pointer(root)
    assert (back.after, forth.after, after.version, after.pin) == (
        versions[0],
        versions[2],
        versions[2],
        None,
    )
    assert after.previous == (versions[0], versions[1])


def test_announce_refuses_while_pinned(file_root: FileStore, file_versions: list[str]) -> None:
    rollback(file_root, **WHO)
    before = file_root.read(POINTER_KEY)

    with pytest.raises(PinnedError, match=r"pinned to .* by alice .*unpin"):
        announce_version(file_root, file_versions[2])

    assert file_root.read(POINTER_KEY) == before


def test_forced_announce_drops_the_pin(file_root: FileStore, file_versions: list[str]) -> None:
    rollback(file_root, **WHO)

    change = announce_version(file_root, file_versions[2], force=True)

    after = pointer(file_root)
    assert (after.version, after.pin, change.verification.ok) == (file_versions[2], None, True)


def test_announce_of_the_current_version_writes_nothing(
    file_root: FileStore, file_versions: list[str]
) -> None:
    before = file_root.read(POINTER_KEY)

    change = announce_version(file_root, file_versions[2])

    assert not change.written
    assert file_root.read(POINTER_KEY) == before


def test_announce_loses_to_a_pin_written_while_it_verified(
    root: ObjectStore, versions: list[str]
) -> None:
    def pin_meanwhile(key: str) -> None:
        if key.endswith(DATA_NAME) and pointer(root).pin is None:
            pin(root, versions[2], by="bob", at=NOW, reason="incident")

    with pytest.raises(PreconditionFailedError):
        announce_version(HookStore(root, pin_meanwhile), versions[0])

    after = pointer(root)
    assert (after.version, after.pin.by) == (versions[2], "bob")
