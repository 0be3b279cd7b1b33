"""Real HTTP requests -> LocalServer -> the lookup handler -> a snapshot on disk or on moto.

Every answer-shaped test runs twice: against a ``file://`` root and against the moto server,
whose endpoint the product picks up from ``AWS_ENDPOINT_URL_S3`` on its own.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pytest

from loaders.store import FileStore, S3Store
from service.handler import LookupFunction, build_service
from service.local_server import LocalContext, LocalServer
from service.settings import Settings
from tests.conftest import BUCKET, PREFIX, customers, load_event, publish

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# 100 rows: low-cardinality columns (segment, region, tier) are stored dictionary-encoded.
# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

IDS = [f"C{i:09d}" for i in range(1, 101)]
HIT = "C000000002"
HIT_ITEM = {
    "customer_id": "C000000002",
    "account_id": "A0000000001",
    "segment": "smb",
    "region": "eu-west-1",
    "tier": "premium",
    "updated_at": "2024-01-02T09:30:00+00:00",
}
MISS = "C999999999"


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str | None
    body: Any


def call(server: LocalServer, method: str, path: str, body: bytes | None = None) -> Answer:
    """One request on a fresh connection; the body is parsed as JSON."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, response.getheader("Content-Type"), json.loads(data))
    finally:
        connection.close()


def batch(keys: list[str]) -> bytes:
    return json.dumps({"customer_ids": keys}).encode()


@contextmanager
def serving(server: LocalServer) -> Iterator[LocalServer]:
    # http.server binds in its constructor, so requests queue until the loop starts: no waiting.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _root(request: pytest.FixtureRequest, tmp_path: Path, *, published: bool) -> str:
    """A snapshot root URI on disk or on the moto server, with or without a snapshot."""
    if request.param == "file":
        store: FileStore | S3Store = FileStore(tmp_path / "snapshots")
    else:
        store = S3Store(request.getfixturevalue("server_s3"), BUCKET, PREFIX)
    if published:
        publish(store, customers(IDS))
    return store.uri


@pytest.fixture(params=["file", "s3"])
def root_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _root(request, tmp_path, published=True)


@pytest.fixture(params=["file", "s3"])
def empty_root_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _root(request, tmp_path, published=False)


def _function(uri: str) -> LookupFunction:
    return LookupFunction(build_service(Settings(snapshot_uri=uri)))


@pytest.fixture
def server(root_uri: str) -> Iterator[LocalServer]:
    with serving(LocalServer(_function(root_uri), port=0)) as running:
        yield running


@pytest.fixture
def empty_server(empty_root_uri: str) -> Iterator[LocalServer]:
    with serving(LocalServer(_function(empty_root_uri), port=0)) as running:
        yield running


# --- lookups --------------------------------------------------------------------------------


def test_get_known_customer_answers_200_with_item(server: LocalServer) -> None:
    answer = call(server, "GET", f"/customers/{HIT}")

    assert answer.status == 200
    assert answer.body["item"] == HIT_ITEM


def test_get_known_customer_answers_with_snapshot_block(
    server: LocalServer, serve_mode: str
) -> None:
    snapshot = call(server, "GET", f"/customers/{HIT}").body["snapshot"]

    assert set(snapshot) == {"version", "created_at", "age_seconds", "stale", "checked_at", "mode"}
    assert snapshot["mode"] == serve_mode
    assert snapshot["version"].startswith("20261123T120000Z-")
    assert snapshot["created_at"] == "2026-11-23T12:00:00Z"
    assert isinstance(snapshot["age_seconds"], int)
    assert isinstance(snapshot["stale"], bool)
    assert snapshot["checked_at"].endswith("Z")


def test_get_unknown_customer_answers_404_json(server: LocalServer) -> None:
    answer = call(server, "GET", f"/customers/{MISS}")

    assert answer.status == 404
    assert answer.body["error"]["code"] == "not_found"
    assert answer.body["snapshot"]["version"].startswith("20261123T120000Z-")


@pytest.mark.parametrize(
    "path",
    ["/customers/bad%20key", "/customers/%C3%A9", f"/customers/{'A' * 65}", "/customers/a%22b"],
    ids=["space", "non-ascii", "too long", "quote"],
)
def test_get_malformed_key_answers_400_json(server: LocalServer, path: str) -> None:
    answer = call(server, "GET", path)

    assert answer.status == 400
    assert answer.body["error"]["code"] == "bad_request"
    assert "customer_id" in answer.body["error"]["message"]


def test_batch_answers_items_in_request_order_and_missing(server: LocalServer) -> None:
    answer = call(
        server, "POST", "/customers/batch", batch(["C000000003", MISS, "C000000001", HIT])
    )

    assert answer.status == 200
    assert [item["customer_id"] for item in answer.body["items"]] == [
        "C000000003",
        "C000000001",
        HIT,
    ]
    assert answer.body["items"][2] == HIT_ITEM
    assert answer.body["missing"] == [MISS]


