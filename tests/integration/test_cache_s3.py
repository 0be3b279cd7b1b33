"""SnapshotCache over a real SnapshotReader and S3Store, against the moto server.

Requests are counted with botocore event hooks on the reader's own client, so the counts are
what S3 would bill: one conditional GET per TTL while nothing changes, and no body bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from loaders.manifest import snapshot_key
from loaders.snapshot import SnapshotReader
from loaders.store import S3Store
from service.cache import SnapshotCache
from service.handler import build_service
from service.settings import Settings
from tests.conftest import BUCKET, LOADED_NAMES, PREFIX, REGION, T0, FakeClock, customers, publish
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

TTL_SECONDS = 300.0
LOGGER_NAME = "tests.integration.cache"
V1_IDS = ["C000000001", "C000000002", "C000000003"]
V2_IDS = ["C000000001", "C000000004"]


@dataclass
class S3Traffic:
    """What one boto3 client sent and got back, recorded by ``before-send``/``after-call``."""

    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    responses: list[tuple[str, int, int]] = field(default_factory=list)

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send.s3.*", self._before_send)
        client.meta.events.register("after-call.s3.*", self._after_call)

    def clear(self) -> None:
        self.requests.clear()
        self.responses.clear()

    @property
    def body_bytes(self) -> int:
        return sum(length for _, _, length in self.responses)

    def _before_send(self, request: Any, event_name: str, **_: Any) -> None:
        path = unquote(urlsplit(request.url).path)
        key = path.removeprefix(f"/{BUCKET}/{PREFIX}/")
        condition = request.headers.get("If-None-Match")
        if isinstance(condition, bytes):
            condition = condition.decode()
        self.requests.append((event_name.rsplit(".", 1)[-1], key, condition))

    def _after_call(self, http_response: Any, event_name: str, **_: Any) -> None:
        length = int(http_response.headers.get("Content-Length") or 0)
        self.responses.append((event_name.rsplit(".", 1)[-1], http_response.status_code, length))


@pytest.fixture
def publisher(server_s3: Any) -> S3Store:
    """The builder's view of the root, on its own client (its traffic is not counted)."""
    return S3Store(server_s3, BUCKET, PREFIX)


@pytest.fixture
def reader_client(server_s3: Any) -> Any:
    """A fresh client for the cache; like the product's, it gets its endpoint from the env."""
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def traffic(reader_client: Any) -> S3Traffic:
    recorder = S3Traffic()
    recorder.attach(reader_client)
    return recorder


@pytest.fixture
def cache(reader_client: Any, clock: FakeClock, wall_clock: FakeClock) -> SnapshotCache:
    # Later versions here are stamped up to T0+2h; readers refuse versions from the future.
    wall_clock.advance(3 * 3600)
    return SnapshotCache(
        SnapshotReader(S3Store(reader_client, BUCKET, PREFIX)),
        key_column="customer_id",
        ttl_seconds=TTL_SECONDS,
        max_staleness_seconds=86_400,
        clock=clock,
        wall_clock=wall_clock,
        logger=logging.getLogger(LOGGER_NAME),
    )


@pytest.fixture
def v1(publisher: S3Store, cache: SnapshotCache) -> str:
    """Version 1 published and loaded by the cache."""
    version = publish(publisher, customers(V1_IDS))
    cache.get()
    return version


def _publish_corrupt_v2(publisher: S3Store, loaded_name: str) -> str:
    """Publish v2 with a byte flipped in what a load in this mode downloads."""
    version = publish(publisher, customers(V2_IDS, segment="enterprise"), T0 + timedelta(hours=1))
    key = snapshot_key(version, loaded_name)
    raw_write(publisher, key, flip_bytes(raw_read(publisher, key)))
    return version


# --- loading and the conditional pointer check ----------------------------------------------


def test_first_load_reads_pointer_then_manifest_then_data(
    publisher: S3Store, cache: SnapshotCache, traffic: S3Traffic, serve_mode: str
) -> None:
    version = publish(publisher, customers(V1_IDS))

    cache.get()

    assert traffic.requests == [
        ("GetObject", "CURRENT", None),
        ("GetObject", f"snapshots/{version}/manifest.json", None),
        *(("GetObject", f"snapshots/{version}/{name}", None) for name in LOADED_NAMES[serve_mode]),
    ]


def test_first_load_downloads_each_object_once(
    publisher: S3Store, cache: SnapshotCache, traffic: S3Traffic, serve_mode: str
) -> None:
    # Tiered: the one block of this small table is all of blocks.bin.
    version = publish(publisher, customers(V1_IDS))
    names = ("manifest.json", *LOADED_NAMES[serve_mode])
    keys = ["CURRENT", *(snapshot_key(version, name) for name in names)]
    sizes = [len(raw_read(publisher, key)) for key in keys]

    cache.get()

    assert traffic.body_bytes == sum(sizes)


