"""SnapshotCache: the current snapshot in memory, refreshed by pointer, never lost to a failure.

No boto3 and no ``os`` here: the snapshot source, the clocks and the memory release are
injected. The cache keeps one ``_current`` reference and replaces it in a single assignment, so
a request that took a :class:`Serving` never sees a mix of two versions.

Every pointer check (and any download it leads to) runs on a worker thread, and a request waits
for it only up to a deadline: ``refresh_wait_seconds`` with a snapshot in hand, and
``load_wait_seconds`` without one. Past the deadline the request answers from what is loaded
(or with a 503), and the check finishes on its own, bounded by the store client's timeouts.
What a failure means is decided once, by :func:`loaders.errors.classify`.

A version is served in one of two modes (``serve_mode``): ``memory`` holds the whole table with
its :class:`loaders.index.KeyIndex`; ``tiered`` holds only the block index and reads blocks by
range as lookups need them (:class:`service.tiered.TieredIndex`). ``auto`` picks tiered for a
version whose projected memory does not fit the budget beside what is held.

Where something else runs the due checks between requests (``service.refresher``: an internal
extension after each response, or a timer thread), ``checks_in_request`` is off and a request
with a snapshot in hand never starts one.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cachetools import TTLCache

from loaders.errors import (
    Failure,
    ObjectNotFoundError,
    SnapshotInvalidError,
    SnapshotTooLargeError,
    classify,
)
from loaders.index import KeyIndex
from loaders.manifest import MAX_CLOCK_SKEW_SECONDS, utc_text
from loaders.metrics import Metric, pointer_check_metric
from service.errors import SnapshotUnavailableError
from service.memory import projected_bytes, release_unused

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from loaders.blocks import BlockIndex
    from loaders.manifest import Manifest, Pointer
    from loaders.metrics import MetricsRecorder
    from loaders.snapshot import Snapshot
    from service.tiered import TieredIndex

Clock = Callable[[], float]
_GATE_KEY = "pointer"
MB = 1 << 20
SERVE_MODES = ("auto", "memory", "tiered")
# Created at module scope so that the handler's Powertools set-up (which configures only the
# loggers that exist when it runs) turns these lines into JSON too.
logger = logging.getLogger(__name__)


class SnapshotSource(Protocol):
    """Where snapshots come from (``loaders.snapshot.SnapshotReader`` in production)."""

    def read_pointer(self, *, if_none_match: str | None = None) -> Pointer | None: ...

    def read_manifest(self, version: str) -> Manifest: ...

    def read_data(self, manifest: Manifest) -> Snapshot: ...

    def read_block_index(self, manifest: Manifest) -> BlockIndex: ...

    def read_block(self, manifest: Manifest, blocks: BlockIndex, number: int) -> bytes: ...


class Lookup(Protocol):
    """What a request reads rows through: a KeyIndex (memory) or a TieredIndex (tiered)."""

    def __len__(self) -> int: ...

    @property
    def first_key(self) -> str | None: ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def get_many(self, keys: Any) -> tuple[list[dict[str, Any]], list[str]]: ...


class CheckOutcome(enum.Enum):
    """What one pointer check did."""

    UNCHANGED = "unchanged"  # the pointer names what is served (or answered 304)
    LOADED = "loaded"  # a new version is served
    DEGRADED = "degraded"  # the announced version was rejected; a previous one is served
    REJECTED = "rejected"  # the announced version is bad; the last good one is kept
    FAILED = "failed"  # storage, time, memory, or a bug; tried again after the TTL
    PENDING = "pending"  # still running when the caller's deadline passed


# Outcomes after which the pointer is known to name what is served (or, degraded, known bad).
_CONFIRMED = frozenset({CheckOutcome.UNCHANGED, CheckOutcome.LOADED, CheckOutcome.DEGRADED})


def _utc_text(epoch_seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))


@dataclass(frozen=True, slots=True)
class Loaded:
    """A verified snapshot with its index, as held between requests."""

    manifest: Manifest
    index: Lookup
    created_at_epoch: float
    created_at_text: str
    degraded: bool = False
    mode: str = "memory"
    held_bytes: int = 0  # what the memory budget counts for it


@dataclass(frozen=True, slots=True)
class Serving:
    """What one request works from: one snapshot's index and its status block."""

    index: Lookup
    snapshot: dict[str, Any]


