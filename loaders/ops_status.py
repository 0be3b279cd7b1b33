"""Operator reads of a snapshot root: ``status``, ``diff`` and ``verify``.

Also what the other operator commands share: the operator's errors, which versions are kept,
reading the pointer as an operator (a denied read is an error, never "nothing announced"),
and verifying a version as a reader would before the pointer moves to it.

Functions return plain dataclasses; rendering them (a table, JSON) is ``loaders.cli``'s job.
Example keys in a :class:`VersionDiff` are customer data: they are returned for the operator's
terminal and never logged here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from loaders.blocks import check_all_blocks
from loaders.errors import LoaderError, ObjectNotFoundError, SnapshotInvalidError
from loaders.index import KeyIndex
from loaders.manifest import (
    BLOCKS_NAME,
    DATA_NAME,
    SNAPSHOTS_PREFIX,
    VERSION_PATTERN,
    Manifest,
    Pin,
    Pointer,
    read_manifest,
    read_pointer,
    snapshot_key,
    utc_text,
)
from loaders.records import BuildRecord, read_latest
from loaders.snapshot import Snapshot, SnapshotReader, decode_snapshot
from loaders.validate import diff as diff_tables

if TYPE_CHECKING:
    from datetime import datetime

    import pyarrow as pa

    from loaders.store import ObjectStore

_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled"})
VERIFY_STEPS = ("manifest", "download", "sha256 + decode", "key index", "blocks")


# --- errors an operator can act on ------------------------------------------------------------


class OperatorError(LoaderError):
    """An operator's request that cannot be done as asked; the message says why and what to do."""


class BadVersionError(OperatorError):
    """The string given is not a version."""


class NotKeptError(OperatorError):
    """The version is not kept under the root (no manifest)."""


def is_permission_denied(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a permission failure.

    The one place that decides it: S3's AccessDenied/403 (which the stores report as "missing"
    for reads, since the lookup role has no ``s3:ListBucket``) and a local ``PermissionError``.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PermissionError):
            return True
        if isinstance(seen, ClientError):
            error = seen.response.get("Error", {})
            status = seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return str(error.get("Code")) in _DENIED_CODES or status == 403
        seen = seen.__cause__ or seen.__context__
    return False


# --- progress ---------------------------------------------------------------------------------


class Progress(Protocol):
    """Where long operations report their steps (the CLI draws a bar on stderr)."""

    def begin(self, total: int, what: str) -> None: ...

    def advance(self, step: str) -> None: ...


class NoProgress:
    """Reports nothing."""

    def begin(self, total: int, what: str) -> None:
        pass

    def advance(self, step: str) -> None:
        pass


# --- shared reads -----------------------------------------------------------------------------


def check_version_text(version: str) -> str:
    """Return ``version`` if it is a well-formed version string.

    Raises
    ------
    BadVersionError
        Naming the string and the expected form.
    """
    if not VERSION_PATTERN.fullmatch(version):
        raise BadVersionError(
            f"bad version {version!r}: expected YYYYMMDDTHHMMSSZ-<8 hex digits>, "
            "as `snapshotctl status` lists them"
        )
    return version


def read_current(store: ObjectStore) -> Pointer | None:
    """The pointer, or None when nothing is announced; a denied read raises."""
    try:
        return read_pointer(store)
    except ObjectNotFoundError as exc:
        if is_permission_denied(exc):
            raise
        return None


def require_current(store: ObjectStore) -> Pointer:
    """The pointer.

    Raises
    ------
    OperatorError
        If nothing is announced under the root.
    """
    pointer = read_current(store)
    if pointer is None:
        raise OperatorError(f"nothing is announced under {store.uri} (no CURRENT)")
    return pointer


def kept_versions(store: ObjectStore) -> list[str]:
    """The version folders under ``snapshots/``, oldest first (complete or not)."""
    return [v for v in store.list_prefixes(SNAPSHOTS_PREFIX) if VERSION_PATTERN.fullmatch(v)]


def kept_manifest(store: ObjectStore, version: str) -> Manifest:
    """The manifest of a kept version.

    Raises
    ------
    BadVersionError
        If ``version`` is not a version string.
    NotKeptError
        If the root holds no manifest for it.
    """
    check_version_text(version)
    try:
        return read_manifest(store, version)
    except ObjectNotFoundError as exc:
        if is_permission_denied(exc):
            raise
        raise NotKeptError(
            f"version {version} is not kept under {store.uri}; `snapshotctl status` lists them"
        ) from exc


