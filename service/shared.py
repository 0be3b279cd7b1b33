"""SharedSource: one memory-mapped copy of each memory-mode snapshot per machine.

Where several processes share a file system (Lambda Managed Instances run several Python
processes per execution environment, all with one ``/tmp``; a local server with workers), the
first process to load a version writes its decoded table once, as an uncompressed Arrow IPC
file, and every process (that one too) memory-maps the file. The table's pages then live once,
in the page cache, instead of once per process. Wire it around the snapshot source::

    source = SnapshotReader(store)
    if settings.shares_snapshots:
        source = SharedSource(
            source,
            settings.share_dir,
            max_bytes=None if settings.share_max_mb is None else settings.share_max_mb * MB,
        )

and build the index with the padded keys the copy carries for keys of several widths (None
otherwise, and for private copies)::

    index = KeyIndex(snapshot.table, key, padded_keys=getattr(snapshot, "padded_keys", None))

Files in ``directory`` (created ``0700``; one not private to this user is not used)::

    <version>.<sha256>.arrow              complete copies: renamed into place after writing
    <version>.<sha256>.arrow.tmp-<rand>   a copy being written (or left by a crashed writer)
    <version>.lock                        flock(2) on it makes one process the writer

The file name carries the manifest's sha256 and the file's schema metadata names the version
and sha256 again, so a copy of another snapshot that happens to share a version is never
mapped; a mapped copy is also checked against the manifest's row count and columns. A process
that dies releases its lock, and the next writer removes what it left. Waiting for another
process's lock is bounded (``lock_wait_seconds``, on the injected clock).

After a version maps, the files of every other version are removed: unlinking a mapped file is
safe on Linux (mappings keep the pages), so processes still serving an older version keep it.
A version whose lock is held (being written) is left for a later sweep. A process that loads
an older version (a rollback, a degraded fallback) removes the newer copy the same way; the
processes serving it keep their mappings, and the next to load it writes it again.

Sharing never costs an answer. A full or over-budget directory (``max_bytes``, by default half
the file system), a lock held past the wait, or any other ``OSError`` falls back to a private
in-memory table, with one log line saying why (versions and sizes, never customer values). A
copy that fails its checks is deleted and written again. Errors of the wrapped source (bad
snapshot, store failure) reach the caller unchanged, as without sharing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loaders.errors import SnapshotInvalidError
from loaders.index import padded_keys
from loaders.manifest import VERSION_PATTERN, check_version
from loaders.snapshot import Snapshot, columns_of

if TYPE_CHECKING:
    from loaders.manifest import Manifest, Pointer
    from service.cache import SnapshotSource

Clock = Callable[[], float]
Sleep = Callable[[float], Any]
DiskUsage = Callable[[Path], Any]  # shutil.disk_usage: has .total and .free
MB = 1 << 20
# How long a process waits for another one writing the same version: a 10M-row copy takes
# about 2 s to decode and write here, and waiting is cheaper than a private copy.
LOCK_WAIT_SECONDS = 15.0
_FIRST_PAUSE_SECONDS = 0.005
_MAX_PAUSE_SECONDS = 0.1
# Room for the IPC file's schema, dictionaries' framing, footer and 8-byte padding per buffer
# beyond the table's own bytes (measured: 2.3 KB over nbytes at 1M rows).
_FILE_SLACK_BYTES = MB
_DATA_SUFFIX = ".arrow"
_LOCK_SUFFIX = ".lock"
_TEMP_MARK = ".tmp-"
_META_VERSION = b"snapshot.version"
_META_SHA256 = b"snapshot.sha256"
# The copy's extra column: the keys NUL-padded to one width, where they have several.
_PADDED_KEYS = "__snapshot_padded_keys__"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(
    rf"^(?P<version>{VERSION_PATTERN.pattern.strip('^$')})"
    r"(?:\.(?P<sha>[0-9a-f]{64})\.arrow(?P<temp>\.tmp-[A-Za-z0-9_]+)?|(?P<lock>\.lock))$"
)
logger = logging.getLogger(__name__)
# Waits out a pause between lock attempts: an Event nobody sets (time.sleep is kept out of
# service code, so that tests inject their own).
_pause = threading.Event().wait


@dataclass(frozen=True, slots=True)
class SharedLoad:
    """What one :meth:`SharedSource.read_data` did.

    ``how`` is ``"written"`` (this process wrote the copy, then mapped it), ``"mapped"``
    (another process had written it) or ``"private"`` (not shared; ``reason`` says why).
    """

    version: str
    how: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SharedSnapshot(Snapshot):
    """A snapshot mapped from a shared copy.

    ``padded_keys`` is the key column NUL-padded to one width (mapped too) when the keys have
    several widths, else None: pass it on, ``KeyIndex(table, key, padded_keys=...)``, and the
    index searches it instead of padding a private copy.
    """

    padded_keys: pa.Array | None = None


class _Unshared(Exception):
    """Sharing cannot be used for this load; the message says why, for the one log line."""


class _BadCopy(ValueError):
    """A complete copy on disk does not match the manifest it is named for."""


def data_file_name(manifest: Manifest) -> str:
    """The file name of ``manifest``'s shared copy: ``<version>.<sha256>.arrow``.

    Raises
    ------
    SnapshotInvalidError
        If the version or the sha256 is malformed: no such string reaches a path.
    """
    version = check_version(manifest.version)
    if not isinstance(manifest.sha256, str) or not _SHA256.fullmatch(manifest.sha256):
        raise SnapshotInvalidError(f"snapshot {version}: bad sha256 {manifest.sha256!r}")
    return f"{version}.{manifest.sha256}{_DATA_SUFFIX}"


class SharedSource:
    """A snapshot source whose tables are mapped from one copy per machine.

    Parameters
    ----------
    source : SnapshotSource
        Where snapshots come from (``loaders.snapshot.SnapshotReader``). Pointer and manifest
        reads, and any other attribute (the tiered reads), go straight to it.
    directory : str or Path
        Where copies and lock files live (``SHARE_DIR``); created ``0700`` if missing.
    max_bytes : int or None
        The most the copies in ``directory`` may hold; by default half of its file system.
    lock_wait_seconds : float, default 15
        How long to wait for a process writing the same version before decoding privately.
    clock : callable, default time.monotonic
        Measures that wait.
    sleep : callable, default threading.Event().wait
        Pauses between lock attempts (tests pass one that advances a fake clock).
    disk_usage : callable, default shutil.disk_usage
        The directory's file system: its ``total`` and ``free`` bytes.
    logger : logging.Logger, optional
        Where the fallback and cleanup lines go.

    Attributes
    ----------
    last_load : SharedLoad or None
        What the latest :meth:`read_data` did.
    """

    def __init__(
        self,
        source: SnapshotSource,
        directory: str | Path,
        *,
        max_bytes: int | None = None,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
        clock: Clock = time.monotonic,
        sleep: Sleep = _pause,
        disk_usage: DiskUsage = shutil.disk_usage,
        logger: logging.Logger = logger,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes!r}")
        self._source = source
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock_wait_seconds = lock_wait_seconds
        self._clock = clock
        self._sleep = sleep
        self._disk_usage = disk_usage
        self._logger = logger
        self.last_load: SharedLoad | None = None

    def __getattr__(self, name: str) -> Any:
        # read_block_index, read_block, store, ...: whatever the wrapped source offers.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._source, name)

    def read_pointer(self, *, if_none_match: str | None = None) -> Pointer | None:
        """The wrapped source's pointer."""
        return self._source.read_pointer(if_none_match=if_none_match)

    def read_manifest(self, version: str) -> Manifest:
        """The wrapped source's manifest."""
        return self._source.read_manifest(version)

    def read_data(self, manifest: Manifest) -> Snapshot:
        """``manifest``'s snapshot, its table mapped from the shared copy where one can be used.

        Raises
        ------
        SnapshotInvalidError
            If the manifest's version or sha256 is malformed, or the wrapped source rejects
            the data.
        LoaderError
            Whatever else the wrapped source raises; sharing's own failures never escape.
        """
        path = self.directory / data_file_name(manifest)
        with contextlib.ExitStack() as held:
            try:
                snapshot = self._find(path, manifest, held)
            except (_Unshared, OSError) as exc:
                held.close()
                return self._private(manifest, _reason(exc))
            if snapshot is None:  # this process holds the lock, and no good copy exists
                snapshot, how = self._write_and_map(path, manifest)
            else:
                how = "mapped"
        if how != "private":  # a private copy has recorded why already
            self._sweep(keep=path.name)
            self._record(SharedLoad(manifest.version, how))
        return snapshot

    # --- finding or writing this version's copy ----------------------------------------------

    def _find(
        self, path: Path, manifest: Manifest, held: contextlib.ExitStack
    ) -> SharedSnapshot | None:
        """The mapped copy if a good one exists; otherwise None, with the lock held."""
        self._prepare_directory()
        snapshot = self._map_existing(path, manifest, remove_bad=False)
        if snapshot is not None:
            return snapshot
        held.enter_context(self._locked(manifest.version))
        # Another process may have written it while this one waited.
        snapshot = self._map_existing(path, manifest, remove_bad=True)
        if snapshot is None:
            # Whoever wrote these held the lock that this process holds now: they are gone.
            self._remove(self._files(manifest.version, temps_only=True))
        return snapshot

    def _write_and_map(self, path: Path, manifest: Manifest) -> tuple[Snapshot, str]:
        """Decode through the wrapped source, then write and map the copy (lock held)."""
        snapshot = self._source.read_data(manifest)  # its errors are the caller's
        try:
            self._write(path, manifest, _for_copy(snapshot.table, manifest.key_column))
            mapped = _map(path, manifest)
        except (_Unshared, _BadCopy, pa.ArrowException, OSError, MemoryError) as exc:
            # The decoded table is in hand: serving it beats failing the load.
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            self._warn_private(manifest.version, _reason(exc))
            return snapshot, "private"
        del snapshot  # the private decode: its pages go back now, the mapped copy serves
        pa.default_memory_pool().release_unused()
        return mapped, "written"

    def _write(self, path: Path, manifest: Manifest, table: pa.Table) -> None:
        """Write ``table`` to a temp file, flush it to disk, and rename it into place."""
        needed = table.nbytes + _FILE_SLACK_BYTES
        self._make_room(needed, manifest.version)
        fd, temp_name = tempfile.mkstemp(dir=self.directory, prefix=path.name + _TEMP_MARK)
        temp = Path(temp_name)
        try:
            os.close(fd)
            metadata = {
                **(table.schema.metadata or {}),
                _META_VERSION: manifest.version.encode(),
                _META_SHA256: manifest.sha256.encode(),
            }
            with (
                pa.OSFile(temp_name, "wb") as out,
                pa.ipc.new_file(out, table.schema.with_metadata(metadata)) as writer,
            ):
                writer.write_table(table)
            _fsync(temp)
            temp.rename(path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync(self.directory)

    def _make_room(self, needed: int, version: str) -> None:
        """Check the budget and the free space for a copy of ``needed`` bytes.

        Over budget, other versions' copies go first (processes serving them keep their
        mappings); only then does this load give up sharing.
        """
        if self._used_bytes() + needed > self._budget():
            self._sweep(keep=None)
        used, budget = self._used_bytes(), self._budget()
        if used + needed > budget:
            raise _Unshared(
                f"a shared copy needs {needed / MB:.0f} MB and {self.directory} may hold "
                f"{max(budget - used, 0) / MB:.0f} MB more (SHARE_MAX_MB)"
            )
        free = self._disk_usage(self.directory).free
        if needed > free:
            raise _Unshared(
                f"a shared copy needs {needed / MB:.0f} MB and {self.directory} has "
                f"{free / MB:.0f} MB free"
            )

    def _budget(self) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        return self._disk_usage(self.directory).total // 2

    def _used_bytes(self) -> int:
        total = 0
        for name in self._names():
            with contextlib.suppress(FileNotFoundError):
                total += (self.directory / name).lstat().st_size
        return total

    def _map_existing(
        self, path: Path, manifest: Manifest, *, remove_bad: bool
    ) -> SharedSnapshot | None:
        """The copy at ``path`` mapped and checked; None if it is absent or bad.

        Only a process holding the version's lock removes a bad copy: without it, the file
        could be a good one written since this process looked.
        """
        try:
            return _map(path, manifest)
        except FileNotFoundError:
            return None
        except (_BadCopy, pa.ArrowException, OSError) as exc:
            if remove_bad:
                self._logger.warning(
                    "snapshot %s: shared copy %s is unusable (%s); writing it again",
                    manifest.version,
                    path.name,
                    _reason(exc),
                )
                path.unlink(missing_ok=True)
            return None

    def _private(self, manifest: Manifest, reason: str) -> Snapshot:
        self._warn_private(manifest.version, reason)
        return self._source.read_data(manifest)

    def _warn_private(self, version: str, reason: str) -> None:
        self._logger.warning("snapshot %s: not shared, serving a private copy: %s", version, reason)
        self._record(SharedLoad(version, "private", reason))

    def _record(self, load: SharedLoad) -> None:
        self.last_load = load

    # --- the directory, its locks and its clean-up ---------------------------------------------

    def _prepare_directory(self) -> None:
        """Create the directory; refuse one that another user could write to."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.lstat()
        if (
            not stat.S_ISDIR(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            raise _Unshared(f"{self.directory} is not a directory only this user can write")

    @contextlib.contextmanager
    def _locked(self, version: str) -> Iterator[None]:
        """Hold ``<version>.lock`` for the block, waiting at most ``lock_wait_seconds``."""
        fd = self._acquire(version, wait_seconds=self._lock_wait_seconds)
        if fd is None:
            raise _Unshared(f"another process held the lock for over {self._lock_wait_seconds:g} s")
        try:
            yield
        finally:
            os.close(fd)  # releases the flock

    def _acquire(self, version: str, *, wait_seconds: float) -> int | None:
        """An fd holding the version's lock, or None once ``wait_seconds`` have passed."""
        path = self.directory / f"{check_version(version)}{_LOCK_SUFFIX}"
        deadline = self._clock() + wait_seconds
        pause = _FIRST_PAUSE_SECONDS
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
            else:
                # A sweep may have removed the lock file between open and flock; a lock on
                # the removed file excludes nobody, so lock the file at the path instead.
                if _is_at(fd, path):
                    return fd
                os.close(fd)
                continue
            if self._clock() >= deadline:
                return None
            self._sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE_SECONDS)

    def _names(self) -> list[str]:
        """The names in the directory that this module writes (never anything else)."""
        try:
            with os.scandir(self.directory) as entries:
                return [entry.name for entry in entries if _NAME.match(entry.name)]
        except FileNotFoundError:
            return []

    def _files(self, version: str, *, temps_only: bool) -> list[Path]:
        found = []
        for name in self._names():
            match = _NAME.match(name)
            if match and match["version"] == version and (match["temp"] or not temps_only):
                found.append(self.directory / name)
        return found

    def _sweep(self, *, keep: str | None) -> None:
        """Remove every copy but ``keep``, and leftover temp and lock files.

        A version whose lock another process holds is being written: it is left for a later
        sweep. Failures here are logged, never raised: the load they follow has succeeded.
        """
        try:
            by_version: dict[str, list[str]] = {}
            for name in self._names():
                by_version.setdefault(name.partition(".")[0], []).append(name)
            kept = None if keep is None else keep.partition(".")[0]
            for version, names in sorted(by_version.items()):
                doomed = [n for n in names if n != keep and not n.endswith(_LOCK_SUFFIX)]
                if version == kept and not doomed:
                    continue
                self._sweep_version(version, doomed, drop_lock=version != kept)
        except OSError as exc:
            self._logger.warning("shared snapshot clean-up failed: %s", _reason(exc))

    def _sweep_version(self, version: str, doomed: list[str], *, drop_lock: bool) -> None:
        fd = self._acquire(version, wait_seconds=0)
        if fd is None:
            return
        try:
            self._remove([self.directory / name for name in doomed])
            if drop_lock:
                # Removed while held: a process that opened it meanwhile sees it gone and
                # locks a fresh file (see _acquire).
                (self.directory / f"{version}{_LOCK_SUFFIX}").unlink(missing_ok=True)
        finally:
            os.close(fd)
        if doomed:
            self._logger.info(
                "removed %d shared snapshot file(s) of version %s", len(doomed), version
            )

    @staticmethod
    def _remove(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)


