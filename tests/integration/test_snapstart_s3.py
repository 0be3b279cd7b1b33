"""The SnapStart after-restore hook over a real S3Store on the moto server, run the way the
runtime runs it (awslambdaric's ``run_after_restore`` over ``get_after_restore()``): the store
gets a fresh client, and the pointer is read with it, conditionally."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest
import snapshot_restore_py
from awslambdaric.lambda_runtime_hooks_runner import run_after_restore

import service.snapstart
from loaders.store import S3Store
from service.handler import build_service
from service.settings import Settings
from service.snapstart import register_restore_hook
from tests.conftest import BUCKET, PREFIX, customers, publish
from tests.integration.test_cache_s3 import S3Traffic

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.cache import SnapshotCache

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

V1_IDS = ["C000000001", "C000000002"]
V2_IDS = ["C000000001", "C000000003"]


@pytest.fixture(autouse=True)
def registry() -> Iterator[list[Any]]:
    hooks = snapshot_restore_py.get_after_restore()
    saved = list(hooks)
    hooks.clear()
    yield hooks
    hooks[:] = saved


@pytest.fixture
def writer(server_s3: Any) -> S3Store:
    return S3Store(server_s3, BUCKET, PREFIX)


@pytest.fixture
def settings(server_s3: Any) -> Settings:
    return Settings(snapshot_uri=f"s3://{BUCKET}/{PREFIX}")


@pytest.fixture
def cache(settings: Settings, writer: S3Store) -> SnapshotCache:
    """A cache as Lambda builds it, serving v1 (loaded at init, so part of the image)."""
    publish(writer, customers(V1_IDS))
    cache = build_service(settings).cache
    cache.refresh()
    register_restore_hook(cache, settings)
    return cache


def _store(cache: SnapshotCache) -> S3Store:
    store = cache.source.store  # type: ignore[attr-defined]
    assert isinstance(store, S3Store)
    return store


def test_after_restore_the_store_reads_the_pointer_with_a_new_client(
    cache: SnapshotCache, writer: S3Store
) -> None:
    imaged = _store(cache).client
    old_traffic = S3Traffic()
    old_traffic.attach(imaged)
    v2 = publish(writer, customers(V2_IDS))

    run_after_restore()

    renewed = _store(cache).client
    assert renewed is not imaged
    assert old_traffic.requests == []  # the image's client (and its dead sockets) is unused
    assert cache.version == v2


def test_after_restore_with_the_pointer_unchanged_nothing_is_downloaded(
    cache: SnapshotCache,
) -> None:
    version = cache.version
    traffic = S3Traffic()
    real = service.snapstart.make_s3_client

    def make_client(budget: Any) -> Any:
        client = real(budget)
        traffic.attach(client)
        return client

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service.snapstart, "make_s3_client", make_client)
        run_after_restore()

    assert [(op, key) for op, key, _ in traffic.requests] == [("GetObject", "CURRENT")]
    assert traffic.requests[0][2] is not None  # If-None-Match: answered 304
    assert traffic.body_bytes == 0
    assert cache.version == version


def test_a_client_that_cannot_be_built_does_not_fail_the_restore(
    cache: SnapshotCache, writer: S3Store, caplog: pytest.LogCaptureFixture
) -> None:
    version = cache.version
    publish(writer, customers(V2_IDS))

    def make_client(_budget: Any) -> Any:
        raise RuntimeError("credentials not ready")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service.snapstart, "make_s3_client", make_client)
        run_after_restore()

    assert cache.version == version
    assert cache.is_check_due  # the next check (first request, or after it) reads the pointer
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no new S3 client (RuntimeError: credentials not ready)" in w for w in warnings)
