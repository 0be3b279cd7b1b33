"""A local stand-in for one Lambda execution environment's Runtime API and Extensions API.

It follows these pages of the AWS Lambda Developer Guide, and, where they leave a detail open
(error bodies and codes, when registration closes), AWS's own Runtime Interface Emulator
(``aws/aws-lambda-runtime-interface-emulator``, ``lambda/rapid`` and ``lambda/rapi/handler``):

- "Using the Lambda runtime API for custom runtimes" (``runtimes-api``):
  ``GET /2018-06-01/runtime/invocation/next`` (the event, with ``Lambda-Runtime-Aws-Request-Id``,
  ``-Deadline-Ms``, ``-Invoked-Function-Arn`` and ``-Trace-Id``),
  ``POST /2018-06-01/runtime/invocation/{id}/response`` and ``.../{id}/error`` (202),
  ``POST /2018-06-01/runtime/init/error`` (202);
- "Using the Lambda Extensions API to create extensions" (``runtimes-extensions-api``):
  ``POST /2020-01-01/extension/register`` (``Lambda-Extension-Name``, ``{"events": [...]}``;
  answers ``Lambda-Extension-Identifier``; internal extensions may not take ``SHUTDOWN``; only
  during init) and ``GET /2020-01-01/extension/event/next`` (``Lambda-Extension-Identifier``);
- "Lambda SnapStart runtime hooks for Python": ``GET /2018-06-01/runtime/restore/next`` and
  ``POST /2018-06-01/runtime/restore/error``, which ``awslambdaric`` calls when
  ``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``; :meth:`LambdaRuntimeFake.restore` stands for
  the restore of a snapshot taken at that point.

The lifecycle, as those pages describe it:

- Init ends when the runtime has asked for its first invocation (or for ``restore/next``) and
  every registered extension has asked for its first event. Registration closes as soon as
  the runtime asks.
- An invocation starts only then. Its INVOKE event goes to every extension registered for it
  and the event to the runtime, at the same time.
- The runtime's response goes back to the caller at once.
- The next invocation starts only after the runtime *and every extension* have asked for their
  next event. That is when the environment is frozen. With ``freeze_pid`` set, the fake stops
  that process (``SIGSTOP``) while it idles and continues it (``SIGCONT``) before the next
  invocation, as Lambda does: no thread of the function runs between invocations.

One environment, one invocation at a time; invocations queue in order. Timestamps are
``time.perf_counter()`` seconds of the process that runs the fake.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = "/2018-06-01/runtime"
EXTENSION = "/2020-01-01/extension"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:customer-lookup:live"
INTERNAL_EVENTS = frozenset({"INVOKE"})  # internal extensions may not register for SHUTDOWN


@dataclass(eq=False)
class Invocation:
    """One invocation: its payload, the runtime's answer, and when each step happened."""

    request_id: str
    payload: bytes
    submitted_at: float
    dispatched_at: float | None = None  # the runtime (and each extension) got the event
    responded_at: float | None = None  # the runtime posted its response or error
    released_at: float | None = None  # the runtime and every extension asked for the next
    kind: str | None = None  # "response" or "error"
    body: bytes = b""
    error_type: str | None = None
    responded: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def result(self, timeout: float = 30.0) -> Any:
        """The parsed response (or error body); waits for it up to ``timeout``."""
        if not self.responded.wait(timeout):
            raise TimeoutError(f"invocation {self.request_id} got no response in {timeout}s")
        return json.loads(self.body)

    @property
    def response_seconds(self) -> float:
        """From the event reaching the runtime to its response (what the caller waits for)."""
        assert self.dispatched_at is not None and self.responded_at is not None
        return self.responded_at - self.dispatched_at

    @property
    def caller_seconds(self) -> float:
        """From submission to response, queueing behind the previous invocation included."""
        assert self.responded_at is not None
        return self.responded_at - self.submitted_at

    @property
    def after_response_seconds(self) -> float:
        """From the response until the environment could take the next invocation."""
        assert self.responded_at is not None and self.released_at is not None
        return self.released_at - self.responded_at


