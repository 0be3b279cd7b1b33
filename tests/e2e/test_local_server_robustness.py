"""The local server under concurrent clients, stalled clients and malformed framing."""

from __future__ import annotations

import http.client
import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from loaders.store import FileStore
from service.handler import LookupFunction
from service.local_server import LocalServer
from tests.conftest import customers, publish
from tests.e2e.test_local_server import HIT, IDS, _function, batch, call, serving

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Short, so that the stalled-client tests finish quickly; they wait on sockets, never sleep.
# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

TIMEOUT_SECONDS = 0.2


@pytest.fixture
def function(tmp_path: Path) -> LookupFunction:
    store = FileStore(tmp_path / "snapshots")
    publish(store, customers(IDS))
    return _function(store.uri)


@pytest.fixture
def file_server(function: LookupFunction) -> Iterator[LocalServer]:
    server = LocalServer(function, port=0, connection_timeout_seconds=TIMEOUT_SECONDS)
    with serving(server) as running:
        yield running


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    # Switch threads as often as possible, so interleavings that are rare under load happen.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _ask(server: LocalServer, n: int) -> tuple[str, list[str]]:
    """Alternate single and batch lookups; return the key asked and the keys answered."""
    key = IDS[n % len(IDS)]
    if n % 2:
        answer = call(server, "POST", "/customers/batch", batch([key]))
        return key, [item["customer_id"] for item in answer.body["items"]]
    answer = call(server, "GET", f"/customers/{key}")
    return key, [answer.body["item"]["customer_id"]]


def test_concurrent_requests_each_get_their_own_answer(
    file_server: LocalServer, eager_thread_switches: None
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda n: _ask(file_server, n), range(400)))

    assert [asked for asked, _ in answers] == [got[0] for _, got in answers]


def _raw(server: LocalServer, request: bytes) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), json.loads(body)


@pytest.mark.parametrize("length", [b"abc", b"-5"])
def test_bad_content_length_answers_400_json(file_server: LocalServer, length: bytes) -> None:
    status, body = _raw(
        file_server,
        b"POST /customers/batch HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n",
    )

    assert (status, body["error"]["code"]) == (400, "bad_request")


def test_chunked_body_answers_411_json(file_server: LocalServer) -> None:
    status, body = _raw(
        file_server,
        b"POST /customers/batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )

    assert (status, body["error"]["code"]) == (411, "length_required")


# --- stalled clients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        b"GET /heal",
        b'POST /customers/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{"customer',
    ],
    ids=["nothing", "headers-unfinished", "request-line-unfinished", "body-unfinished"],
)
def test_stalled_client_is_dropped_without_an_answer(file_server: LocalServer, sent: bytes) -> None:
    with socket.create_connection(file_server.server_address[:2], timeout=10) as sock:
        sock.sendall(sent)

        # Without the server's timeout this recv would wait its own 10 s and raise.
        assert sock.recv(65536) == b""


def test_an_idle_keep_alive_connection_is_dropped(file_server: LocalServer) -> None:
    with socket.create_connection(file_server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        assert (response.status, response.getheader("Connection")) == (200, None)

        assert sock.recv(65536) == b""


def test_a_stalled_client_does_not_hold_up_others(file_server: LocalServer) -> None:
    with socket.create_connection(file_server.server_address[:2], timeout=10) as stalled:
        stalled.sendall(b"GET /health HTTP/1.1\r\n")

        assert call(file_server, "GET", f"/customers/{HIT}").status == 200


# --- many clients at once ---------------------------------------------------------------------


def test_200_simultaneous_connections_are_all_answered(function: LookupFunction) -> None:
    # Connect and send before the server accepts anything: every connection waits in the listen
    # backlog. With socketserver's default backlog of 5 the kernel drops most of these SYNs and
    # the connects time out; with 256 all of them are held and then answered.
    server = LocalServer(function, port=0, connection_timeout_seconds=10)
    keys = [IDS[n % len(IDS)] for n in range(200)]
    sockets = []
    try:
        for key in keys:
            sock = socket.create_connection(server.server_address[:2], timeout=5)
            sockets.append(sock)
            sock.sendall(f"GET /customers/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answers = []
        with serving(server):
            for sock in sockets:
                response = http.client.HTTPResponse(sock)
                response.begin()
                answers.append((response.status, json.loads(response.read())["item"]))
    finally:
        for sock in sockets:
            sock.close()

    assert [status for status, _ in answers] == [200] * 200
    assert [item["customer_id"] for _, item in answers] == keys


# --- malformed requests get JSON, never the stdlib's HTML -------------------------------------

MALFORMED = {
    "one word": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "four words": (b"GET /health HTTP/1.1 extra\r\n\r\n", 400, "bad_request"),
    "bad version": (b"GET /health HTTX/1.1\r\n\r\n", 400, "bad_request"),
    "http/2": (b"GET /health HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),
    "http/0.9": (b"GET /health\r\n", 505, "http_version_not_supported"),
    "http/0.9 post": (b"POST /health\r\n", 505, "http_version_not_supported"),
    "unsupported method": (b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
    "options": (b"OPTIONS /health HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
    "header without colon": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        400,
        "bad_request",
    ),
    "header without name": (b"GET /health HTTP/1.1\r\n: x\r\n\r\n", 400, "bad_request"),
    "continuation first": (b"GET /health HTTP/1.1\r\n folded\r\n\r\n", 400, "bad_request"),
    "request line too long": (
        b"GET /customers/" + b"C" * 70_000 + b" HTTP/1.1\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "header line too long": (
        b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        431,
        "request_header_fields_too_large",
    ),
    "too many headers": (
        b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(120)) + b"\r\n",
        431,
        "request_header_fields_too_large",
    ),
    "content-length with underscore": (
        b"POST /customers/batch HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n",
        400,
        "bad_request",
    ),
    "content-length of 5000 digits": (
        b"POST /customers/batch HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        413,
        "payload_too_large",
    ),
}


@pytest.mark.parametrize(("request_bytes", "status", "code"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_request_answers_json_error(
    file_server: LocalServer, request_bytes: bytes, status: int, code: str
) -> None:
    with socket.create_connection(file_server.server_address[:2], timeout=10) as sock:
        sock.sendall(request_bytes)
        received = b"".join(iter(lambda: sock.recv(65536), b""))

    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert status_line.startswith(f"HTTP/1.1 {status} ")
    assert (headers["content-type"], headers["connection"]) == ("application/json", "close")
    assert int(headers["content-length"]) == len(body)
    assert b"<" not in received  # no HTML anywhere
    error = json.loads(body)["error"]
    assert (set(error), error["code"]) == ({"code", "message"}, code)
    # The refused line is not echoed back: a path may carry a customer key.
    assert "health" not in error["message"]
    assert "CCCC" not in error["message"]