def _download(store: ObjectStore, manifest: Manifest, progress: Progress) -> Snapshot:
    """The snapshot ``manifest`` describes, checked (size, sha256, Parquet, columns)."""
    try:
        body = store.read(snapshot_key(manifest.version, DATA_NAME))
    except ObjectNotFoundError as exc:
        if is_permission_denied(exc):
            raise
        raise SnapshotInvalidError(f"snapshot {manifest.version}: data.parquet is missing") from exc
    progress.advance("download")
    snapshot = decode_snapshot(manifest, body)
    progress.advance("sha256 + decode")
    return snapshot


# --- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verification:
    """What a reader would make of one version: its figures, or why it would reject it."""

    version: str
    ok: bool
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    key_column: str | None = None
    error: str | None = None
    seconds: float = 0.0
    blocks: int | None = None  # blocks of the tiered layout checked (None: it has none)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "ok": self.ok,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "key_column": self.key_column,
            "blocks": self.blocks,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def verify(store: ObjectStore, version: str, *, progress: Progress | None = None) -> Verification:
    """Download ``version``, check its sha256, decode it and build its key index, as a reader.

    Returns
    -------
    Verification
        ``ok`` False with the reason when a reader would reject the version.

    Raises
    ------
    BadVersionError, NotKeptError
        If ``version`` is malformed or not kept.
    StoreError
        If the store cannot be read.
    """
    progress = progress or NoProgress()
    started = time.perf_counter()
    progress.begin(len(VERIFY_STEPS), f"verify {version}")
    try:
        manifest = kept_manifest(store, version)
        progress.advance("manifest")
        snapshot = _download(store, manifest, progress)
        index = KeyIndex(snapshot.table, manifest.key_column)
        progress.advance("key index")
        del snapshot
        blocks = _check_blocks(store, manifest)
        progress.advance("blocks")
    except SnapshotInvalidError as exc:
        reason = " ".join(str(exc).split())
        return Verification(version, False, error=reason, seconds=time.perf_counter() - started)
    return Verification(
        version,
        True,
        rows=len(index),
        bytes=manifest.bytes,
        sha256=manifest.sha256,
        key_column=manifest.key_column,
        seconds=time.perf_counter() - started,
        blocks=blocks,
    )


def _check_blocks(store: ObjectStore, manifest: Manifest) -> int | None:
    """Every block of the tiered layout checked as a tiered reader reads it; None without one."""
    if manifest.blocks is None:
        return None
    try:
        index = SnapshotReader(store).read_block_index(manifest)
        key = snapshot_key(manifest.version, BLOCKS_NAME)
        return check_all_blocks(
            manifest, index, lambda start, length: store.read_range(key, start, length)
        )
    except ObjectNotFoundError as exc:
        if is_permission_denied(exc):
            raise
        missing = f"snapshot {manifest.version}: a blocks file is missing"
        raise SnapshotInvalidError(missing) from exc


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptVersion:
    """One version folder under ``snapshots/`` and what the pointer says of it.

    ``state`` is ``complete``, ``incomplete`` (no manifest: a build that stopped, or one still
    writing) or ``bad manifest``.
    """

    version: str
    state: str
    rows: int | None = None
    bytes: int | None = None
    created_at: datetime | None = None
    current: bool = False
    previous: bool = False
    pinned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "rows": self.rows,
            "bytes": self.bytes,
            "created_at": utc_text(self.created_at),
            "current": self.current,
            "previous": self.previous,
            "pinned": self.pinned,
        }


@dataclass(frozen=True, slots=True)
class Status:
    """The current version, its age and pin, the kept versions, and the last build."""

    root: str
    current: str | None
    age_seconds: float | None
    pin: Pin | None
    previous: tuple[str, ...]
    versions: tuple[KeptVersion, ...]
    last_build: BuildRecord | None
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "current": self.current,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 1),
            "pinned": self.pin is not None,
            "pin": None if self.pin is None else self.pin.to_dict(),
            "previous": list(self.previous),
            "versions": [v.to_dict() for v in self.versions],
            "last_build": None if self.last_build is None else self.last_build.to_dict(),
            "problems": list(self.problems),
        }


def _kept(store: ObjectStore, version: str, pointer: Pointer | None) -> KeptVersion:
    marks = {
        "current": pointer is not None and version == pointer.version,
        "previous": pointer is not None and version in pointer.previous,
        "pinned": pointer is not None and pointer.pin is not None and version == pointer.version,
    }
    try:
        manifest = read_manifest(store, version)
    except ObjectNotFoundError as exc:
        if is_permission_denied(exc):
            raise
        return KeptVersion(version, "incomplete", **marks)
    except SnapshotInvalidError:
        return KeptVersion(version, "bad manifest", **marks)
    return KeptVersion(
        version, "complete", manifest.row_count, manifest.bytes, manifest.created_at, **marks
    )


