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
