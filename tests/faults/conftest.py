"""Fault-suite parts: a switchable TCP proxy in front of moto, botocore fault hooks, an S3 call
log, helpers that plant objects, and the real lookup function built over all of them.

The cache's client is the product's own (``make_s3_client``), aimed at the proxy through
``AWS_ENDPOINT_URL_S3``. Faults enter at the boto3 boundary only: the proxy drops or breaks the
connections, ``before-send`` hooks answer or raise instead of S3, and moto holds bad objects.
The builder side (``publisher``) talks to moto directly, so faults never touch the planting.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest
from botocore.awsrequest import AWSResponse

import service.handler
from loaders.index import KeyIndex
from loaders.manifest import new_version
from loaders.publish import publish_table
from loaders.snapshot import decode_snapshot, describe, encode_table
from loaders.store import S3Store, StorageBudget, make_s3_client
from service.cache import SnapshotCache
from service.handler import LookupFunction, build_service
from service.local_server import LocalContext
from service.settings import Settings
from tests.conftest import BUCKET, PREFIX, FakeClock, customers, load_event
from tests.integration.rawstore import raw_read, raw_write

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT_URI = f"s3://{BUCKET}/{PREFIX}"
TTL_SECONDS = 300.0
CACHE_LOGGER = "tests.faults.cache"
HIT = "C000000001"
V1_IDS = ["C000000001", "C000000002", "C000000003"]
V2_IDS = ["C000000001", "C000000004"]
# Small budgets keep the suite fast; one warm and one cold test use the defaults.
FAST_STORAGE = StorageBudget(connect_timeout_seconds=0.2, read_timeout_seconds=0.3, max_attempts=2)
FAST_REFRESH_WAIT_SECONDS = 0.3
FAST_COLD_LOAD_WAIT_SECONDS = 0.5
MEMORY_BUDGET_MB = 64
# S3 timeouts far longer than the waits: what answers within a wait is then the deadline.
PATIENT_STORAGE = StorageBudget(
    connect_timeout_seconds=0.2, read_timeout_seconds=5.0, max_attempts=2
)
# What a handler call may take beyond its wait: routing, JSON, thread hand-offs, and pauses of
# a process that also runs moto and the proxy (a full GC pass alone measured up to 0.1 s).
SLACK_SECONDS = 0.4
# How long a test waits for a check left running to end once its fault is lifted.
DRAIN_SECONDS = 10.0


def fast_settings(**changes: Any) -> Settings:
    """Settings for an S3 root with small time budgets (override any field)."""
    fields: dict[str, Any] = {
        "snapshot_uri": ROOT_URI,
        "refresh_ttl_seconds": TTL_SECONDS,
        "storage": FAST_STORAGE,
        "refresh_wait_seconds": FAST_REFRESH_WAIT_SECONDS,
        "cold_load_wait_seconds": FAST_COLD_LOAD_WAIT_SECONDS,
        "memory_budget_mb": MEMORY_BUDGET_MB,
    }
    return Settings(**{**fields, **changes})


@pytest.fixture(scope="session", autouse=True)
def decoded_once() -> None:
    """Decode and index one snapshot before any budget is timed.

    The first decode in a process pays for lazy imports and Arrow's set-up; in Lambda that
    happens during init, so no test's half-second cold wait should pay for it either.
    """
    table = customers(V1_IDS)
    body = encode_table(table, "customer_id")
    manifest = describe(
        table,
        body,
        version=new_version(datetime.now(UTC)),
        key_column="customer_id",
        created_at=datetime.now(UTC),
    )
    KeyIndex(decode_snapshot(manifest, body).table, "customer_id")


# --- the proxy -------------------------------------------------------------------------------


class Mode(enum.Enum):
    """What the proxy does with bytes a client sends."""

    PASS = "pass"  # forward to moto and back
    BLACK_HOLE = "black hole"  # accept, read, never answer
    RESET = "reset"  # answer with a TCP RST
    CLOSE = "close"  # close without an answer (FIN)


_POLL_SECONDS = 0.05


class FaultProxy:
    """A threaded TCP proxy in front of ``upstream`` whose mode tests switch at any time.

    The mode is applied to each chunk a client sends, so pooled keep-alive connections obey a
    switch too. A connection that had a request swallowed is reset as soon as the mode leaves
    ``BLACK_HOLE``, so a check stuck on it ends then rather than at the client's read timeout.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = Mode.PASS
        self.only: bytes | None = None  # when set, the mode applies to requests holding it
        self.swallowed = 0  # requests (chunks) held by the black hole
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def set_mode(self, mode: Mode, *, only: bytes | None = None) -> None:
        """Apply ``mode`` to every request, or ``only`` to those whose bytes contain it."""
        self.only = only
        self.mode = mode

    def close(self) -> None:
        """Stop accepting and reset every connection; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self._listener.close()

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="fault-proxy", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([self._listener], [], [], _POLL_SECONDS)
            if ready:
                client, _ = self._listener.accept()
                self._start(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        link = _Link(client)
        try:
            while not self._closed.is_set() and link.is_open(self.mode):
                ready, _, _ = select.select(link.sockets(), [], [], _POLL_SECONDS)
                if link.upstream is not None and link.upstream in ready:
                    link.to_client()
                if client in ready:
                    self._from_client(link)
        except OSError:
            pass  # either side went away: the client sees what a broken network shows
        finally:
            link.close(reset=self._closed.is_set() or link.swallowed)

    def _from_client(self, link: _Link) -> None:
        data = link.client.recv(65536)
        mode = self.mode if self.only is None or self.only in data else Mode.PASS
        if not data or mode is Mode.CLOSE:
            link.open = False
        elif mode is Mode.RESET:
            link.open = False
            link.swallowed = True  # closed with an RST
        elif mode is Mode.BLACK_HOLE:
            self.swallowed += 1
            link.swallowed = True
        else:
            link.to_upstream(data, self.upstream)


class _Link:
    """One client connection and, once something passed, its connection to moto."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.open = True
        self.swallowed = False

    def is_open(self, mode: Mode) -> bool:
        # A swallowed request never gets an answer; once the black hole is lifted, the
        # connection breaks, as one would on a network that dropped it.
        return self.open and not (self.swallowed and mode is not Mode.BLACK_HOLE)

    def sockets(self) -> list[socket.socket]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]

    def to_upstream(self, data: bytes, address: tuple[str, int]) -> None:
        if self.upstream is None:
            self.upstream = socket.create_connection(address, timeout=10)
        self.upstream.sendall(data)

    def to_client(self) -> None:
        assert self.upstream is not None
        data = self.upstream.recv(65536)
        if data:
            self.client.sendall(data)
        else:
            self.open = False

    def close(self, *, reset: bool) -> None:
        if reset:
            _reset(self.client)
        else:
            self.client.close()
        if self.upstream is not None:
            self.upstream.close()


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST: SO_LINGER on with a zero timeout."""
    with contextlib.suppress(OSError):  # already closed
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    parts = urlsplit(moto_server)
    fault_proxy = FaultProxy((parts.hostname or "127.0.0.1", parts.port or 80))
    yield fault_proxy
    fault_proxy.close()


# --- botocore hooks: a call log and injected faults ------------------------------------------


def _object_key(url: str) -> str:
    return unquote(urlsplit(url).path).removeprefix(f"/{BUCKET}/{PREFIX}/")


@dataclass
class S3Calls:
    """Every GetObject API call the cache's client made: ``(key, If-None-Match)``."""

    gets: list[tuple[str, str | None]] = field(default_factory=list)

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.s3.GetObject", self._record)

    def count(self, key: str) -> int:
        """How many GetObject calls named ``key`` (relative to the snapshot root)."""
        return sum(1 for k, _ in self.gets if k == key)

    def count_under(self, prefix: str) -> int:
        return sum(1 for k, _ in self.gets if k.startswith(prefix))

    def conditions(self, key: str) -> list[str | None]:
        """The If-None-Match of each call on ``key``, in order."""
        return [condition for k, condition in self.gets if k == key]

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        key = str(params.get("Key", "")).removeprefix(f"{PREFIX}/")
        self.gets.append((key, params.get("IfNoneMatch")))


