"""``gc`` (loaders.ops_gc) over ``file://`` and S3 on a moto server, and its never-delete rules
as a Hypothesis property over random roots.

gc never deletes the current version, the pointer's previous versions, a pinned version, the
newest N, or (with ``older_than``) a version not older than that; it deletes every object of
the versions it may delete, and nothing in a dry run.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.errors import ObjectNotFoundError, PreconditionFailedError
from loaders.manifest import POINTER_KEY, Pin, Pointer, new_version, snapshot_key
from loaders.ops_gc import gc, plan_gc
from loaders.publish import version_time
from loaders.store import FileStore, S3Store, StoredObject
from tests.conftest import BUCKET, PREFIX, T0
from tests.integration.rawstore import raw_write, stored_keys

if TYPE_CHECKING:
    from pathlib import Path

    from loaders.store import ObjectStore

FILES = ("data.parquet", "manifest.json", "changes.json")


@pytest.fixture(params=["file", "moto_server"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "file":
        return FileStore(tmp_path / "snapshots")
    return S3Store(request.getfixturevalue("server_s3"), BUCKET, PREFIX)


def plant(store: ObjectStore, version: str) -> None:
    """A version folder as gc sees it: gc never reads the files, only lists and deletes them."""
    for name in FILES:
        raw_write(store, snapshot_key(version, name), b"x")


def point(
    store: ObjectStore, version: str, previous: tuple[str, ...] = (), pin: Pin | None = None
) -> None:
    raw_write(store, POINTER_KEY, Pointer(version, "", previous, pin).to_json())


def versions_in(store: ObjectStore) -> set[str]:
    return {key.split("/")[1] for key in stored_keys(store) if key.startswith("snapshots/")}


def days_ago(days: float, token: str = "00000000") -> str:
    return new_version(T0 - timedelta(days=days), token)


@pytest.fixture
def eight(root: Any) -> list[str]:
    """Eight versions a day apart, oldest first; CURRENT = the 6th with the 4th and 5th as
    previous, and the two newest published but not announced (as under a pin)."""
    versions = [days_ago(8 - n) for n in range(8)]
    for version in versions:
        plant(root, version)
    point(root, versions[5], (versions[4], versions[3]))
    return versions


# --- gc on a store ----------------------------------------------------------------------------


def test_gc_deletes_every_object_of_versions_nothing_keeps(root: Any, eight: list[str]) -> None:
    result = gc(root, keep=2, now=T0)

    assert list(result.deleted) == eight[:3]
    assert result.deleted == dict.fromkeys(eight[:3], 3)
    assert versions_in(root) == set(eight[3:])
    assert POINTER_KEY in stored_keys(root)


def test_gc_says_why_it_kept_each_version(root: Any, eight: list[str]) -> None:
    result = gc(root, keep=2, now=T0)

    assert result.kept == {
        eight[3]: ("previous",),
        eight[4]: ("previous",),
        eight[5]: ("current",),
        eight[6]: ("newest 2",),
        eight[7]: ("newest 2",),
    }


def test_gc_dry_run_lists_what_it_would_delete_and_deletes_nothing(
    root: Any, eight: list[str]
) -> None:
    before = stored_keys(root)

    result = gc(root, keep=2, now=T0, dry_run=True)

    assert (result.dry_run, list(result.deleted)) == (True, eight[:3])
    assert stored_keys(root) == before


def test_gc_keeps_a_pinned_version_it_could_otherwise_delete(root: Any, eight: list[str]) -> None:
    point(root, eight[0], pin=Pin("alice", T0, "incident"))

    result = gc(root, keep=1, now=T0)

    assert result.kept[eight[0]] == ("current", "pinned")
    assert eight[0] in versions_in(root)


def test_gc_older_than_keeps_younger_versions(root: Any, eight: list[str]) -> None:
    result = gc(root, keep=1, now=T0, older_than=timedelta(days=6.5))

    assert list(result.deleted) == eight[:2]  # 8 and 7 days old; 6 days is too young


def test_gc_leaves_folders_that_are_not_versions(root: Any, eight: list[str]) -> None:
    raw_write(root, "snapshots/notes/readme.txt", b"ours, not gc's")

    gc(root, keep=1, now=T0)

    assert "snapshots/notes/readme.txt" in stored_keys(root)


def test_gc_of_a_root_without_a_pointer_keeps_the_newest_n(root: Any) -> None:
    versions = [days_ago(n) for n in (3, 2, 1)]
    for version in versions:
        plant(root, version)

    result = gc(root, keep=2, now=T0)

    assert (list(result.deleted), versions_in(root)) == ([versions[0]], set(versions[1:]))


def test_gc_stops_when_current_moves_while_it_runs(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "snapshots")
    versions = [days_ago(n) for n in (4, 3, 2, 1)]
    for version in versions:
        plant(store, version)
    point(store, versions[3])

    class Moving(FileStore):
        def list_keys(self, prefix: str) -> list[str]:
            # An operator rolls back to the oldest version while gc lists it for deletion.
            point(self, versions[0], (versions[3],))
            return super().list_keys(prefix)

    with pytest.raises(PreconditionFailedError, match="moved while gc ran"):
        gc(Moving(store.root), keep=1, now=T0)

    assert versions_in(store) == set(versions)


def test_file_gc_removes_the_emptied_version_folders(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "snapshots")
    old, new = days_ago(2), days_ago(1)
    plant(store, old)
    plant(store, new)
    point(store, new)

    gc(store, keep=1, now=T0)

    assert store.list_prefixes("snapshots") == [new]


def test_keep_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_gc([], None, keep=0, now=T0)


# --- the never-delete rules, as a property ----------------------------------------------------


class MemoryStore:
    """The store contract gc uses, over a dict (after Hollow's InMemoryBlobStore): a real
    directory costs milliseconds per folder removed, and the property runs hundreds of roots."""

    uri = "memory://root"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def read(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFoundError(f"{self.uri}/{key} does not exist")
        return self.objects[key]

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        body = self.read(key)
        etag = hashlib.sha256(body).hexdigest()
        return None if etag == if_none_match else StoredObject(body, etag)

    def put(self, key: str, body: bytes, **_conditions: Any) -> str:
        self.objects[key] = body
        return hashlib.sha256(body).hexdigest()

    def list_prefixes(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/") + "/"
        return sorted({k[len(base) :].split("/")[0] for k in self.objects if k.startswith(base)})

    def list_keys(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/") + "/"
        return sorted(k for k in self.objects if k.startswith(base))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


HEX = "0123456789abcdef"
version_strategy = st.builds(
    lambda seconds, token: new_version(T0 - timedelta(seconds=seconds), token),
    # Whole days too, so that a version exactly --older-than old comes up.
    st.integers(0, 40).map(lambda days: days * 86_400) | st.integers(0, 40 * 86_400),
    st.text(HEX, min_size=8, max_size=8),
)


@st.composite
def roots(draw: st.DrawFn) -> dict[str, Any]:
    versions = sorted(draw(st.sets(version_strategy, max_size=10)))
    pointer = None
    if versions and draw(st.booleans()):
        current = draw(st.sampled_from(versions))
        others = [v for v in versions if v != current]
        previous = (
            tuple(draw(st.lists(st.sampled_from(others), unique=True, max_size=3)))
            if others
            else ()
        )
        pin = Pin("alice", T0, "incident") if draw(st.booleans()) else None
        pointer = Pointer(current, "", previous, pin)
    older_than = draw(st.none() | st.integers(0, 40).map(lambda d: timedelta(days=d)))
    return {
        "versions": versions,
        "pointer": pointer,
        "keep": draw(st.integers(1, 4)),
        "older_than": older_than,
        "dry_run": draw(st.booleans()),
    }


def protected(case: dict[str, Any]) -> set[str]:
    """What gc must never delete, stated independently of loaders.ops_gc."""
    versions, pointer = case["versions"], case["pointer"]
    keep = set(sorted(versions)[-case["keep"] :])
    if pointer is not None:
        keep |= {pointer.version, *pointer.previous}  # pinned is the current one
    if case["older_than"] is not None:
        keep |= {v for v in versions if T0 - version_time(v) <= case["older_than"]}
    return keep


@settings(max_examples=200, deadline=None)
@given(case=roots())
def test_gc_never_deletes_a_protected_version_and_deletes_only_eligible_ones(
    case: dict[str, Any],
) -> None:
    store = MemoryStore()
    for version in case["versions"]:
        for name in FILES:
            store.put(snapshot_key(version, name), b"x")
    if (p := case["pointer"]) is not None:
        store.put(POINTER_KEY, Pointer(p.version, "", p.previous, p.pin).to_json())

    result = gc(
        store, keep=case["keep"], now=T0, older_than=case["older_than"], dry_run=case["dry_run"]
    )

    left = {key.split("/")[1] for key in store.objects if key.startswith("snapshots/")}
    must_keep = protected(case)
    assert must_keep <= left
    assert set(result.deleted) == set(case["versions"]) - must_keep  # all of it eligible
    assert left == (set(case["versions"]) if case["dry_run"] else must_keep)
    for version in left:  # what stays is whole
        assert {snapshot_key(version, name) for name in FILES} <= set(store.objects)
