"""The SnapStart after-restore hook, run the way the runtime runs it: awslambdaric's
``run_after_restore`` calls each ``snapshot_restore_py.get_after_restore()`` entry in order.

A real SnapshotCache over the in-memory source and fake clocks; a client "renewal" is a callable
the test hands in (tests/integration/test_snapstart_s3.py renews a real S3 store's client).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import snapshot_restore_py
from awslambdaric.lambda_runtime_hooks_runner import run_after_restore

import service.snapstart
from loaders.errors import StoreError
from service.cache import SnapshotCache
from service.settings import Settings
from service.snapstart import RestoreHook, register_restore_hook
from tests.conftest import customers
from tests.unit.conftest import InMemorySource, make_cache

if TYPE_CHECKING:
    from collections.abc import Iterator

    from loaders.manifest import Pointer
    from tests.conftest import FakeClock

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

NEW_KEY = "C000000009"


@pytest.fixture(autouse=True)
def registry() -> Iterator[list[Any]]:
    """The runtime's after-restore registry, emptied for each test and put back after it."""
    hooks = snapshot_restore_py.get_after_restore()
    saved = list(hooks)
    hooks.clear()
    yield hooks
    hooks[:] = saved


@pytest.fixture
def loaded(cache: SnapshotCache, published: str) -> SnapshotCache:
    """``cache`` serving ``published``, its TTL not lapsed."""
    cache.get()
    return cache


def _register(cache: SnapshotCache, **options: Any) -> RestoreHook:
    hook = RestoreHook(cache, **options)
    snapshot_restore_py.register_after_restore(hook)
    return hook


def test_register_adds_one_after_restore_hook_for_the_cache(
    cache: SnapshotCache, registry: list[Any]
) -> None:
    hook = register_restore_hook(cache, Settings(snapshot_uri="file:///snapshots"))

    assert [entry[0] for entry in registry] == [hook]


def test_without_snapshot_restore_py_nothing_is_registered(
    cache: SnapshotCache, registry: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.snapstart, "snapshot_restore_py", None)

    assert register_restore_hook(cache, Settings(snapshot_uri="file:///snapshots")) is None
    assert registry == []


def test_after_restore_reseeds_random(loaded: SnapshotCache) -> None:
    _register(loaded)
    random.seed(7)
    in_lockstep = random.Random(7).random()  # what every copy of the image would draw next

    run_after_restore()

    assert random.random() != in_lockstep


def test_after_restore_renews_the_client_then_reads_the_pointer(
    loaded: SnapshotCache, source: InMemorySource
) -> None:
    steps: list[str] = []
    reads_before = len(source.pointer_reads)
    original = source.read_pointer

    def read_pointer(*, if_none_match: str | None = None) -> Pointer | None:
        steps.append("pointer")
        return original(if_none_match=if_none_match)

    source.read_pointer = read_pointer  # type: ignore[method-assign]
    _register(loaded, renew_client=lambda: steps.append("client"))

    run_after_restore()

    assert steps == ["client", "pointer"]
    assert len(source.pointer_reads) == reads_before + 1


def test_after_restore_loads_a_version_announced_since_the_image_within_the_ttl(
    loaded: SnapshotCache, source: InMemorySource
) -> None:
    new = source.publish(customers([NEW_KEY]))
    assert not loaded.is_check_due  # a request now would serve the image's version
    _register(loaded)

    run_after_restore()

    assert loaded.serving().snapshot["version"] == new


def test_after_restore_check_is_conditional(
    loaded: SnapshotCache, source: InMemorySource, published: str
) -> None:
    assert source.pointer is not None
    _register(loaded)

    run_after_restore()

    assert source.pointer_reads[-1] == source.pointer.etag  # answered "not modified"
    assert source.reads == [published]  # nothing downloaded again
    assert not loaded.is_check_due


def test_failing_client_renewal_does_not_raise_and_leaves_the_check_due(
    loaded: SnapshotCache, source: InMemorySource, caplog: pytest.LogCaptureFixture
) -> None:
    reads_before = len(source.pointer_reads)

    def renew() -> None:
        raise RuntimeError("no credentials yet")

    _register(loaded, renew_client=renew)

    run_after_restore()

    assert loaded.is_check_due
    assert len(source.pointer_reads) == reads_before
    assert any("no new S3 client" in r.getMessage() for r in caplog.records)


def test_failing_pointer_check_does_not_raise_and_leaves_the_check_due(
    loaded: SnapshotCache,
    source: InMemorySource,
    published: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source.pointer_error = StoreError("connection reset")
    _register(loaded)

    run_after_restore()

    assert loaded.is_check_due
    assert loaded.serving().snapshot["version"] == published
    assert any("pointer check failed" in r.getMessage() for r in caplog.records)


def test_a_bug_in_the_hook_does_not_raise(
    loaded: SnapshotCache, caplog: pytest.LogCaptureFixture
) -> None:
    def reseed() -> None:
        raise KeyError("a bug")

    _register(loaded, reseed=reseed)

    run_after_restore()

    assert loaded.is_check_due
    assert any(r.levelno == logging.ERROR for r in caplog.records)


class _HungSource(InMemorySource):
    """Pointer reads block until the test sets ``release`` (an S3 that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.hung = False

    def read_pointer(self, *, if_none_match: str | None = None) -> Pointer | None:
        if self.hung:
            self.release.wait(10)
        return super().read_pointer(if_none_match=if_none_match)


def test_hung_pointer_check_ends_the_hook_at_the_refresh_wait(
    clock: FakeClock, wall_clock: FakeClock, small_table: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hung = _HungSource()
    version = hung.publish(small_table)
    cache = make_cache(hung, clock, wall_clock, refresh_wait_seconds=0.05)
    cache.get()
    hung.hung = True
    _register(cache)

    started = time.monotonic()
    run_after_restore()

    assert time.monotonic() - started < 1.0  # well inside the 10 s restore budget
    assert cache.serving().snapshot["version"] == version
    assert any("still running" in r.getMessage() for r in caplog.records)
    hung.release.set()
    assert cache.wait(5)


def test_hook_without_a_snapshot_loaded_still_returns_at_the_refresh_wait(
    clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    hung = _HungSource()
    hung.publish(small_table)
    hung.hung = True
    # The load wait (7 s by default) would not fit the restore budget beside the runtime's load.
    cache = make_cache(hung, clock, wall_clock, refresh_wait_seconds=0.05, load_wait_seconds=30)
    _register(cache)

    started = time.monotonic()
    run_after_restore()

    assert time.monotonic() - started < 1.0
    hung.release.set()
    assert cache.wait(5)