class _Body:
    """The raw stream of an injected AWSResponse."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def error_response(status: int, code: str) -> Callable[[Any], AWSResponse]:
    """A fault that answers instead of S3 with an S3 error document."""
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()

    def answer(request: Any) -> AWSResponse:
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Body(body))

    return answer


def raises(factory: Callable[[Any], BaseException]) -> Callable[[Any], AWSResponse]:
    """A fault that raises ``factory(request)`` where the HTTP send would be."""

    def fail(request: Any) -> AWSResponse:
        raise factory(request)

    return fail


@dataclass
class StorageFaults:
    """``before-send.s3.*`` faults on one client: each applies to keys ending with a suffix."""

    rules: list[tuple[str, Callable[[Any], AWSResponse]]] = field(default_factory=list)

    def attach(self, client: Any) -> None:
        client.meta.events.register_first("before-send.s3.*", self._before_send)

    def add(self, fault: Callable[[Any], AWSResponse], *, key_suffix: str = "") -> None:
        self.rules.append((key_suffix, fault))

    def clear(self) -> None:
        self.rules.clear()

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        key = _object_key(request.url)
        for suffix, fault in list(self.rules):
            if key.endswith(suffix):
                return fault(request)
        return None


# --- the function under test -----------------------------------------------------------------


@dataclass
class Answer:
    """One handler answer, decoded, with the seconds it took."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    seconds: float

    @property
    def version(self) -> str | None:
        return self.body.get("snapshot", {}).get("version")


