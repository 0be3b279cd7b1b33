"""Refreshing between requests: the cache's deferred mode, the internal extension's steps against
an in-memory Extensions API, the timer thread, and which refresher each platform gets.

Real caches over the in-memory source and fake clocks. The extension's HTTP side, the real
runtime client and the freeze between invocations are in tests/e2e/test_runtime_extension.py.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

import pytest

import service.refresher
from service.cache import CheckOutcome, SnapshotCache
from service.refresher import (
    AfterResponse,
    ExtensionError,
    TimedRefresher,
    start_refresher,
    wrap_handler,
)
from service.settings import ConfigError, Settings
from tests.conftest import customers
from tests.unit.conftest import TTL_SECONDS, InMemorySource, make_cache

if TYPE_CHECKING:
    from collections.abc import Iterator

    from loaders.blocks import BlockIndex
    from loaders.manifest import Manifest
    from loaders.snapshot import Snapshot
    from tests.conftest import FakeClock

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

NEW_KEY = "C000000009"
DEADLINE_MS = 2_000_000_000_000  # far ahead of the fake wall clock


class FakeExtensionsApi:
    """The Extensions API as a queue of events; ``register`` may be told to fail."""

    def __init__(self, *, register_error: Exception | None = None) -> None:
        self.register_error = register_error
        self.registered: list[tuple[str, list[str]]] = []
        self.events: queue.Queue[dict[str, Any] | Exception] = queue.Queue()
        self.asked = threading.Semaphore(0)  # released each time next_event is called

    def register(self, name: str, events: list[str]) -> str:
        if self.register_error is not None:
            raise self.register_error
        self.registered.append((name, events))
        return "extension-id"

    def next_event(self, identifier: str) -> dict[str, Any]:
        assert identifier == "extension-id"
        self.asked.release()
        item = self.events.get(timeout=10)
        if isinstance(item, Exception):
            raise item
        return item


def invoke_event(deadline_ms: int = DEADLINE_MS) -> dict[str, Any]:
    return {"eventType": "INVOKE", "deadlineMs": deadline_ms, "requestId": "r-1"}


@pytest.fixture
def loaded(cache: SnapshotCache, published: str) -> SnapshotCache:
    cache.get()
    return cache


@pytest.fixture(autouse=True)
def no_extension_left() -> Iterator[None]:
    """``start_refresher`` remembers the process's extension; forget it after each test."""
    yield
    service.refresher._extension = None


# --- the cache without checks in requests --------------------------------------------------


def test_deferred_get_never_starts_a_check_with_a_snapshot_in_hand(
    loaded: SnapshotCache, source: InMemorySource, clock: FakeClock, published: str
) -> None:
    loaded.checks_in_request = False
    source.publish(customers([NEW_KEY]))
    reads = len(source.pointer_reads)
    clock.advance(TTL_SECONDS + 1)

    serving = loaded.get()

    assert (serving.snapshot["version"], len(source.pointer_reads)) == (published, reads)
    assert loaded.is_check_due


def test_deferred_get_still_waits_for_the_first_load(cache: SnapshotCache, published: str) -> None:
    cache.checks_in_request = False

    assert cache.get().snapshot["version"] == published


def test_check_if_due_runs_only_when_the_ttl_lapsed(
    loaded: SnapshotCache, source: InMemorySource, clock: FakeClock
) -> None:
    new = source.publish(customers([NEW_KEY]))

    assert loaded.check_if_due() is None
    clock.advance(TTL_SECONDS + 1)
    assert loaded.check_if_due() is CheckOutcome.LOADED
    assert loaded.version == new
    assert loaded.check_if_due() is None


def test_expire_makes_the_next_check_due(loaded: SnapshotCache, source: InMemorySource) -> None:
    new = source.publish(customers([NEW_KEY]))

    loaded.expire()

    assert loaded.is_check_due
    assert loaded.get().snapshot["version"] == new


# --- the internal extension, one event at a time -------------------------------------------


def test_after_the_answer_the_due_check_runs(
    loaded: SnapshotCache, source: InMemorySource, clock: FakeClock
) -> None:
    extension = AfterResponse(loaded, FakeExtensionsApi())
    new = source.publish(customers([NEW_KEY]))
    clock.advance(TTL_SECONDS + 1)
    extension.answered()

    assert extension.after(invoke_event()) is CheckOutcome.LOADED
    assert loaded.version == new


def test_no_check_while_the_ttl_holds(loaded: SnapshotCache, source: InMemorySource) -> None:
    extension = AfterResponse(loaded, FakeExtensionsApi())
    reads = len(source.pointer_reads)
    extension.answered()

    assert extension.after(invoke_event()) is None
    assert len(source.pointer_reads) == reads