def _last_build(store: ObjectStore, problems: list[str]) -> BuildRecord | None:
    try:
        return read_latest(store)
    except ObjectNotFoundError as exc:
        if is_permission_denied(exc):
            raise
        return None
    except SnapshotInvalidError as exc:
        problems.append(str(exc))
        return None


def status(store: ObjectStore, *, now: datetime) -> Status:
    """Read the pointer, every kept version's manifest, and the last build record.

    Parameters
    ----------
    now : datetime
        Aware time the current version's age is measured at.
    """
    pointer = read_current(store)
    versions = tuple(_kept(store, v, pointer) for v in reversed(kept_versions(store)))
    problems: list[str] = []
    age = None
    if pointer is not None:
        current = next((v for v in versions if v.current), None)
        if current is None or current.created_at is None:
            problems.append(f"CURRENT names {pointer.version}, whose manifest cannot be read")
        else:
            age = (now - current.created_at).total_seconds()
    return Status(
        root=store.uri,
        current=None if pointer is None else pointer.version,
        age_seconds=age,
        pin=None if pointer is None else pointer.pin,
        previous=() if pointer is None else pointer.previous,
        versions=versions,
        last_build=_last_build(store, problems),
        problems=tuple(problems),
    )


# --- diff -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnChange:
    """A column added (``old_type`` None), removed (``new_type`` None) or retyped."""

    name: str
    old_type: str | None
    new_type: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "old_type": self.old_type, "new_type": self.new_type}


@dataclass(frozen=True, slots=True)
class VersionDiff:
    """Rows and columns that differ from ``old`` to ``new``.

    ``changed_by_column`` counts, for each column both versions have, the rows present in both
    whose value in that column differs (a row can count under several columns). ``examples``
    holds up to 20 keys per kind (added, removed, changed): customer data, for the operator's
    terminal only.
    """

    old: str
    new: str
    key_column: str
    old_rows: int
    new_rows: int
    added: int
    removed: int
    changed: int
    columns: tuple[ColumnChange, ...] = ()
    changed_by_column: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "key_column": self.key_column,
            "old_rows": self.old_rows,
            "new_rows": self.new_rows,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "changed_by_column": self.changed_by_column,
            "columns": [c.to_dict() for c in self.columns],
            "examples": self.examples,
        }


def column_changes(old: Manifest, new: Manifest) -> tuple[ColumnChange, ...]:
    """Columns added, removed or retyped between two manifests, in the new one's order."""
    before = {c.name: c.type for c in old.columns}
    after = {c.name: c.type for c in new.columns}
    changes = [
        ColumnChange(name, before.get(name), kind)
        for name, kind in after.items()
        if before.get(name) != kind
    ]
    changes += [
        ColumnChange(name, kind, None) for name, kind in before.items() if name not in after
    ]
    return tuple(changes)


def diff(
    store: ObjectStore, old: str, new: str, *, progress: Progress | None = None
) -> VersionDiff:
    """Compare two kept versions: rows added, removed and changed, and schema differences.

    Raises
    ------
    BadVersionError, NotKeptError
        If a version is malformed or not kept.
    OperatorError
        If the two versions are keyed by different columns.
    SnapshotInvalidError
        If a version fails verification.
    """
    progress = progress or NoProgress()
    progress.begin(8, f"diff {old} {new}")
    snapshots = []
    for version in (old, new):
        manifest = kept_manifest(store, version)
        progress.advance("manifest")
        snapshots.append(_download(store, manifest, progress))
    before, after = snapshots
    key_column = after.manifest.key_column
    if before.manifest.key_column != key_column:
        raise OperatorError(
            f"{old} is keyed by {before.manifest.key_column!r} and {new} by {key_column!r}: "
            "their rows cannot be paired"
        )
    changes = diff_tables(after.table, before.table, key_column=key_column, previous_version=old)
    progress.advance("compare")
    by_column = _changed_by_column(before.table, after.table, key_column, old)
    progress.advance("compare by column")
    return VersionDiff(
        old=old,
        new=new,
        key_column=key_column,
        old_rows=before.manifest.row_count,
        new_rows=after.manifest.row_count,
        added=changes.added,
        removed=changes.removed,
        changed=changes.changed,
        columns=column_changes(before.manifest, after.manifest),
        changed_by_column=by_column,
        examples=changes.examples,
    )


def _changed_by_column(
    before: pa.Table, after: pa.Table, key_column: str, old: str
) -> dict[str, int]:
    """Rows changed in each column both tables have: the question after "how many changed"."""
    shared = [n for n in after.column_names if n != key_column and n in before.column_names]
    return {
        name: diff_tables(
            after.select([key_column, name]),
            before.select([key_column, name]),
            key_column=key_column,
            previous_version=old,
        ).changed
        for name in shared
    }