def customer_event(key: str) -> dict[str, Any]:
    """The HTTP API (v2) get-customer sample event, re-aimed at ``key``."""
    event = load_event("http_v2_get_customer")
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/customers/{key}"
    event["pathParameters"] = {"customer_id": key}
    return event


@dataclass
class Lookup:
    """The real lookup function over the proxied, hooked client, and its handles."""

    function: LookupFunction
    client: Any
    calls: S3Calls
    faults: StorageFaults
    clock: FakeClock | None

    @property
    def cache(self) -> SnapshotCache:
        return self.function.service.cache

    def invoke(self, event: Any) -> tuple[Any, float]:
        """Call the handler with ``event``; the answer as returned and the seconds it took."""
        started = time.monotonic()
        response = self.function(event, LocalContext())
        return response, time.monotonic() - started

    def ask(self, key: str = HIT) -> Answer:
        """GET /customers/<key> through the HTTP API v2 sample event."""
        response, seconds = self.invoke(customer_event(key))
        return Answer(
            response["statusCode"],
            json.loads(response["body"]),
            dict(response.get("headers") or {}),
            seconds,
        )

    def settle(self) -> None:
        """Wait until no pointer check is left running (never a sleep)."""
        assert self.cache.wait(DRAIN_SECONDS), "a pointer check outlived its storage budget"

    def lapse_ttl(self) -> None:
        assert self.clock is not None, "this lookup runs on real clocks"
        self.clock.advance(TTL_SECONDS + 1)


@pytest.fixture
def publisher(server_s3: Any) -> S3Store:
    """The builder's view of the root, straight to moto (no proxy, no hooks)."""
    return S3Store(server_s3, BUCKET, PREFIX)