class _Check:
    """One pointer check in flight: done once its outcome is set."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome = CheckOutcome.PENDING


class SnapshotCache:
    """Holds the last good snapshot and decides when to look for a newer one.

    Parameters
    ----------
    source : SnapshotSource
        Reads the pointer (conditionally), manifests and verified snapshots.
    key_column : str
        The key column snapshots must be indexed by.
    ttl_seconds : float
        How long the pointer is trusted before the next conditional re-check.
    max_staleness_seconds : float
        Snapshot age past which the status block says ``"stale": true``.
    refresh_wait_seconds : float, default 2.5
        The longest a request with a snapshot in hand waits on a pointer check or reload.
    load_wait_seconds : float, default 7
        The longest a request waits for the first load before it gets a 503.
    retry_after_seconds : int, default 5
        The ``Retry-After`` of that 503.
    memory_budget_bytes : int or None
        A version whose projected memory does not fit beside the current one is refused.
    clock : callable, default time.monotonic
        Drives the TTL gate.
    wall_clock : callable, default time.time
        Epoch seconds, for snapshot age and the future-version check.
    release_memory : callable
        Hands freed pages back to the system after a swap.
    metrics : MetricsRecorder, optional
        Counts pointer checks by outcome, and samples each load's seconds, rows and bytes.
    serve_mode : str, default "auto"
        ``memory``, ``tiered`` (a version without blocks is served from memory, with a
        warning), or ``auto`` (tiered when memory does not fit the budget).
    tiered_cache_bytes : int, default 128 MiB
        The most decoded blocks a tiered version keeps.
    tiered_fetch_workers : int, default 8
        The most block reads in flight at once.
    checks_in_request : bool, default True
        Whether :meth:`get` starts the due check itself. Off while a refresher runs due checks
        between requests (:meth:`check_if_due`); a request without any snapshot still waits
        for the first load, since there is nothing to answer from. The attribute of that name
        may be switched at any time (a refresher that stops hands the checks back).
    """

    def __init__(
        self,
        source: SnapshotSource,
        *,
        key_column: str,
        ttl_seconds: float,
        max_staleness_seconds: float,
        refresh_wait_seconds: float = 2.5,
        load_wait_seconds: float = 7.0,
        retry_after_seconds: int = 5,
        memory_budget_bytes: int | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        release_memory: Callable[[], None] = release_unused,
        metrics: MetricsRecorder | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        checks_in_request: bool = True,
        serve_mode: str = "auto",
        tiered_cache_bytes: int = 128 * MB,
        tiered_fetch_workers: int = 8,
    ) -> None:
        if serve_mode not in SERVE_MODES:
            raise ValueError(f"serve_mode {serve_mode!r} is not one of {SERVE_MODES}")
        self.checks_in_request = checks_in_request
        self._serve_mode = serve_mode
        self._tiered_cache_bytes = tiered_cache_bytes
        self._tiered_fetch_workers = tiered_fetch_workers
        self._block_pool: ThreadPoolExecutor | None = None
        self._source = source
        self._key_column = key_column
        self._max_staleness_seconds = max_staleness_seconds
        self._refresh_wait_seconds = refresh_wait_seconds
        self._load_wait_seconds = load_wait_seconds
        self._retry_after_seconds = retry_after_seconds
        self._memory_budget_bytes = memory_budget_bytes
        self._wall_clock = wall_clock
        self._release_memory = release_memory
        self._metrics = metrics
        self._clock = clock
        self._log = logger or globals()["logger"]
        # A one-slot TTLCache is the "pointer checked recently" gate: when its entry expires
        # the next request re-checks. The snapshot itself never lives in a TTLCache, because
        # an expired entry is gone, and stale beats empty.
        self._gate: TTLCache[str, bool] = TTLCache(maxsize=1, ttl=ttl_seconds, timer=clock)
        self._checks = threading.Lock()  # guards _in_flight
        self._in_flight: _Check | None = None
        self._current: Loaded | None = None
        self._pointer_etag: str | None = None
        self._rejected_version: str | None = None  # the last announced version found bad
        self._checked_at: str | None = None  # when the pointer last confirmed what is served

    @property
    def version(self) -> str | None:
        """The version being served, if any."""
        current = self._current
        return None if current is None else current.manifest.version

    @property
    def source(self) -> SnapshotSource:
        """Where snapshots come from (what an after-restore hook gives a fresh client)."""
        return self._source

    @property
    def refresh_wait_seconds(self) -> float:
        """The longest a caller with a snapshot in hand waits on one check."""
        return self._refresh_wait_seconds

    @property
    def is_check_due(self) -> bool:
        """Whether the TTL lapsed (or was expired) since the last check finished."""
        return _GATE_KEY not in self._gate

    def expire(self) -> None:
        """Expire the TTL gate now: the next :meth:`get` or :meth:`check_if_due` checks."""
        self._gate.pop(_GATE_KEY, None)

    def get(self) -> Serving:
        """The snapshot to answer one request from, checking the pointer first if the TTL lapsed.

        With ``checks_in_request`` off, a due check is left to the refresher unless nothing is
        loaded yet.

        Raises
        ------
        SnapshotUnavailableError
            If no good snapshot is loaded when the load deadline passes.
        """
        if _GATE_KEY not in self._gate and (self.checks_in_request or self._current is None):
            # With a snapshot in hand, never queue behind another request's check.
            self._check(join=self._current is None)
        return self.serving()

    def check_if_due(self, *, wait_seconds: float | None = None) -> CheckOutcome | None:
        """Run the due check now, joining one in flight; None when no check is due.

        Parameters
        ----------
        wait_seconds : float, optional
            How long to wait for it; by default the cache's own deadline (the refresh wait
            with a snapshot, the load wait without). A check still running then goes on alone
            and this returns ``CheckOutcome.PENDING``.
        """
        if _GATE_KEY in self._gate:
            return None
        return self._check(join=True, wait_seconds=wait_seconds)

    def serving(self) -> Serving:
        """The current snapshot without any refresh.

        Raises
        ------
        SnapshotUnavailableError
            If no good snapshot has been loaded.
        """
        current = self._current
        if current is None:
            raise SnapshotUnavailableError(
                "no snapshot is loaded yet; try again shortly",
                retry_after_seconds=self._retry_after_seconds,
            )
        return Serving(current.index, self._status(current))

    def refresh(self) -> bool:
        """Check the pointer now, whatever the TTL, waiting for it up to the deadline.

        Returns True when the check swapped in another version.
        """
        return self._check(join=True) in (CheckOutcome.LOADED, CheckOutcome.DEGRADED)

    def wait(self, timeout_seconds: float | None = None) -> bool:
        """Wait for a check in flight to finish; True when none is left running."""
        check = self._in_flight
        return check is None or check.done.wait(timeout_seconds)

    def age_seconds(self) -> float | None:
        """Age of the served snapshot's data (since its query started), if one is loaded."""
        current = self._current
        return None if current is None else max(0.0, self._wall_clock() - current.created_at_epoch)

    def _status(self, loaded: Loaded) -> dict[str, Any]:
        age = max(0.0, self._wall_clock() - loaded.created_at_epoch)
        status = {
            "version": loaded.manifest.version,
            "created_at": loaded.created_at_text,
            "age_seconds": int(age),
            "stale": age > self._max_staleness_seconds,
            "checked_at": self._checked_at,
            "mode": loaded.mode,
        }
        if loaded.degraded:
            status["degraded"] = True
        return status

    def _check(self, *, join: bool, wait_seconds: float | None = None) -> CheckOutcome:
        cold = self._current is None
        with self._checks:
            check = self._in_flight
            if check is None or check.done.is_set():
                check = self._in_flight = _Check()
                threading.Thread(
                    target=self._run, args=(check,), name="snapshot-refresh", daemon=True
                ).start()
            elif not join:
                return CheckOutcome.PENDING
        wait = wait_seconds
        if wait is None:
            wait = self._load_wait_seconds if cold else self._refresh_wait_seconds
        if not check.done.wait(wait):
            self._log.warning(
                "pointer check still running after %.1fs; serving %s", wait, self.version
            )
        return check.outcome

    def _run(self, check: _Check) -> None:
        try:
            check.outcome = outcome = self._check_pointer()
            if outcome in _CONFIRMED:
                self._checked_at = _utc_text(self._wall_clock())
            if self._metrics is not None:
                self._metrics.count(pointer_check_metric(outcome.value))
        finally:
            # Failed or not, the next check waits a TTL: a failing store is not hammered.
            # Without a snapshot, every request tries again (joining any check in flight).
            if self._current is not None:
                self._gate[_GATE_KEY] = True
            check.done.set()

    def _check_pointer(self) -> CheckOutcome:
        """One conditional pointer read, and a download only when the version changed."""
        pointer: Pointer | None = None
        try:
            pointer = self._source.read_pointer(if_none_match=self._pointer_etag)
            if pointer is None:
                return CheckOutcome.UNCHANGED
            if self.version == pointer.version:
                self._pointer_etag = pointer.etag
                return CheckOutcome.UNCHANGED
            if pointer.version == self._rejected_version:
                # Known bad (its pointer was re-read only because a fallback was incomplete):
                # never download it again, only retry the fallback.
                return self._fall_back(pointer)
            self._swap(self._load(pointer.version))
        except Exception as exc:  # noqa: BLE001 - classified below; nothing reaches a request
            return self._failed(exc, pointer)
        self._pointer_etag = pointer.etag
        return CheckOutcome.LOADED

    def _failed(self, exc: Exception, pointer: Pointer | None) -> CheckOutcome:
        failure = classify(exc)
        if failure is Failure.TRANSIENT:
            self._log.warning("refresh failed; serving %s: %s", self.version, exc)
            return CheckOutcome.FAILED
        if failure is Failure.BUG:
            self._log.exception("refresh failed on a bug; serving %s", self.version)
            return CheckOutcome.FAILED
        self._log.error("snapshot rejected; serving %s: %s", self.version, exc)
        if pointer is None:  # the pointer itself is bad: remember it by the ETag it came with
            self._pointer_etag = getattr(exc, "etag", None)
            return CheckOutcome.REJECTED
        self._rejected_version = pointer.version
        return self._fall_back(pointer)

    def _fall_back(self, pointer: Pointer) -> CheckOutcome:
        """With the announced version rejected and nothing good loaded (or only a degraded
        one), serve the newest previous version that loads.

        The pointer's ETag is remembered (so later checks are a cheap 304) unless a newer
        candidate failed for a reason that may pass; then the next check retries the fallback.
        """
        current = self._current
        if current is not None and not current.degraded:
            self._pointer_etag = pointer.etag  # a warm reader keeps its own good version
            return CheckOutcome.REJECTED
        settled = True
        for version in pointer.previous:
            if current is not None and version == current.manifest.version:
                break  # nothing newer loads; keep serving this one
            try:
                self._swap(self._load(version, degraded=True))
            except ObjectNotFoundError as exc:
                # Gone (deleted, or 403 without ListBucket): it cannot load; try an older one.
                self._log.error("previous snapshot %s is missing: %s", version, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - classified below
                if classify(exc) is not Failure.PERMANENT:
                    settled = False
                self._log.error("previous snapshot %s did not load: %s", version, exc)
                continue
            self._log.warning(
                "serving previous snapshot %s (degraded): %s was rejected",
                version,
                pointer.version,
            )
            break
        if settled:
            self._pointer_etag = pointer.etag
        if self._current is not current:
            return CheckOutcome.DEGRADED
        return CheckOutcome.REJECTED if settled else CheckOutcome.FAILED

    def _load(self, version: str, *, degraded: bool = False) -> Loaded:
        started = self._clock()
        manifest = self._source.read_manifest(version)
        index: Lookup
        if self._admit(manifest) == "tiered":
            tiered = self._tiered(manifest)
            index, mode, held = tiered, "tiered", tiered.nbytes + self._tiered_cache_bytes
            read_bytes = manifest.blocks.index_bytes if manifest.blocks else 0
        else:
            snapshot = self._source.read_data(manifest)
            # A shared copy (service.shared) carries keys of several widths padded once.
            padded = getattr(snapshot, "padded_keys", None)
            index = KeyIndex(snapshot.table, manifest.key_column, padded_keys=padded)
            mode, held, read_bytes = "memory", projected_bytes(manifest) or 0, manifest.bytes
        loaded = Loaded(
            manifest=manifest,
            index=index,
            created_at_epoch=manifest.created_at.timestamp(),
            created_at_text=utc_text(manifest.created_at) or "",
            degraded=degraded,
            mode=mode,
            held_bytes=held,
        )
        if self._metrics is not None:
            self._metrics.sample(Metric.LOAD_SECONDS, self._clock() - started)
            self._metrics.sample(Metric.LOAD_ROWS, manifest.row_count)
            self._metrics.sample(Metric.LOAD_BYTES, read_bytes)
        return loaded

    def _tiered(self, manifest: Manifest) -> TieredIndex:
        """A tiered reader of ``manifest``'s blocks: only the block index is read now."""
        from concurrent.futures import ThreadPoolExecutor  # tiered only: off memory's path

        from service.tiered import TieredIndex

        blocks = self._source.read_block_index(manifest)
        if self._block_pool is None:
            self._block_pool = ThreadPoolExecutor(
                self._tiered_fetch_workers, thread_name_prefix="block-read"
            )
        source = self._source
        tiered = TieredIndex(
            manifest,
            blocks,
            lambda number: source.read_block(manifest, blocks, number),
            pool=self._block_pool,
            cache_bytes=self._tiered_cache_bytes,
            # The read goes on after a 503, so a retry a second later usually finds it cached.
            wait_seconds=self._refresh_wait_seconds,
            metrics=self._metrics,
        )
        # One block read at load: blocks that disagree with the manifest reject the version
        # here (stale-on-error), as a memory load rejects bad data, not in every request.
        tiered.check_first_block()
        return tiered

    def _admit(self, manifest: Manifest) -> str:
        """Refuse a version before downloading it: empty, wrong key, from the future, too big.

        Returns the mode to serve it in.
        """
        version = manifest.version
        if manifest.row_count < 1:
            raise SnapshotInvalidError(f"snapshot {version} has no rows")
        if manifest.key_column != self._key_column:
            raise SnapshotInvalidError(
                f"snapshot {version} is keyed by {manifest.key_column!r}, not {self._key_column!r}"
            )
        ahead = manifest.created_at.timestamp() - self._wall_clock()
        if ahead > MAX_CLOCK_SKEW_SECONDS:
            raise SnapshotInvalidError(
                f"snapshot {version} was created {ahead:.0f}s in the future; "
                f"the most clock skew allowed is {MAX_CLOCK_SKEW_SECONDS:.0f}s"
            )
        budget = self._memory_budget_bytes
        needed = projected_bytes(manifest)
        current = self._current
        held = 0 if current is None else current.held_bytes
        fits = budget is None or needed is None or held + needed <= budget
        mode = self._serve_mode
        if manifest.blocks is not None and (mode == "tiered" or (mode == "auto" and not fits)):
            if not fits:
                self._log.info(
                    "snapshot %s needs about %.0f MB beside the %.0f MB held, over the %.0f MB "
                    "budget: serving it tiered",
                    version,
                    (needed or 0) / MB,
                    held / MB,
                    (budget or 0) / MB,
                )
            return "tiered"
        if mode == "tiered":
            self._log.warning("snapshot %s has no blocks (built before issue 11): memory", version)
        if not fits:
            raise SnapshotTooLargeError(
                f"snapshot {version} needs about {(needed or 0) / MB:.0f} MB beside the "
                f"{held / MB:.0f} MB held; the memory budget is {(budget or 0) / MB:.0f} MB"
            )
        return "memory"

    def _swap(self, loaded: Loaded) -> None:
        self._current = loaded  # the swap: one reference assignment
        manifest = loaded.manifest
        self._log.info(
            "serving snapshot %s (%d rows, %s)", manifest.version, len(loaded.index), loaded.mode
        )
        # The old snapshot's last reference went with the swap; give its pages back, so
        # steady RSS does not creep up refresh after refresh.
        self._release_memory()