@dataclass(eq=False)
class _Extension:
    name: str
    identifier: str
    events: frozenset[str]
    waiting: bool = False
    event: dict[str, Any] | None = None  # the event to hand over on its pending next call


class LambdaRuntimeFake:
    """The Runtime and Extensions APIs of one execution environment, on 127.0.0.1.

    Parameters
    ----------
    timeout_seconds : float, default 10
        The function timeout: each invocation's deadline (``Lambda-Runtime-Deadline-Ms`` and
        the INVOKE event's ``deadlineMs``).
    register_status : int or None
        Answer every registration with this status (a failing Extensions API), if set.
    snap_start : bool, default False
        Hold ``restore/next`` until :meth:`restore` (the snapshot is "taken" there).
    """

    def __init__(
        self,
        *,
        timeout_seconds: float = 10.0,
        register_status: int | None = None,
        snap_start: bool = False,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.register_status = register_status
        self.freeze_pid: int | None = None
        self.init_error: dict[str, Any] | None = None
        self.restore_error: dict[str, Any] | None = None
        self.invocations: list[Invocation] = []
        self.frozen_count = 0  # how many times the environment was frozen
        self._state = threading.Condition()
        self._queue: deque[Invocation] = deque()
        self._extensions: dict[str, _Extension] = {}
        self._registration_open = True
        self._runtime_waiting = False
        self._current: Invocation | None = None  # dispatched, not yet released
        self._handed: Invocation | None = None  # for the runtime's pending next
        self._restore_held = snap_start
        self.restore_requested = threading.Event()  # the runtime called restore/next
        self._frozen = False
        self._initialized = False
        self._closed = False
        self._server = _Server(self)
        self._serving = threading.Thread(
            target=self._server.serve_forever, name="fake-rapid-http", daemon=True
        )
        self._serving.start()

    @property
    def address(self) -> str:
        """``host:port``, the value of ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def extensions(self) -> list[str]:
        """Names of the registered extensions."""
        with self._state:
            return [e.name for e in self._extensions.values()]

    # --- the caller's side ------------------------------------------------------------------

    def submit(self, payload: Any) -> Invocation:
        """Queue an invocation with ``payload`` (JSON); returns at once."""
        invocation = Invocation(
            request_id=str(uuid.uuid4()),
            payload=json.dumps(payload).encode(),
            submitted_at=time.perf_counter(),
        )
        with self._state:
            self.invocations.append(invocation)
            self._queue.append(invocation)
            self._advance()
        return invocation

    def invoke(self, payload: Any, timeout: float = 30.0) -> Any:
        """Invoke and wait for the response; returns it parsed."""
        return self.submit(payload).result(timeout)

    def wait_initialized(self, timeout: float = 30.0) -> bool:
        """Wait until init is over: every party asked for its next event, or init failed."""
        with self._state:
            return self._state.wait_for(
                lambda: self.init_error is not None or self._initialized, timeout
            )

    def restore(self) -> None:
        """Answer the runtime's ``restore/next``: the environment resumes from the snapshot."""
        with self._state:
            self._restore_held = False
            self._state.notify_all()

    def close(self) -> None:
        """Stop serving; a frozen process is continued first, so that it can be stopped."""
        with self._state:
            self._closed = True
            self._thaw()
            self._state.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # --- the platform's side ----------------------------------------------------------------

    def _is_idle(self) -> bool:
        """The runtime and every extension wait for their next event."""
        return (
            self._runtime_waiting
            and self._handed is None
            and all(e.waiting and e.event is None for e in self._extensions.values())
        )

    def _advance(self) -> None:
        """After any change (called holding the lock): release, start the next, or freeze.

        Done in the same step as the change, so that nothing can slip in between the moment
        the environment goes idle and its freeze.
        """
        if not self._closed and self._is_idle():
            self._initialized = True
            if self._current is not None:
                self._current.released_at = time.perf_counter()
                self._current.released.set()
                self._current = None
            if self._queue:
                self._start(self._queue.popleft())
            else:
                self._freeze()
        self._state.notify_all()

    def _start(self, invocation: Invocation) -> None:
        self._thaw()
        deadline_ms = int((time.time() + self.timeout_seconds) * 1000)
        event = {
            "eventType": "INVOKE",
            "deadlineMs": deadline_ms,
            "requestId": invocation.request_id,
            "invokedFunctionArn": FUNCTION_ARN,
            "tracing": {"type": "X-Amzn-Trace-Id", "value": "Root=1-00000000-000000000000"},
        }
        # Extensions first, then the runtime, as the emulator's doInvoke releases them.
        for extension in self._extensions.values():
            if "INVOKE" in extension.events:
                extension.event = event
        invocation.dispatched_at = time.perf_counter()
        self._current = invocation
        self._handed = invocation

    def _freeze(self) -> None:
        if self.freeze_pid is not None and not self._frozen:
            os.kill(self.freeze_pid, signal.SIGSTOP)
            self._frozen = True
            self.frozen_count += 1

    def _thaw(self) -> None:
        if self._frozen and self.freeze_pid is not None:
            os.kill(self.freeze_pid, signal.SIGCONT)
        self._frozen = False

    # --- request handlers (called on the HTTP server's threads) -----------------------------

    def runtime_next(self) -> tuple[int, dict[str, str], bytes]:
        with self._state:
            self._registration_open = False
            self._runtime_waiting = True
            self._advance()
            self._state.wait_for(lambda: self._handed is not None or self._closed)
            if self._closed:
                return _error(503, "Runtime.Closed", "the environment is shutting down")
            invocation, self._handed = self._handed, None
            self._runtime_waiting = False
            assert invocation is not None
            deadline_ms = int((time.time() + self.timeout_seconds) * 1000)
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
            "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000;Sampled=0",
            "Content-Type": "application/json",
        }
        return 200, headers, invocation.payload

    def runtime_result(
        self, request_id: str, kind: str, body: bytes, error_type: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        with self._state:
            invocation = self._current
            if invocation is None or invocation.request_id != request_id:
                return _error(400, "InvalidRequestID", "Invalid request ID")
            if invocation.kind is not None:
                return _error(403, "InvalidStateTransition", "response already sent")
            invocation.kind, invocation.body, invocation.error_type = kind, body, error_type
            invocation.responded_at = time.perf_counter()
            invocation.responded.set()
            self._state.notify_all()
        return 202, {"Content-Type": "application/json"}, b'{"status":"OK"}'

    def runtime_init_error(self, body: bytes, error_type: str | None) -> tuple[int, dict, bytes]:
        with self._state:
            self.init_error = {"type": error_type, **_json_or_text(body)}
            self._state.notify_all()
        return 202, {"Content-Type": "application/json"}, b'{"status":"OK"}'

    def restore_next(self) -> tuple[int, dict[str, str], bytes]:
        with self._state:
            self._registration_open = False
            self.restore_requested.set()
            self._state.wait_for(lambda: not self._restore_held or self._closed)
        return 200, {}, b""

    def restore_error(self, body: bytes, error_type: str | None) -> tuple[int, dict, bytes]:
        with self._state:
            self.restore_error = {"type": error_type, **_json_or_text(body)}
            self._state.notify_all()
        return 202, {"Content-Type": "application/json"}, b'{"status":"OK"}'

    def register(self, name: str | None, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.register_status is not None:
            return _error(self.register_status, "Extension.Unavailable", "registration failed")
        if not name:
            return _error(403, "Extension.InvalidExtensionName", "Empty extension name")
        try:
            events = json.loads(body)["events"]
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise TypeError("events must be a list of strings")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(403, "InvalidRequestFormat", str(exc))
        if unknown := set(events) - INTERNAL_EVENTS:
            return _error(403, "Extension.InvalidEventType", f"{sorted(unknown)}: not allowed")
        with self._state:
            if not self._registration_open:
                return _error(403, "Extension.RegistrationClosed", "registration closed already")
            if any(e.name == name for e in self._extensions.values()):
                return _error(403, "Extension.InvalidExtensionState", "name already registered")
            extension = _Extension(name, str(uuid.uuid4()), frozenset(events))
            self._extensions[extension.identifier] = extension
        body = {"functionName": "customer-lookup", "functionVersion": "1", "handler": "handler"}
        headers = {"Lambda-Extension-Identifier": extension.identifier}
        return 200, {**headers, "Content-Type": "application/json"}, json.dumps(body).encode()

    def extension_next(self, identifier: str | None) -> tuple[int, dict[str, str], bytes]:
        if not identifier:
            return _error(403, "Extension.MissingExtensionIdentifier", "missing identifier")
        with self._state:
            extension = self._extensions.get(identifier)
            if extension is None:
                return _error(403, "Extension.UnknownExtensionIdentifier", "unknown extension")
            extension.waiting = True
            self._advance()
            self._state.wait_for(lambda: extension.event is not None or self._closed)
            if self._closed:
                return _error(503, "Extension.Closed", "the environment is shutting down")
            event, extension.event = extension.event, None
            extension.waiting = False
        headers = {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())}
        return 200, {**headers, "Content-Type": "application/json"}, json.dumps(event).encode()


def _error(status: int, error_type: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return status, {"Content-Type": "application/json"}, body


def _json_or_text(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {"body": body.decode("utf-8", "replace")}
    return parsed if isinstance(parsed, dict) else {"body": parsed}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the runtime client's libcurl uses
    wbufsize = 1 << 16  # headers and body leave in one write: no Nagle delay between them
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path == f"{RUNTIME}/invocation/next":
            self._answer(*fake.runtime_next())
        elif self.path == f"{RUNTIME}/restore/next":
            self._answer(*fake.restore_next())
        elif self.path == f"{EXTENSION}/event/next":
            self._answer(*fake.extension_next(self.headers.get("Lambda-Extension-Identifier")))
        else:
            self._answer(*_error(404, "NotFound", self.path))

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        parts = self.path.split("/")
        if self.path == f"{EXTENSION}/register":
            self._answer(*fake.register(self.headers.get("Lambda-Extension-Name"), body))
        elif self.path == f"{RUNTIME}/init/error":
            self._answer(*fake.runtime_init_error(body, error_type))
        elif self.path == f"{RUNTIME}/restore/error":
            self._answer(*fake.restore_error(body, error_type))
        elif self.path.startswith(f"{RUNTIME}/invocation/") and len(parts) == 6:
            kind = {"response": "response", "error": "error"}.get(parts[5])
            if kind is None:
                self._answer(*_error(404, "NotFound", self.path))
            else:
                self._answer(*fake.runtime_result(parts[4], kind, body, error_type))
        else:
            self._answer(*_error(404, "NotFound", self.path))

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, fake: LambdaRuntimeFake) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


@contextmanager
def lambda_environment(
    env: dict[str, str],
    *,
    handler: str = "service.handler.handler",
    freeze: bool = True,
    log_path: Path | None = None,
    **fake_options: Any,
) -> Iterator[LambdaRuntimeFake]:
    """One execution environment: the fake APIs, and ``python -m awslambdaric handler``.

    ``env`` is added to this process's environment (AWS_LAMBDA_RUNTIME_API and the variables a
    managed Python runtime sets are filled in). The runtime's output goes to ``log_path``.
    """
    fake = LambdaRuntimeFake(**fake_options)
    child_env = {
        **os.environ,
        "AWS_LAMBDA_RUNTIME_API": fake.address,
        "AWS_LAMBDA_FUNCTION_NAME": "customer-lookup",
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    with (log_path or Path(os.devnull)).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", handler],
            cwd=ROOT,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if freeze:
        fake.freeze_pid = process.pid
    try:
        yield fake
    finally:
        fake.close()
        process.kill()
        process.wait(10)
