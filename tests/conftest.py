"""Shared test parts: a fake clock, tiny tables, AWS sample events, stores and a moto server."""

from __future__ import annotations

import copy
import inspect
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.request import Request, urlopen

import boto3
import pyarrow as pa
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from loaders.publish import publish_table
from loaders.store import FileStore, ObjectStore, S3Store
from service.cache import SnapshotCache
from service.local_server import LocalContext
from service.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

EVENTS = Path(__file__).parent / "events"
BUCKET = "snapshots-test"
PREFIX = "customer-mapping"
REGION = "us-east-1"
T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
# Issue 11: every lookup test runs in both serving modes (see ``serve_mode``).
SERVE_MODES = ("memory", "tiered")
# What loading a version downloads after its manifest, by mode: the whole table, or the block
# index and then the first block, by range (the rest of blocks.bin as lookups need it).
LOADED_NAMES = {"memory": ("data.parquet",), "tiered": ("blocks.arrow", "blocks.bin")}
# The first of those: where a version is bad, or held, for a load in that mode to find it.
LOADED_NAME = {mode: names[0] for mode, names in LOADED_NAMES.items()}


class FakeClock:
    """A clock tests move by hand: ``clock.advance(301)``; never sleeps."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def customers(ids: list[str], *, segment: str = "smb") -> pa.Table:
    """A small table with the sample schema, keyed by ``ids`` (sorted here)."""
    ids = sorted(ids)
    n = len(ids)
    return pa.table(
        {
            "customer_id": pa.array(ids, pa.string()),
            "account_id": pa.array([f"A{i:010d}" for i in range(n)], pa.string()),
            "segment": pa.array([segment] * n, pa.string()),
            "region": pa.array(["eu-west-1" if i % 2 else "us-east-1" for i in range(n)]),
            "tier": pa.array(["premium"] * n, pa.string()),
            "updated_at": pa.array(
                [datetime(2024, 1, 1 + i % 28, 9, 30, tzinfo=UTC) for i in range(n)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


@pytest.fixture
def small_table() -> pa.Table:
    """Three customers: C000000001..C000000003."""
    return customers(["C000000001", "C000000002", "C000000003"])


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of a sample event from ``tests/events/`` (name without ``.json``)."""
    return copy.deepcopy(json.loads((EVENTS / f"{name}.json").read_text()))


def _default(function: Any, name: str, value: object) -> tuple[str, object]:
    """The ``__defaults__``/``__kwdefaults__`` attribute of ``function`` with ``name``'s
    default set to ``value`` (a dataclass keeps its field defaults in ``__defaults__``)."""
    kwdefaults = function.__kwdefaults__ or {}
    if name in kwdefaults:
        return "__kwdefaults__", {**kwdefaults, name: value}
    params = list(inspect.signature(function).parameters.values())
    with_defaults = [
        p.name for p in params if p.default is not p.empty and p.kind != p.KEYWORD_ONLY
    ]
    defaults = list(function.__defaults__)
    defaults[with_defaults.index(name)] = value
    return "__defaults__", tuple(defaults)


@pytest.fixture(params=SERVE_MODES)
def serve_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Serve every lookup of the test in one mode; a test using this runs once per mode.

    The one switch behind "every lookup test in both modes" (issue 11): it sets ``SERVE_MODE``
    (read by ``Settings.from_env``, and inherited by the lookup processes tests start) and the
    default of ``SnapshotCache(serve_mode=)`` and ``Settings(serve_mode=)``, so the fixtures
    and tests that build a cache, a service or settings need no change. A lookup module opts
    in with ``pytestmark = pytest.mark.usefixtures("serve_mode")``; a test that is memory-only
    by nature narrows it with ``@pytest.mark.parametrize("serve_mode", ["memory"],
    indirect=True)`` and says why.
    """
    mode: str = request.param
    monkeypatch.setenv("SERVE_MODE", mode)
    for function in (SnapshotCache.__init__, Settings.__init__):
        monkeypatch.setattr(function, *_default(function, "serve_mode", mode))
    return mode


@pytest.fixture
def loaded_name(serve_mode: str) -> str:
    """The object a load downloads after the manifest in this test's mode (``LOADED_NAME``)."""
    return LOADED_NAME[serve_mode]


@pytest.fixture
def lambda_context() -> LocalContext:
    return LocalContext()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall_clock() -> FakeClock:
    """Epoch seconds, starting at T0 (when test snapshots are published)."""
    return FakeClock(T0.timestamp())


def publish(store: ObjectStore, table: pa.Table, now: datetime = T0) -> str:
    """Publish ``table`` to ``store`` and return the new version."""
    return publish_table(store, table, key_column="customer_id", now=now).manifest.version


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "snapshots")


# --- AWS: fake credentials, mock_aws in-process, and one moto server per session -------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region; no endpoint override (mock_aws ignores custom endpoints)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mock_s3(aws_env: None) -> Iterator[Any]:
    """An in-process moto S3 with the test bucket; yields a boto3 client."""
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real moto HTTP server on 127.0.0.1 (random port), shared by the session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def server_s3(moto_server: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """boto3 pointed at the moto server through AWS_ENDPOINT_URL_S3; state reset per test."""
    urlopen(Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).read()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    yield client


@pytest.fixture(params=["file", "mock_aws", "moto_server"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same snapshot root contract over a directory, in-process moto, and a moto server."""
    if request.param == "file":
        return FileStore(tmp_path / "snapshots")
    client = request.getfixturevalue("mock_s3" if request.param == "mock_aws" else "server_s3")
    return S3Store(client, BUCKET, PREFIX)
