"""The lookup process's memory pool: jemalloc handing pages back at once, or the system pool."""

from __future__ import annotations

import pyarrow as pa
import pytest

from service.memory import lookup_memory_pool


def test_lookup_pool_is_jemalloc_where_pyarrow_has_it() -> None:
    try:
        pa.jemalloc_memory_pool()
        expected = "jemalloc"
    except NotImplementedError:  # a build without jemalloc: the fallback must be taken
        expected = "system"

    assert lookup_memory_pool().backend_name == expected


def test_lookup_pool_is_the_system_pool_without_jemalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_jemalloc() -> pa.MemoryPool:
        raise NotImplementedError("jemalloc support is not enabled")

    monkeypatch.setattr(pa, "jemalloc_memory_pool", no_jemalloc)

    assert lookup_memory_pool().backend_name == "system"