def _for_copy(table: pa.Table, key_column: str) -> pa.Table:
    """``table`` as the copy holds it: one chunk per column, and its keys NUL-padded to one
    width where they have several.

    ``KeyIndex`` combines a column's chunks into one, and pads keys of several widths, in a
    private copy (about 100 MB of keys at 10M rows); done once here, every process maps the
    result instead. Snapshots written before issue 10 (1M-row row groups) decode in chunks.
    """
    table = table.combine_chunks()  # a no-op for columns in one chunk already
    keys = table.column(key_column)
    if _PADDED_KEYS in table.column_names or not pa.types.is_string(keys.type):
        return table
    padded = padded_keys(keys.chunk(0)) if keys.num_chunks == 1 else None
    return table if padded is None else table.append_column(_PADDED_KEYS, padded)


def _map(path: Path, manifest: Manifest) -> SharedSnapshot:
    """Memory-map the copy at ``path`` and check it against ``manifest``.

    Raises
    ------
    FileNotFoundError
        If there is no copy.
    _BadCopy, pa.ArrowException, OSError
        If it is not a complete copy of this snapshot.
    """
    with pa.memory_map(str(path), "r") as mapped:
        # Zero-copy: the table's buffers point into the mapping, and keep it alive after the
        # file is closed (or unlinked).
        table = pa.ipc.open_file(mapped).read_all()
    metadata = dict(table.schema.metadata or {})
    names = (metadata.pop(_META_VERSION, None), metadata.pop(_META_SHA256, None))
    if names != (manifest.version.encode(), manifest.sha256.encode()):
        raise _BadCopy("it names another snapshot")
    padded = None
    if _PADDED_KEYS in table.column_names:
        padded = table.column(_PADDED_KEYS).chunk(0)
        table = table.drop_columns([_PADDED_KEYS])
    if table.num_rows != manifest.row_count:
        raise _BadCopy(f"{table.num_rows} rows, the manifest says {manifest.row_count}")
    if columns_of(table.schema) != manifest.columns:
        raise _BadCopy("its columns differ from the manifest")
    # Buffer sizes against lengths and offsets' extent: cheap (no page is read), and enough
    # for a file that a crash cut short; full validation would read every page.
    table.validate()
    return SharedSnapshot(manifest, table.replace_schema_metadata(metadata or None), padded)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file that ``path`` names now."""
    try:
        at_path = path.lstat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _reason(exc: BaseException) -> str:
    """One line for the log: ours say why; an OSError names its errno and file."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the file system is full ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__}, {exc.filename or 'no file'})"
    return str(exc) or type(exc).__name__
