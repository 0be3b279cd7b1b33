"""Garbage collection of old snapshot folders: ``snapshotctl gc``.

A version is deleted (every object under ``snapshots/<version>/``) only when nothing keeps it.
Kept, always: the current version, the versions the pointer lists as previous (a cold reader's
fallbacks), a pinned version, and the newest ``keep`` versions (a build may be announcing one
of them right now; a pinned build's unannounced versions are among them). With
``older_than``, a version that is not older than that is kept too. Folders under
``snapshots/`` whose name is not a version are not ours and are never touched.

The decision is :func:`plan_gc`, pure; :func:`gc` reads the root, asks it, and deletes. Within
a version the manifest goes first, so a half-deleted version reads as incomplete, never as a
snapshot with missing data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from loaders.errors import PreconditionFailedError
from loaders.manifest import MANIFEST_NAME, POINTER_KEY, SNAPSHOTS_PREFIX, VERSION_PATTERN, Pointer
from loaders.ops_status import NoProgress, Progress, kept_versions, read_current
from loaders.publish import version_time
from loaders.store import ObjectStore

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime, timedelta


class PruningStore(ObjectStore, Protocol):
    """A store gc can prune: the snapshot contract plus listing and deleting objects."""

    def list_keys(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class GcPlan:
    """Which versions to delete (oldest first), and why each other one is kept."""

    delete: tuple[str, ...]
    kept: dict[str, tuple[str, ...]] = field(default_factory=dict)


def plan_gc(
    versions: Iterable[str],
    pointer: Pointer | None,
    *,
    keep: int,
    now: datetime,
    older_than: timedelta | None = None,
) -> GcPlan:
    """Decide which versions gc deletes; everything not deleted is kept with its reasons.

    Parameters
    ----------
    versions : iterable of str
        The folder names under ``snapshots/``; names that are not versions are kept.
    pointer : Pointer or None
        ``CURRENT`` as read, or None when nothing is announced.
    keep : int
        How many of the newest versions are kept whatever their age; at least 1.
    now : datetime
        Aware time ``older_than`` is measured from.
    older_than : timedelta, optional
        Only versions stamped longer ago than this may be deleted.

    Raises
    ------
    ValueError
        If ``keep`` is below 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    names = set(versions)
    newest_first = sorted((v for v in names if VERSION_PATTERN.fullmatch(v)), reverse=True)
    kept: dict[str, tuple[str, ...]] = {
        name: ("not a version",) for name in names if not VERSION_PATTERN.fullmatch(name)
    }
    delete = []
    for rank, version in enumerate(newest_first):
        reasons = _reasons(version, rank, pointer, keep=keep, now=now, older_than=older_than)
        if reasons:
            kept[version] = reasons
        else:
            delete.append(version)
    return GcPlan(tuple(reversed(delete)), kept)


def _reasons(
    version: str,
    rank: int,
    pointer: Pointer | None,
    *,
    keep: int,
    now: datetime,
    older_than: timedelta | None,
) -> tuple[str, ...]:
    reasons = []
    if pointer is not None and version == pointer.version:
        reasons.append("current")
        if pointer.pin is not None:
            reasons.append("pinned")
    if pointer is not None and version in pointer.previous:
        reasons.append("previous")
    if rank < keep:
        reasons.append(f"newest {keep}")
    if older_than is not None and now - version_time(version) <= older_than:
        reasons.append(f"not older than {older_than.total_seconds() / 86_400:g} days")
    return tuple(reasons)


@dataclass(frozen=True, slots=True)
class GcResult:
    """What gc deleted (or, in a dry run, would delete), and what it kept and why."""

    root: str
    dry_run: bool
    deleted: dict[str, int]
    kept: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "dry_run": self.dry_run,
            "deleted": [{"version": v, "objects": n} for v, n in self.deleted.items()],
            "kept": [{"version": v, "reasons": list(r)} for v, r in sorted(self.kept.items())],
        }


def _same_pointer(before: Pointer | None, after: Pointer | None) -> bool:
    if before is None or after is None:
        return before is after
    return before.etag == after.etag


def gc(
    store: PruningStore,
    *,
    keep: int,
    now: datetime,
    older_than: timedelta | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> GcResult:
    """Delete the snapshot folders :func:`plan_gc` allows, oldest first.

    ``CURRENT`` is read again before each version is deleted; if it moved, gc stops (what it
    deleted so far was allowed under the pointer it read).

    Raises
    ------
    PreconditionFailedError
        If ``CURRENT`` moved while gc ran.
    StoreError
        If listing or deleting fails (S3 AccessDenied included: the lookup role cannot delete).
    """
    progress = progress or NoProgress()
    pointer = read_current(store)
    plan = plan_gc(kept_versions(store), pointer, keep=keep, now=now, older_than=older_than)
    progress.begin(len(plan.delete), "gc (dry run)" if dry_run else "gc")
    deleted: dict[str, int] = {}
    for version in plan.delete:
        keys = store.list_keys(f"{SNAPSHOTS_PREFIX}/{version}")
        if not dry_run:
            if not _same_pointer(pointer, read_current(store)):
                raise PreconditionFailedError(f"{store.uri}/{POINTER_KEY} moved while gc ran")
            # The manifest first: a version without one reads as incomplete, never as broken.
            for key in sorted(keys, key=lambda k: not k.endswith(f"/{MANIFEST_NAME}")):
                store.delete(key)
        deleted[version] = len(keys)
        progress.advance(version)
    return GcResult(store.uri, dry_run, deleted, plan.kept)
