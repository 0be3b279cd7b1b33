"""The local server under concurrent clients and malformed framing."""

from __future__ import annotations

import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from loaders.store import FileStore
from service.local_server import LocalServer
from tests.conftest import customers, publish
from tests.e2e.test_local_server import IDS, _function, batch, call, serving

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[LocalServer]:
    store = FileStore(tmp_path / "snapshots")
    publish(store, customers(IDS))
    with serving(LocalServer(_function(store.uri), port=0)) as running:
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