def test_within_ttl_get_makes_no_requests(
    v1: str, cache: SnapshotCache, clock: FakeClock, traffic: S3Traffic
) -> None:
    traffic.clear()
    clock.advance(TTL_SECONDS - 1)

    cache.get()

    assert traffic.requests == []


def test_after_ttl_unchanged_pointer_costs_one_conditional_get(
    v1: str, publisher: S3Store, cache: SnapshotCache, clock: FakeClock, traffic: S3Traffic
) -> None:
    etag = publisher.get("CURRENT").etag
    traffic.clear()
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert traffic.requests == [("GetObject", "CURRENT", etag)]
    assert traffic.responses == [("GetObject", 304, 0)]


def test_after_ttl_unchanged_pointer_keeps_serving(
    v1: str, cache: SnapshotCache, clock: FakeClock
) -> None:
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == v1


def test_new_version_is_not_seen_within_ttl(
    v1: str, publisher: S3Store, cache: SnapshotCache, clock: FakeClock
) -> None:
    publish(publisher, customers(V2_IDS), T0 + timedelta(hours=1))
    clock.advance(TTL_SECONDS - 1)

    assert cache.get().snapshot["version"] == v1


def test_new_version_is_served_after_ttl(
    v1: str, publisher: S3Store, cache: SnapshotCache, clock: FakeClock
) -> None:
    v2 = publish(publisher, customers(V2_IDS, segment="enterprise"), T0 + timedelta(hours=1))
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert serving.snapshot["version"] == v2
    assert serving.index.get("C000000004")["segment"] == "enterprise"
    assert serving.index.get("C000000002") is None


# --- a corrupt snapshot never replaces a good one -------------------------------------------


def test_corrupt_new_snapshot_keeps_serving_the_previous_one(
    v1: str, publisher: S3Store, cache: SnapshotCache, clock: FakeClock, loaded_name: str
) -> None:
    _publish_corrupt_v2(publisher, loaded_name)
    clock.advance(TTL_SECONDS + 1)

    serving = cache.get()

    assert cache.version == v1
    assert serving.snapshot["version"] == v1
    assert serving.index.get("C000000002")["segment"] == "smb"
    assert serving.index.get("C000000004") is None


def test_corrupt_new_snapshot_is_logged_as_rejected(
    v1: str,
    publisher: S3Store,
    cache: SnapshotCache,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    loaded_name: str,
) -> None:
    v2 = _publish_corrupt_v2(publisher, loaded_name)
    clock.advance(TTL_SECONDS + 1)

    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        cache.get()

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "snapshot rejected" in errors[0]
    assert f"serving {v1}" in errors[0]
    what = "" if loaded_name == "data.parquet" else "block index: "
    assert f"snapshot {v2}: {what}sha256 mismatch" in errors[0]


def test_rejected_pointer_costs_one_conditional_get_per_ttl(
    v1: str,
    publisher: S3Store,
    cache: SnapshotCache,
    clock: FakeClock,
    traffic: S3Traffic,
    loaded_name: str,
) -> None:
    _publish_corrupt_v2(publisher, loaded_name)
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    rejected_etag = publisher.get("CURRENT").etag
    traffic.clear()
    clock.advance(TTL_SECONDS + 1)

    cache.get()

    assert traffic.requests == [("GetObject", "CURRENT", rejected_etag)]
    assert traffic.responses == [("GetObject", 304, 0)]


def test_good_snapshot_after_a_rejected_one_is_served(
    v1: str, publisher: S3Store, cache: SnapshotCache, clock: FakeClock, loaded_name: str
) -> None:
    _publish_corrupt_v2(publisher, loaded_name)
    clock.advance(TTL_SECONDS + 1)
    cache.get()
    v3 = publish(publisher, customers(["C000000007"]), T0 + timedelta(hours=2))
    clock.advance(TTL_SECONDS + 1)

    assert cache.get().snapshot["version"] == v3


def test_store_outage_keeps_serving_the_loaded_snapshot(
    v1: str,
    reader_client: Any,
    cache: SnapshotCache,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unavailable(**_: Any) -> AWSResponse:
        return AWSResponse("https://s3.test", 503, {}, _EmptyBody())

    reader_client.meta.events.register_first("before-send.s3.GetObject", unavailable)
    clock.advance(TTL_SECONDS + 1)

    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        serving = cache.get()

    assert serving.snapshot["version"] == v1
    assert any("refresh failed" in r.getMessage() for r in caplog.records)


class _EmptyBody:
    def stream(self, **_: Any) -> Any:
        yield b""


# --- the product's own wiring: endpoint from the environment --------------------------------


def test_build_service_without_client_reads_the_moto_server(publisher: S3Store) -> None:
    version = publish(publisher, customers(V1_IDS))
    service = build_service(Settings(snapshot_uri=f"s3://{BUCKET}/{PREFIX}"))

    serving = service.cache.get()

    assert serving.snapshot["version"] == version
    assert serving.index.get("C000000003")["customer_id"] == "C000000003"
