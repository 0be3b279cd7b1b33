"""Dev-only HTTP server: real HTTP requests in, API Gateway HTTP API (v2) events to the handler.

    SNAPSHOT_URI=file:///abs/path python -m service.local_server --port 3000 [--workers 4]

Binds 127.0.0.1 only. With ``--workers N`` it runs N server processes on one port
(``SO_REUSEPORT``: the kernel spreads connections), the way Lambda Managed Instances run several
processes per environment; they map one shared copy of the snapshot (``SHARE_SNAPSHOTS`` is
``on`` for them unless set). Each request becomes a full v2 event for the same handler Lambda runs.
Whatever the stdlib cannot parse (request line, headers, HTTP/0.9, an unknown method) is
answered in the handler's JSON error shape, never with the stdlib's HTML page, and a client
that stalls mid-request is dropped after ``connection_timeout_seconds``.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable


MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
_DIGITS = re.compile(r"[0-9]+")


@dataclass
class LocalContext:
    """The parts of a Lambda context object that Powertools and our handler read."""

    function_name: str = "customer-lookup-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:customer-lookup-local"
    )
    log_group_name: str = "/aws/lambda/customer-lookup-local"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def to_event(method: str, target: str, headers: dict[str, str], body: bytes, peer: str) -> dict:
    """Build an API Gateway HTTP API (payload format 2.0) event for one request.

    As an HTTP API does, the path is percent-decoded once, before routing, and ``rawPath``
    carries it decoded; ``rawQueryString`` stays as the client sent it.
    """
    parts = urlsplit(target)
    path = unquote(parts.path)
    now = time.time()
    request_id = secrets.token_urlsafe(10)  # API Gateway's ids look like "YVZ6oj1ToAMEJ8w="
    lowered = {k.lower(): v for k, v in headers.items()}
    text: str | None = None
    is_base64 = False
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": parts.query,
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": peer,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway clients use
    # Buffer each response so headers and body leave in one send (flushed per request by
    # handle_one_request): one packet instead of two, half the syscalls.
    wbufsize = 1 << 16
    server: LocalServer

    def setup(self) -> None:
        # Every read and write on the connection gives up after this; handle_one_request then
        # drops the connection, so a client that sends half a request holds no thread for long.
        self.timeout = self.server.connection_timeout_seconds
        super().setup()
        # Without this, Nagle's algorithm adds ~40 ms to small responses on loopback.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            # API Gateway needs a length too; without one the body can't be framed.
            self._refuse(411, "length_required", "send the body with a Content-Length")
            return
        text = (self.headers.get("Content-Length") or "0").strip()
        if not _DIGITS.fullmatch(text):  # int() would take "-5", "1_0" and other digits
            self._refuse(400, "bad_request", "Content-Length is not a non-negative integer")
            return
        # Short-circuit: int() refuses strings of over 4,300 digits.
        if len(text) > len(str(MAX_BODY_BYTES)) or int(text) > MAX_BODY_BYTES:
            self._refuse(413, "payload_too_large", "body over 6 MB")
            return
        length = int(text)
        body = self.rfile.read(length) if length else b""
        event = to_event(self.command, self.path, dict(self.headers), body, self.client_address[0])
        # One request at a time through the handler, as in a Lambda environment: Powertools'
        # resolvers keep the current event on the class, so threads must not interleave there.
        with self.server.handler_lock:
            result = self.server.handler(event, LocalContext())
        payload = result.get("body") or ""
        data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        self._write(int(result.get("statusCode", 200)), result.get("headers") or {}, data)

    def parse_request(self) -> bool:
        """Read the request line and headers; refuse HTTP/0.9 and malformed header lines."""
        if len(self.raw_requestline.split()) == 2:
            # HTTP/0.9 ("GET /path", no version): the stdlib would wait for headers that never
            # come, then answer without a status line. Refuse it as the stdlib refuses a line
            # that is too long, before reading further.
            self.requestline = self.request_version = self.command = ""
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/0.9 is not supported")
            return False
        if not super().parse_request():
            return False
        if self.headers.defects:  # a line that is not "Name: value" silently ends the headers
            self.send_error(HTTPStatus.BAD_REQUEST, "Malformed header line")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request the stdlib refused in our JSON error shape (its own is HTML)."""
        status = HTTPStatus(code)
        # The stdlib's messages end in what it refused, e.g. "Bad request syntax ('...')"; keep
        # the reason only, since a request line may carry a customer key.
        reason = (message or status.description).split(" (", 1)[0]
        if self.request_version == "HTTP/0.9":
            # The stdlib writes no status line or headers to "HTTP/0.9"; answer in full anyway.
            self.request_version = "HTTP/1.0"
        self._refuse(code, re.sub(r"[^a-z0-9]+", "_", status.phrase.lower()), reason)

    def _refuse(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.close_connection = True  # the rest of the stream can't be trusted
        self._write(status, {"Content-Type": "application/json"}, body)

    def _write(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # HEAD answers headers only; a body would poison keep-alive
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: request lines would carry customer keys."""


class LocalServer(ThreadingHTTPServer):
    """A threaded loopback server that hands every request to ``handler`` as a v2 event.

    Parameters
    ----------
    handler : callable
        The Lambda handler: ``handler(event, context) -> response``.
    port : int, default 0
        0 picks a free port (see :attr:`url`).
    connection_timeout_seconds : float, default 5.0
        How long one read or write on a connection may wait before the connection is dropped.
    """

    daemon_threads = True
    # socketserver's default backlog of 5 drops about half of 200 simultaneous connects.
    request_queue_size = 256

    def __init__(
        self,
        handler: Callable[[dict[str, Any], Any], dict[str, Any]],
        port: int = 0,
        *,
        connection_timeout_seconds: float = 5.0,
        reuse_port: bool = False,
    ) -> None:
        self.handler = handler
        self.handler_lock = threading.Lock()
        self.connection_timeout_seconds = connection_timeout_seconds
        self.allow_reuse_port = reuse_port  # worker processes share one port
        super().__init__(("127.0.0.1", port), _RequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    """Load the snapshot named by SNAPSHOT_URI, then serve it on 127.0.0.1."""
    from service.handler import default_function, handler
    from service.refresher import TimedRefresher
    from service.settings import ConfigError

    parser = argparse.ArgumentParser(description="Serve the lookup handler on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.port < 0:
        parser.error("--workers must be >= 1 and --port >= 0")
    if args.workers > 1:
        return _supervise(args.port, args.workers)
    started = time.perf_counter()
    try:
        function = default_function()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # Load before accepting requests, so the first answer is not a cold load.
    function.service.cache.refresh()
    if function.service.cache.version is None:
        print("warning: no snapshot could be loaded; /health will answer 503", file=sys.stderr)
    server = LocalServer(handler, args.port, reuse_port=args.worker)
    cache = function.service.cache
    # This process is never frozen: a timer runs the due checks, so no request waits on one.
    refresher = (
        None if function.service.settings.refresh_mode == "request" else TimedRefresher(cache)
    )
    if refresher is not None:
        refresher.start()
    example = "C000000001"
    if cache.version is not None:
        example = cache.serving().index.first_key
    serving = cache.serving().snapshot["mode"] if cache.version is not None else "nothing"
    print(f"loaded snapshot {cache.version} ({serving}) in {time.perf_counter() - started:.2f}s")
    print(f"serving on {server.url}  (Ctrl-C to stop)")
    print(f"  curl {server.url}/customers/{example}")
    print(
        f"  curl -X POST {server.url}/customers/batch -H 'Content-Type: application/json' "
        f"""-d '{{"customer_ids": ["{example}", "NO_SUCH_ID"]}}'"""
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if refresher is not None:
            refresher.stop(timeout_seconds=5)
        server.server_close()
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the workers as Ctrl-C does


def _supervise(port: int, workers: int) -> int:
    """Run ``workers`` server processes on one port until Ctrl-C or SIGTERM, then stop them."""
    import os
    import signal
    import subprocess

    if port == 0:  # every worker must bind the same port: pick one now
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    env = {**os.environ, "SHARE_SNAPSHOTS": os.environ.get("SHARE_SNAPSHOTS") or "on"}
    command = [sys.executable, "-m", "service.local_server", "--port", str(port), "--worker"]
    children = [subprocess.Popen(command, env=env) for _ in range(workers)]
    print(f"{workers} workers on http://127.0.0.1:{port}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        for child in children:
            code = code or child.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
