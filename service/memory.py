"""Memory of the lookup process: what a snapshot will cost, and handing freed pages back.

No ``os`` and no clock here. The figures are estimates the cache compares with its budget
before it downloads anything; RSS itself is measured in ``scripts/bench.py --soak``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from collections.abc import Callable

    from loaders.manifest import Manifest

# The key index and row readers add to the Arrow table; bench measured 1.05-1.2x nbytes.
INDEX_OVERHEAD = 1.2


def projected_bytes(manifest: Manifest) -> int | None:
    """Memory a reader holds for ``manifest``'s snapshot while loading it: the table with its
    index, plus the downloaded bytes it is decoded from. None for manifests that predate
    ``table_bytes``."""
    if manifest.table_bytes is None:
        return None
    return int(manifest.table_bytes * INDEX_OVERHEAD) + manifest.bytes


def lookup_memory_pool() -> pa.MemoryPool:
    """The pool the lookup process decodes snapshots into: jemalloc, set to hand freed pages
    back to the system at once, where this pyarrow has it; the system allocator elsewhere.

    Decoding grows many buffers. The system pool cannot grow one in place (glibc's realloc
    keeps no 64-byte alignment, so Arrow allocates, copies and frees), and every new large
    block is fresh memory that faults in page by page: a 10M-row decode took about 350,000
    page faults for a 500 MB table, against about 210,000 with jemalloc, which grows blocks in
    place and reuses its extents. Measured with ``scripts/bench.py --load`` (fresh processes;
    RSS after the load at 1M / 10M rows; steady RSS after five refreshes against the first):

    ==================  ==================  =====================  ==============  ==========
    pool                1M: load CPU s      10M: load CPU s        RSS / nbytes    refreshes
    ==================  ==================  =====================  ==============  ==========
    system              0.185               1.79                   1.09 / 1.04     flat
    jemalloc, decay 0   0.145               1.35                   1.10 / 1.05     flat
    jemalloc, 1 s       0.140               1.41                   1.63 / 1.33     +30-66%
    mimalloc            0.197               3.11                   1.49 / 1.10     flat
    ==================  ==================  =====================  ==============  ==========

    With pyarrow's default decay (1 s, by a background thread) jemalloc keeps freed pages
    past a load and across refreshes, and Lambda freezes that thread between invocations;
    with decay 0 it frees them as the system pool does. mimalloc's first decode in a fresh
    process was the slowest of all.

    Parquet's page buffers come from Arrow's C++ default pool (mimalloc unless the
    ``ARROW_DEFAULT_MEMORY_POOL`` environment variable says otherwise), whatever is set here.
    """
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.system_memory_pool()
    pa.jemalloc_set_decay_ms(0)
    return pool


# glibc's mallopt parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _glibc(function: str) -> Callable[..., int] | None:
    """A glibc function, or None on other C libraries (musl, macOS): nothing to tune there."""
    return getattr(_libc(), function, None)


def pin_mmap_threshold() -> None:
    """Serve every block of 128 KiB or more from its own mmap, for the process's lifetime.

    glibc raises its mmap threshold (up to 32 MiB) the first time a large mmapped block is
    freed. After that, column buffers and downloaded bodies land in per-thread heaps (the
    refresh worker's, Arrow's decoders') that malloc_trim does not fully give back, and
    steady RSS grew 1.19-1.24x over 5 refreshes at 1M rows. Pinned, it stays within 1.01x
    and the refresh peak drops by 60-80 MB (``scripts/bench.py --soak``). Call it once,
    before the first load.
    """
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_unused() -> None:
    """Return freed memory to the system: Arrow's pool first, then glibc's heap.

    glibc keeps freed blocks of a swapped-out snapshot for reuse unless trimmed, so without
    this RSS grows by tens of MB over a few refreshes.
    """
    pa.default_memory_pool().release_unused()
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)
