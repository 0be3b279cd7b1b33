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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_unused() -> None:
    """Return freed memory to the system: Arrow's pool first, then glibc's heap.

    glibc keeps freed blocks of a swapped-out snapshot for reuse unless trimmed, so without
    this RSS grows by tens of MB over a few refreshes.
    """
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