def test_batch_answers_with_snapshot_block(server: LocalServer) -> None:
    answer = call(server, "POST", "/customers/batch", batch([HIT]))

    assert answer.body["snapshot"]["created_at"] == "2026-11-23T12:00:00Z"


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"customer_ids": [', b"", b"\xff\xfe\x00binary"],
    ids=["text", "truncated", "empty", "binary"],
)
def test_batch_with_unparseable_body_answers_400(server: LocalServer, body: bytes) -> None:
    answer = call(server, "POST", "/customers/batch", body)

    assert answer.status == 400
    assert answer.body["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    "payload",
    [[HIT], {"ids": [HIT]}, {"customer_ids": HIT}, {"customer_ids": []}, {"customer_ids": [1]}],
    ids=["list", "wrong field", "string", "empty", "number"],
)
def test_batch_with_wrong_shape_answers_400(server: LocalServer, payload: object) -> None:
    answer = call(server, "POST", "/customers/batch", json.dumps(payload).encode())

    assert answer.status == 400
    assert answer.body["error"]["code"] == "bad_request"


def test_batch_with_too_many_keys_answers_400(server: LocalServer) -> None:
    answer = call(server, "POST", "/customers/batch", batch([*IDS, "C000000101"]))

    assert answer.status == 400
    assert "101 keys; the most is 100" in answer.body["error"]["message"]


def test_batch_with_the_most_keys_answers_200(server: LocalServer) -> None:
    answer = call(server, "POST", "/customers/batch", batch(IDS))

    assert answer.status == 200
    assert len(answer.body["items"]) == 100


def test_get_key_with_an_encoded_slash_answers_404_json(server: LocalServer) -> None:
    # Decoded, as an HTTP API decodes it before routing, the path has one segment too many.
    answer = call(server, "GET", "/customers/bad%2Fkey")

    assert (answer.status, answer.body["error"]["code"]) == (404, "route_not_found")


# --- one percent-encoded key, three ways in ---------------------------------------------------

# A client's path, and the status it gets. A REST API passes ``path`` on as the client encoded
# it (``pathParameters`` decoded); an HTTP API decodes the path once before routing, so its
# ``rawPath`` arrives decoded; the local server decodes as the HTTP API does.
ENCODED_PATHS = {
    "encoded dash": ("/customers/C%2D1", 200),
    "lower-case escape": ("/customers/C%2d1", 200),
    "all encoded": ("/customers/%43%2D%31", 200),
    "encoded space": ("/customers/bad%20key", 400),
    "invalid escape": ("/customers/%ZZ", 400),
    "truncated escape": ("/customers/C1%2", 400),
    "double encoded": ("/customers/C%252D1", 400),
    "encoded quote": ("/customers/bad%22key", 400),
    "encoded non-ascii": ("/customers/%C3%A9", 400),
    "invalid utf-8": ("/customers/%FF", 400),
    "encoded newline": ("/customers/C-1%0A", 400),
    "encoded nul": ("/customers/C-1%00", 400),
    "encoded slash": ("/customers/bad%2Fkey", 404),
}


def rest_api_event(path: str) -> dict[str, Any]:
    """The event a REST API sends for ``GET path``."""
    event = load_event("rest_v1_get_customer")
    event["path"] = path
    event["requestContext"]["path"] = f"/Prod{path}"
    event["pathParameters"] = {"customer_id": unquote(path.removeprefix("/customers/"))}
    return event


def http_api_event(path: str) -> dict[str, Any]:
    """The event an HTTP API sends for ``GET path`` (were its route to match)."""
    decoded = unquote(path)
    event = load_event("http_v2_get_customer")
    event["rawPath"] = event["requestContext"]["http"]["path"] = decoded
    event["pathParameters"] = {"customer_id": decoded.removeprefix("/customers/")}
    return event