def test_without_an_answer_before_the_deadline_no_check_runs(
    loaded: SnapshotCache,
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    extension = AfterResponse(loaded, FakeExtensionsApi(), wall_clock=wall_clock)
    clock.advance(TTL_SECONDS + 1)
    reads = len(source.pointer_reads)
    past = int(wall_clock() * 1000)  # the deadline (less the margin) has passed already

    assert extension.after(invoke_event(deadline_ms=past)) is None
    assert len(source.pointer_reads) == reads
    assert any("no answer before" in r.getMessage() for r in caplog.records)


class _HeldSource(InMemorySource):
    """Data (and block index) reads block until ``release`` is set (a reload that takes a
    while)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.reading = threading.Event()
        self.hold = False

    def _held(self) -> None:
        if self.hold:
            self.reading.set()
            self.release.wait(10)

    def read_data(self, manifest: Manifest) -> Snapshot:
        self._held()
        return super().read_data(manifest)

    def read_block_index(self, manifest: Manifest) -> BlockIndex:  # a tiered load's read
        self._held()
        return super().read_block_index(manifest)


def test_a_reload_past_the_deadline_goes_on_after_the_extension_asks_again(
    clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    held = _HeldSource()
    held.publish(small_table)
    cache = make_cache(held, clock, wall_clock)
    cache.get()
    new = held.publish(customers([NEW_KEY]))
    held.hold = True
    clock.advance(TTL_SECONDS + 1)
    extension = AfterResponse(cache, FakeExtensionsApi(), wall_clock=wall_clock, margin_seconds=0)
    extension.answered()
    soon = int((wall_clock() + 0.05) * 1000)

    assert extension.after(invoke_event(deadline_ms=soon)) is CheckOutcome.PENDING
    held.release.set()
    assert cache.wait(5)
    assert cache.version == new


# --- the extension's loop ------------------------------------------------------------------


def test_registered_extension_takes_the_checks_off_the_requests(loaded: SnapshotCache) -> None:
    api = FakeExtensionsApi()
    extension = AfterResponse(loaded, api)

    extension.register()
    extension.start()

    assert api.registered == [("snapshot-refresh", ["INVOKE"])]
    assert loaded.checks_in_request is False
    api.events.put(ExtensionError("stop"))
    assert extension.thread is not None
    extension.thread.join(5)


def test_loop_runs_the_check_after_each_answer_then_asks_again(
    loaded: SnapshotCache, source: InMemorySource, clock: FakeClock
) -> None:
    api = FakeExtensionsApi()
    extension = AfterResponse(loaded, api)
    extension.register()
    extension.start()
    assert api.asked.acquire(timeout=5)  # ready: init could end here
    new = source.publish(customers([NEW_KEY]))
    clock.advance(TTL_SECONDS + 1)

    api.events.put(invoke_event())
    extension.answered()  # the handler answered the invocation

    assert api.asked.acquire(timeout=5)  # asked for the next event: the check is done by now
    assert loaded.version == new
    api.events.put(ExtensionError("stop"))
    assert extension.thread is not None
    extension.thread.join(5)


def test_a_stopped_loop_hands_the_checks_back_to_the_requests(
    loaded: SnapshotCache, caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeExtensionsApi()
    extension = AfterResponse(loaded, api)
    extension.register()
    extension.start()

    api.events.put(ExtensionError("event/next answered 403: Extension.InvalidExtensionState"))
    assert extension.thread is not None
    extension.thread.join(5)

    assert loaded.checks_in_request is True
    assert any("requests check the pointer again" in r.getMessage() for r in caplog.records)


def test_a_broken_connection_on_next_is_asked_again(loaded: SnapshotCache) -> None:
    api = FakeExtensionsApi()
    extension = AfterResponse(loaded, api)
    extension.register()
    extension.start()
    broken = ExtensionError("GET event/next failed")
    broken.__cause__ = ConnectionResetError()

    api.events.put(broken)
    api.events.put(invoke_event())
    extension.answered()

    assert api.asked.acquire(timeout=5) and api.asked.acquire(timeout=5)
    assert api.asked.acquire(timeout=5)  # the third ask: it went on after the broken one
    assert loaded.checks_in_request is False
    api.events.put(ExtensionError("stop"))
    assert extension.thread is not None
    extension.thread.join(5)


# --- which refresher, and the handler's signal ---------------------------------------------


def _settings(**changes: Any) -> Settings:
    return Settings(snapshot_uri="file:///snapshots", **changes)


def test_outside_lambda_nothing_starts(loaded: SnapshotCache) -> None:
    assert start_refresher(loaded, _settings()) is None
    assert loaded.checks_in_request is True


def test_refresh_mode_request_starts_nothing(loaded: SnapshotCache) -> None:
    api = FakeExtensionsApi()
    settings = _settings(refresh_mode="request", runtime_api="127.0.0.1:9001")

    assert start_refresher(loaded, settings, api=api) is None
    assert api.registered == []


def test_standard_lambda_gets_the_extension(loaded: SnapshotCache) -> None:
    api = FakeExtensionsApi()

    refresher = start_refresher(loaded, _settings(runtime_api="127.0.0.1:9001"), api=api)

    assert isinstance(refresher, AfterResponse)
    assert loaded.checks_in_request is False
    api.events.put(ExtensionError("stop"))
    assert refresher.thread is not None
    refresher.thread.join(5)


def test_a_failed_registration_leaves_the_checks_in_the_requests(
    loaded: SnapshotCache, caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeExtensionsApi(register_error=ExtensionError("register answered 500"))

    refresher = start_refresher(loaded, _settings(runtime_api="127.0.0.1:9001"), api=api)

    assert refresher is None
    assert loaded.checks_in_request is True
    assert any("no refresh extension" in r.getMessage() for r in caplog.records)


def test_an_unreachable_extensions_api_leaves_the_checks_in_the_requests(
    loaded: SnapshotCache,
) -> None:
    # Nothing listens on port 9 (discard) of the loopback address here.
    assert start_refresher(loaded, _settings(runtime_api="127.0.0.1:9")) is None
    assert loaded.checks_in_request is True


def test_managed_instances_get_the_timer(loaded: SnapshotCache) -> None:
    api = FakeExtensionsApi()
    settings = _settings(runtime_api="127.0.0.1:9001", max_concurrency=16)

    refresher = start_refresher(loaded, settings, api=api)

    assert isinstance(refresher, TimedRefresher)
    assert api.registered == []  # no extension per worker process
    refresher.stop(5)


def test_handler_is_unchanged_without_an_extension() -> None:
    def handler(event: Any, context: Any) -> Any:
        return event

    assert wrap_handler(handler) is handler


def test_wrapped_handler_tells_the_extension_even_when_it_raises(loaded: SnapshotCache) -> None:
    api = FakeExtensionsApi()
    extension = start_refresher(loaded, _settings(runtime_api="127.0.0.1:9001"), api=api)
    assert isinstance(extension, AfterResponse)

    def handler(event: Any, context: Any) -> Any:
        raise ValueError(event)

    with pytest.raises(ValueError, match="boom"):
        wrap_handler(handler)("boom", None)

    assert extension._answered.is_set()
    api.events.put(ExtensionError("stop"))
    assert extension.thread is not None
    extension.thread.join(5)


# --- the timer -----------------------------------------------------------------------------


class _SignallingSource(InMemorySource):
    """Sets ``downloaded`` after every data (or block index) read."""

    def __init__(self) -> None:
        super().__init__()
        self.downloaded = threading.Event()

    def read_data(self, manifest: Manifest) -> Snapshot:
        snapshot = super().read_data(manifest)
        self.downloaded.set()
        return snapshot

    def read_block_index(self, manifest: Manifest) -> BlockIndex:  # a tiered load's read
        blocks = super().read_block_index(manifest)
        self.downloaded.set()
        return blocks


def test_timer_loads_a_new_version_with_no_request_at_all(
    clock: FakeClock, wall_clock: FakeClock, small_table: Any
) -> None:
    signalling = _SignallingSource()
    signalling.publish(small_table)
    cache = make_cache(signalling, clock, wall_clock)
    cache.get()
    signalling.downloaded.clear()
    timer = TimedRefresher(cache, poll_seconds=0.01)
    timer.start()
    new = signalling.publish(customers([NEW_KEY]))

    clock.advance(TTL_SECONDS + 1)

    assert signalling.downloaded.wait(5)
    assert cache.wait(5)
    assert cache.version == new
    timer.stop(5)
    assert cache.checks_in_request is True


def test_timer_run_due_is_a_no_op_within_the_ttl(
    loaded: SnapshotCache, source: InMemorySource
) -> None:
    reads = len(source.pointer_reads)

    assert TimedRefresher(loaded).run_due() is None
    assert len(source.pointer_reads) == reads


# --- the settings that choose ---------------------------------------------------------------


def test_settings_read_the_runtime_api_and_managed_instances_concurrency() -> None:
    settings = Settings.from_env(
        {
            "SNAPSHOT_URI": "file:///snapshots",
            "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
            "AWS_LAMBDA_MAX_CONCURRENCY": "32",
        }
    )

    assert (settings.refresh_mode, settings.runtime_api, settings.max_concurrency) == (
        "auto",
        "127.0.0.1:9001",
        32,
    )


def test_settings_without_lambda_variables_choose_nothing() -> None:
    settings = Settings.from_env({"SNAPSHOT_URI": "file:///snapshots"})

    assert (settings.runtime_api, settings.max_concurrency) == (None, None)


@pytest.mark.parametrize(
    ("name", "value"),
    [("REFRESH_MODE", "sometimes"), ("AWS_LAMBDA_MAX_CONCURRENCY", "many")],
)
def test_a_bad_refresh_setting_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"SNAPSHOT_URI": "file:///snapshots", name: value})