@pytest.fixture
def make_lookup(
    server_s3: Any, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Lookup]]:
    """Build ``LookupFunction(build_service(settings))`` over the product's bounded client.

    With ``clocked=True`` (the default) the cache's TTL runs on a FakeClock and it logs to
    ``CACHE_LOGGER``: ``build_service`` itself runs, with only those two arguments added to
    its ``SnapshotCache(...)`` call, so every other parameter stays the product's.
    """
    built: list[Lookup] = []

    def make(settings: Settings | None = None, *, clocked: bool = True) -> Lookup:
        settings = settings or fast_settings()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        client = make_s3_client(settings.storage)
        calls, faults = S3Calls(), StorageFaults()
        calls.attach(client)
        faults.attach(client)
        clock = FakeClock() if clocked else None
        if clock is None:
            built_service = build_service(settings, s3_client=client)
        else:
            caches: list[SnapshotCache] = []

            def cache_with_clock(*args: Any, **kwargs: Any) -> SnapshotCache:
                logger = logging.getLogger(CACHE_LOGGER)
                caches.append(SnapshotCache(*args, **kwargs, clock=clock, logger=logger))
                return caches[-1]

            with monkeypatch.context() as patch:
                patch.setattr(service.handler, "SnapshotCache", cache_with_clock)
                built_service = build_service(settings, s3_client=client)
            assert caches == [built_service.cache], "build_service no longer builds its cache here"
        lookup = Lookup(LookupFunction(built_service), client, calls, faults, clock)
        built.append(lookup)
        return lookup

    yield make
    # Lift every fault so checks left running end now, and before moto is reset for the next
    # test: a black-holed connection is reset, and later attempts find the proxy gone.
    proxy.close()
    for lookup in built:
        lookup.faults.clear()
        lookup.settle()


# --- planting snapshots, good and hostile ----------------------------------------------------


@dataclass
class Versions:
    """Publishes versions stamped five minutes apart from six hours ago, in order."""

    publisher: S3Store
    base: datetime = field(
        default_factory=lambda: datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    )
    published: int = 0
    # What a load downloads after the manifest in the test's serving mode: where a bad version
    # must be bad for a reader in that mode to see it (``tests.conftest.LOADED_NAME``).
    loaded_name: str = "data.parquet"

    @property
    def serve_mode(self) -> str:
        return "memory" if self.loaded_name == "data.parquet" else "tiered"

    def loaded_key(self, version: str) -> str:
        return f"snapshots/{version}/{self.loaded_name}"

    def next_time(self) -> datetime:
        self.published += 1
        return self.base + timedelta(minutes=5 * self.published)

    def publish(
        self,
        ids: list[str] | None = None,
        *,
        segment: str = "smb",
        at: datetime | None = None,
        key_column: str = "customer_id",
    ) -> str:
        """Publish and announce a version of ``customers(ids)``; returns the version."""
        table = customers(ids or V1_IDS, segment=segment)
        published = publish_table(
            self.publisher, table, key_column=key_column, now=at or self.next_time()
        )
        return published.manifest.version


@pytest.fixture
def versions(publisher: S3Store, loaded_name: str) -> Versions:
    return Versions(publisher, loaded_name=loaded_name)


def data_key(version: str) -> str:
    return f"snapshots/{version}/data.parquet"


def manifest_key(version: str) -> str:
    return f"snapshots/{version}/manifest.json"


def pointer_etag(store: S3Store) -> str:
    return store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/CURRENT")["ETag"]


def edit_manifest(store: S3Store, version: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite one version's manifest document with ``edit`` applied to it."""
    doc = json.loads(raw_read(store, manifest_key(version)))
    edit(doc)
    raw_write(store, manifest_key(version), json.dumps(doc).encode())


def write_pointer(store: S3Store, body: bytes) -> None:
    """Overwrite CURRENT with ``body``, as a bad actor or a broken builder would."""
    raw_write(store, "CURRENT", body)


def nested(depth: int) -> bytes:
    """A JSON document nested ``depth`` arrays deep."""
    return b"[" * depth + b"]" * depth