def comparable(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Status and body, less the snapshot's age (it may tick between two calls)."""
    if "snapshot" in body:
        body = {**body, "snapshot": {**body["snapshot"], "age_seconds": None}}
    return status, body


@pytest.fixture
def dash_function(tmp_path: Path) -> LookupFunction:
    """The function over a snapshot that holds the key ``C-1``."""
    store = FileStore(tmp_path / "snapshots")
    publish(store, customers(["C-1", *IDS[:3]]))
    return _function(store.uri)


@pytest.mark.parametrize(("path", "status"), ENCODED_PATHS.values(), ids=ENCODED_PATHS)
def test_encoded_key_answers_the_same_through_rest_http_api_and_local_server(
    dash_function: LookupFunction, path: str, status: int
) -> None:
    answers = {}
    for name, event in (("rest", rest_api_event(path)), ("http", http_api_event(path))):
        response = dash_function(event, LocalContext())
        answers[name] = comparable(response["statusCode"], json.loads(response["body"]))
    with serving(LocalServer(dash_function, port=0)) as server:
        local = call(server, "GET", path)
    answers["local"] = comparable(local.status, local.body)

    assert answers["rest"] == answers["http"] == answers["local"]
    assert answers["local"][0] == status
    if status == 200:
        assert answers["local"][1]["item"]["customer_id"] == "C-1"


# --- routes ---------------------------------------------------------------------------------


def test_delete_answers_405_json(server: LocalServer) -> None:
    answer = call(server, "DELETE", f"/customers/{HIT}")

    assert answer.status == 405
    assert answer.body["error"]["code"] == "method_not_allowed"


def test_get_on_batch_route_answers_as_a_key_lookup(server: LocalServer) -> None:
    # "batch" is also a well-formed key, so GET /customers/batch is a (missing) customer.
    answer = call(server, "GET", "/customers/batch")

    assert answer.status == 404
    assert answer.body["error"]["code"] == "not_found"


def test_unknown_path_answers_404_json(server: LocalServer) -> None:
    answer = call(server, "GET", "/nope")

    assert answer.status == 404
    assert answer.body["error"]["code"] == "route_not_found"


def test_health_answers_200_with_snapshot(server: LocalServer) -> None:
    answer = call(server, "GET", "/health")

    assert answer.status == 200
    assert answer.body["status"] == "ok"
    assert answer.body["snapshot"]["version"].startswith("20261123T120000Z-")


def test_health_without_snapshot_answers_503_json(empty_server: LocalServer) -> None:
    answer = call(empty_server, "GET", "/health")

    assert answer.status == 503
    assert answer.content_type == "application/json"
    assert answer.body["error"]["code"] == "snapshot_unavailable"


def test_lookup_without_snapshot_answers_503_json(empty_server: LocalServer) -> None:
    answer = call(empty_server, "GET", f"/customers/{HIT}")

    assert answer.status == 503
    assert answer.body["error"]["code"] == "snapshot_unavailable"


REQUESTS = {
    "hit": ("GET", f"/customers/{HIT}", None),
    "miss": ("GET", f"/customers/{MISS}", None),
    "bad key": ("GET", "/customers/bad%20key", None),
    "batch": ("POST", "/customers/batch", batch([HIT, MISS])),
    "bad body": ("POST", "/customers/batch", b"not json"),
    "delete": ("DELETE", f"/customers/{HIT}", None),
    "no route": ("GET", "/nope", None),
    "health": ("GET", "/health", None),
}


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS.values(), ids=REQUESTS.keys())
def test_every_answer_is_application_json(
    server: LocalServer, method: str, path: str, body: bytes | None
) -> None:
    assert call(server, method, path, body).content_type == "application/json"


def test_one_answer_carries_nothing_of_the_previous_request(server: LocalServer) -> None:
    call(server, "POST", "/customers/batch", batch([HIT]))

    answer = call(server, "GET", f"/customers/{MISS}")

    assert HIT not in json.dumps(answer.body)
    assert "item" not in answer.body


# --- the socket -----------------------------------------------------------------------------


def test_server_binds_loopback_only(server: LocalServer) -> None:
    assert server.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.server_address[1]}"


def test_two_requests_share_one_keep_alive_connection(server: LocalServer) -> None:
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        statuses = []
        for path in (f"/customers/{HIT}", "/health"):
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        connection.close()

    assert statuses == [200, 200]


def test_head_answer_has_no_body(server: LocalServer) -> None:
    # A HEAD response carries headers only (RFC 9110 9.3.2); body bytes written after it are
    # read by a keep-alive client as the start of its next response.
    with socket.create_connection(server.server_address[:2], timeout=30) as raw:
        raw.sendall(b"HEAD /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        received = b"".join(iter(lambda: raw.recv(65536), b""))

    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ")
    assert body == b""


class _NoDelayProbe(LocalServer):
    """Notes TCP_NODELAY on each accepted socket just before the server closes it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodelay: list[int] = []
        self.closed = threading.Event()

    def shutdown_request(self, request: socket.socket) -> None:
        self.nodelay.append(request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.closed.set()
        super().shutdown_request(request)


def test_accepted_sockets_have_tcp_nodelay(root_uri: str) -> None:
    with serving(_NoDelayProbe(_function(root_uri), port=0)) as server:
        call(server, "GET", "/health")
        assert server.closed.wait(timeout=30)

    assert [bool(flag) for flag in server.nodelay] == [True]
