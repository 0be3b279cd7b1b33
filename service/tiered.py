"""TieredIndex: lookups over a snapshot's blocks, read by range into a bounded LRU.

A tiered reader holds a snapshot's block index (:mod:`loaders.blocks`: each block's key range,
offset and sha256) and the blocks it has read lately, never the table. A lookup bisects the
key ranges, then answers from a cached block, or reads that one block (one ranged read of at
most 128 KiB), verifies it and caches it. A batch groups its keys by block and reads the
blocks it lacks in parallel, on a pool shared by every version, each at most once.

It answers as :class:`loaders.index.KeyIndex` does (``get``, ``get_many``, ``len``), so the
routes serve both modes alike. A block that cannot be read within the wait, or does not
verify, fails only the request that needed it (:class:`service.errors.RowsUnavailableError`,
a 503); the version stays loaded and the next request tries again.

No boto3 here: reading a block's bytes is injected.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from loaders.blocks import Block, BlockIndex, decode_block
from loaders.errors import Failure, classify
from loaders.metrics import Metric
from service.errors import RowsUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from loaders.manifest import Manifest
    from loaders.metrics import MetricsRecorder

logger = logging.getLogger(__name__)


def _block_size(block: Block) -> int:
    return block.nbytes


class TieredIndex:
    """Exact-key lookups over one snapshot's blocks.

    Parameters
    ----------
    manifest : Manifest
        The snapshot's manifest (version, key column, columns).
    blocks : BlockIndex
        Its verified block index.
    read_block : callable
        Block number -> that block's bytes (one ranged read, bound by the store's budget).
    pool : ThreadPoolExecutor
        Runs the reads; its size caps the reads in flight.
    cache_bytes : int
        The most decoded blocks kept, by their Arrow bytes (``TIERED_CACHE_MB``).
    wait_seconds : float
        The longest a request waits on its reads before it gets a 503.
    retry_after_seconds : int
        The ``Retry-After`` of that 503.
    metrics : MetricsRecorder, optional
        Counts blocks read, reads failed and cache hits.
    """

    mode = "tiered"

    def __init__(
        self,
        manifest: Manifest,
        blocks: BlockIndex,
        read_block: Callable[[int], bytes],
        *,
        pool: ThreadPoolExecutor,
        cache_bytes: int,
        wait_seconds: float,
        retry_after_seconds: int = 1,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self.manifest = manifest
        self.blocks = blocks
        self._read_block = read_block
        self._pool = pool
        self._wait_seconds = wait_seconds
        self._retry_after_seconds = retry_after_seconds
        self._metrics = metrics
        # cachetools caches are not thread-safe: the lock guards it and the reads in flight.
        self._lock = threading.Lock()
        self._cache: LRUCache[int, Block] = LRUCache(maxsize=cache_bytes, getsizeof=_block_size)
        self._reading: dict[int, Future[Block]] = {}

    def __len__(self) -> int:
        return self.manifest.row_count

    @property
    def first_key(self) -> str:
        """The smallest key (an example to show)."""
        return self.blocks.first_keys[0]

    @property
    def nbytes(self) -> int:
        """What this reader holds now: the block index and the cached blocks."""
        return self.blocks.nbytes + int(self._cache.currsize)

    @property
    def cached_blocks(self) -> int:
        """How many decoded blocks the LRU holds."""
        return len(self._cache)

    def check_first_block(self) -> None:
        """Read, verify and cache the first block now, before this version serves.

        The block index says where the blocks are, not what they hold. A version whose blocks
        disagree with its manifest (columns, rows, keys) would otherwise load and then fail
        every lookup with a 503; memory mode finds that when it decodes the data, and so does
        this, at the same point: the version is rejected and the last good one keeps serving.

        Raises
        ------
        SnapshotInvalidError
            If the block does not verify or decode as the index and manifest say.
        StoreError
            If it cannot be read.
        """
        body = self._read_block(0)
        block = decode_block(self.manifest, self.blocks, 0, body)
        self._count_read(len(body))
        with self._lock:
            self._keep(0, block)

    def get(self, key: str) -> dict[str, Any] | None:
        """The row for ``key`` as a JSON-ready dict, or ``None``.

        Raises
        ------
        RowsUnavailableError
            If its block could not be read and verified in time.
        """
        number = self.blocks.find(key)
        if number is None:
            return None
        return self._blocks((number,))[number].index.get(key)

    def get_many(self, keys: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows found, in request order, and the keys not found (as ``KeyIndex.get_many``).

        Raises
        ------
        RowsUnavailableError
            If one of the blocks the batch needs could not be read and verified in time.
        """
        numbers = [self.blocks.find(key) for key in keys]
        by_block: dict[int, list[int]] = {}
        for slot, number in enumerate(numbers):
            if number is not None:
                by_block.setdefault(number, []).append(slot)
        found: list[dict[str, Any] | None] = [None] * len(keys)
        blocks = self._blocks(by_block)
        for number, slots in by_block.items():
            wanted = [keys[slot] for slot in slots]
            rows, missing = blocks[number].index.get_many(wanted)
            absent = set(missing)
            hits = iter(rows)
            for slot, key in zip(slots, wanted, strict=True):
                if key not in absent:
                    found[slot] = next(hits)
        items = [row for row in found if row is not None]
        missing_keys = [key for key, row in zip(keys, found, strict=True) if row is None]
        return items, missing_keys

    def _blocks(self, numbers: Collection[int]) -> dict[int, Block]:
        """The decoded blocks ``numbers``: from the LRU, else read (at most once each)."""
        found: dict[int, Block] = {}
        waiting: dict[int, Future[Block]] = {}
        with self._lock:
            for number in numbers:
                block = self._cache.get(number)
                if block is not None:
                    found[number] = block
                    continue
                future = self._reading.get(number)
                if future is None:  # another request may be reading it already: join that
                    future = self._reading[number] = self._pool.submit(self._read, number)
                waiting[number] = future
        if self._metrics is not None and found:
            self._metrics.count(Metric.BLOCK_CACHE_HITS, len(found))
        if waiting:
            done, pending = wait(waiting.values(), self._wait_seconds, FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                raise RowsUnavailableError(
                    "the rows for this request could not be read; try again",
                    retry_after_seconds=self._retry_after_seconds,
                ) from failed.exception()
            if pending:
                # The reads go on and fill the cache; this request answers now.
                raise RowsUnavailableError(
                    f"reading the rows for this request took over {self._wait_seconds:g}s; "
                    "try again",
                    retry_after_seconds=self._retry_after_seconds,
                )
            found.update((number, future.result()) for number, future in waiting.items())
        return found

    def _read(self, number: int) -> Block:
        """Read, verify and cache block ``number`` (on the pool)."""
        try:
            body = self._read_block(number)
            block = decode_block(self.manifest, self.blocks, number, body)
        except BaseException as exc:
            self._log_failure(number, exc)
            with self._lock:
                self._reading.pop(number, None)
            raise
        self._count_read(len(body))
        with self._lock:
            self._keep(number, block)
            self._reading.pop(number, None)
        return block

    def _count_read(self, size: int) -> None:
        if self._metrics is not None:
            self._metrics.count(Metric.BLOCK_READS)
            self._metrics.count(Metric.BLOCK_READ_BYTES, size)

    def _keep(self, number: int, block: Block) -> None:
        """Cache ``block`` (the caller holds the lock)."""
        if block.nbytes <= self._cache.maxsize:
            self._cache[number] = block  # evicts the least recently used past the budget

    def _log_failure(self, number: int, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.count(Metric.BLOCK_READ_FAILURES)
        version = self.manifest.version
        # Block numbers and versions only: no key of the request reaches the log.
        if not isinstance(exc, Exception):
            return
        failure = classify(exc)
        if failure is Failure.TRANSIENT:
            logger.warning("block %d of snapshot %s could not be read: %s", number, version, exc)
        elif failure is Failure.PERMANENT:
            logger.error("block %d of snapshot %s is bad: %s", number, version, exc)
        else:
            logger.exception("block %d of snapshot %s failed on a bug", number, version)
