"""SnapshotCache: the current snapshot in memory, refreshed by pointer, never lost to a failure.

No boto3 and no ``os`` here: the snapshot source and both clocks are injected. The cache keeps
one ``_current`` reference and replaces it in a single assignment, so a request that took a
:class:`Serving` never sees a mix of two versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cachetools import TTLCache

from loaders.errors import LoaderError, SnapshotInvalidError
from service.errors import SnapshotUnavailableError
from loaders.index import KeyIndex

if TYPE_CHECKING:
    from loaders.manifest import Manifest, Pointer
    from loaders.snapshot import Snapshot

Clock = Callable[[], float]
_GATE_KEY = "pointer"


class SnapshotSource(Protocol):
    """Where snapshots come from (``loaders.snapshot.SnapshotReader`` in production)."""

    def read_pointer(self, *, if_none_match: str | None = None) -> Pointer | None: ...

    def read(self, version: str) -> Snapshot: ...


@dataclass(frozen=True, slots=True)
class Loaded:
    """A verified snapshot with its index, as held between requests."""

    manifest: Manifest
    index: KeyIndex
    created_at_epoch: float
    created_at_text: str


@dataclass(frozen=True, slots=True)
class Serving:
    """What one request works from: one snapshot's index and its status block."""

    index: KeyIndex
    snapshot: dict[str, Any]


class SnapshotCache:
    """Holds the last good snapshot and decides when to look for a newer one.

    Parameters
    ----------
    source : SnapshotSource
        Reads the pointer (conditionally) and verified snapshots.
    key_column : str
        The key column snapshots must be indexed by.
    ttl_seconds : float
        How long the pointer is trusted before the next conditional re-check.
    max_staleness_seconds : float
        Snapshot age past which the status block says ``"stale": true``.
    clock : callable, default time.monotonic
        Drives the TTL gate.
    wall_clock : callable, default time.time
        Epoch seconds, for snapshot age.
    """

    def __init__(
        self,
        source: SnapshotSource,
        *,
        key_column: str,
        ttl_seconds: float,
        max_staleness_seconds: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self._source = source
        self._key_column = key_column
        self._max_staleness_seconds = max_staleness_seconds
        self._wall_clock = wall_clock
        self._log = logger or logging.getLogger(__name__)
        # A one-slot TTLCache is the "pointer checked recently" gate: when its entry expires
        # the next request re-checks. The snapshot itself never lives in a TTLCache, because
        # an expired entry is gone, and stale beats empty.
        self._gate: TTLCache[str, bool] = TTLCache(maxsize=1, ttl=ttl_seconds, timer=clock)
        self._lock = threading.Lock()
        self._current: Loaded | None = None
        self._pointer_etag: str | None = None

    @property
    def version(self) -> str | None:
        """The version being served, if any."""
        current = self._current
        return None if current is None else current.manifest.version

    def get(self) -> Serving:
        """The snapshot to answer one request from, refreshing first if the TTL lapsed.

        Raises
        ------
        SnapshotUnavailableError
            If no good snapshot has ever been loaded.
        """
        if _GATE_KEY not in self._gate:
            # With a snapshot in hand, never queue behind another thread's refresh.
            self._refresh(blocking=self._current is None)
        return self.serving()

    def serving(self) -> Serving:
        """The current snapshot without any refresh.

        Raises
        ------
        SnapshotUnavailableError
            If no good snapshot has ever been loaded.
        """
        current = self._current
        if current is None:
            raise SnapshotUnavailableError("no snapshot is loaded yet; try again shortly")
        return Serving(current.index, self._status(current))

    def refresh(self) -> bool:
        """Check the pointer now, whatever the TTL; True if a new version was loaded."""
        return self._refresh(blocking=True)

    def _status(self, loaded: Loaded) -> dict[str, Any]:
        age = max(0.0, self._wall_clock() - loaded.created_at_epoch)
        return {
            "version": loaded.manifest.version,
            "created_at": loaded.created_at_text,
            "age_seconds": int(age),
            "stale": age > self._max_staleness_seconds,
        }

    def _refresh(self, *, blocking: bool) -> bool:
        if not self._lock.acquire(blocking=blocking):
            return False
        try:
            return self._check_pointer()
        finally:
            self._lock.release()

    def _check_pointer(self) -> bool:
        """One conditional pointer read, and a download only when the version changed."""
        pointer: Pointer | None = None
        try:
            pointer = self._source.read_pointer(if_none_match=self._pointer_etag)
            if pointer is None:
                return False
            if self.version == pointer.version:
                self._pointer_etag = pointer.etag
                return False
            loaded = self._load(pointer.version)
        except SnapshotInvalidError as exc:
            # Remember the pointer we rejected, so the next check is a cheap 304 until it moves.
            if pointer is not None:
                self._pointer_etag = pointer.etag
            self._log.error("snapshot rejected; serving %s: %s", self.version, exc)
            return False
        except LoaderError as exc:
            self._log.warning("refresh failed; serving %s: %s", self.version, exc)
            return False
        finally:
            # Failed or not, the next check waits a TTL: a failing store is not hammered.
            if self._current is not None:
                self._gate[_GATE_KEY] = True
        self._current = loaded  # the swap: one reference assignment
        self._pointer_etag = pointer.etag
        self._gate[_GATE_KEY] = True
        self._log.info("serving snapshot %s (%d rows)", loaded.manifest.version, len(loaded.index))
        return True

    def _load(self, version: str) -> Loaded:
        snapshot = self._source.read(version)
        manifest = snapshot.manifest
        if manifest.key_column != self._key_column:
            raise SnapshotInvalidError(
                f"snapshot {version} is keyed by {manifest.key_column!r}, not {self._key_column!r}"
            )
        return Loaded(
            manifest=manifest,
            index=KeyIndex(snapshot.table, manifest.key_column),
            created_at_epoch=manifest.created_at.timestamp(),
            created_at_text=manifest.created_at.isoformat().replace("+00:00", "Z"),
        )
