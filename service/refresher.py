"""Refresh between requests: the due pointer check (and any reload) runs where no request waits.

Chosen once per process by :func:`start_refresher`, from the settings:

- **Standard Lambda**: the environment is frozen as soon as the runtime and every extension
  have asked for their next event, so a background thread would stop with the handler. An
  *internal extension* (a thread of the runtime process, registered with the Lambda Extensions
  API) may work after the response has gone out, until it asks for its next event: it waits
  for the handler to answer, runs the due check, then asks. Requests never start a check.
- **Lambda Managed Instances** (``AWS_LAMBDA_MAX_CONCURRENCY`` set) and the local server: the
  environment is never frozen, so a timer thread runs the due checks.
- **Anywhere else** (tests, ``REFRESH_MODE=request``, no ``AWS_LAMBDA_RUNTIME_API``, or a
  registration that fails): nothing runs, and the request that finds the TTL lapsed checks.

If the extension's loop ever stops, it hands the checks back to the requests. No boto3 here:
the Extensions API is plain HTTP on the runtime's loopback address.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from service.cache import CheckOutcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.cache import SnapshotCache
    from service.settings import Settings

    Handler = Callable[[Any, Any], Any]

EXTENSION_NAME = "snapshot-refresh"
EXTENSIONS_API = "/2020-01-01/extension"
REGISTER_TIMEOUT_SECONDS = 2.0
# Work after the response still counts against the function's timeout (the whole invoke phase
# does): stop waiting this long before the invocation's deadline, and ask for the next event.
DEADLINE_MARGIN_SECONDS = 1.0
TIMER_POLL_SECONDS = 1.0
# A next-event call that fails on the connection (a restored SnapStart copy may find its
# pre-snapshot socket gone) is tried again this many times before the extension gives up.
NEXT_EVENT_ATTEMPTS = 3
# Created at module scope so that the handler's Powertools set-up turns these lines into JSON.
logger = logging.getLogger(__name__)


class ExtensionError(Exception):
    """The Extensions API refused a call or could not be reached."""


class ExtensionsApi(Protocol):
    """The two Extensions API calls an internal extension makes."""

    def register(self, name: str, events: list[str]) -> str: ...

    def next_event(self, identifier: str) -> dict[str, Any]: ...


class HttpExtensionsApi:
    """The Lambda Extensions API at ``address`` (``AWS_LAMBDA_RUNTIME_API``: ``host:port``).

    Follows the "Lambda Extensions API" reference: ``POST /2020-01-01/extension/register``
    with the ``Lambda-Extension-Name`` header answers a ``Lambda-Extension-Identifier``, which
    every ``GET /2020-01-01/extension/event/next`` then carries. ``next`` blocks until the next
    event, however long the environment stays frozen, so it has no timeout. One keep-alive
    connection serves every call; one that breaks is opened again by the next call.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._connection: Any = None  # http.client.HTTPConnection, imported on first use

    def register(self, name: str, events: list[str]) -> str:
        """Register ``name`` for ``events``; returns the extension's identifier."""
        status, headers, body = self._call(
            "POST",
            f"{EXTENSIONS_API}/register",
            body=json.dumps({"events": events}).encode(),
            headers={"Lambda-Extension-Name": name, "Content-Type": "application/json"},
            timeout=REGISTER_TIMEOUT_SECONDS,
        )
        identifier = headers.get("lambda-extension-identifier")
        if status != 200 or not identifier:
            raise ExtensionError(f"register answered {status}: {_error_text(body)}")
        return identifier

    def next_event(self, identifier: str) -> dict[str, Any]:
        """Block until the next event; returns its JSON body."""
        status, _, body = self._call(
            "GET",
            f"{EXTENSIONS_API}/event/next",
            headers={"Lambda-Extension-Identifier": identifier},
            timeout=None,
        )
        if status != 200:
            raise ExtensionError(f"event/next answered {status}: {_error_text(body)}")
        try:
            event = json.loads(body)
        except ValueError as exc:
            raise ExtensionError(f"event/next answered a body that is not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise ExtensionError("event/next answered JSON that is not an object")
        return event

    def close(self) -> None:
        """Close the connection (the next call opens another)."""
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def _call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        timeout: float | None,
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        import http.client  # only a Lambda environment with extensions pays for it

        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.address)
        self._connection.timeout = timeout  # applies to the socket it opens next
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout)
        try:
            self._connection.request(method, path, body=body, headers=headers)
            response = self._connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ExtensionError(f"{method} {path} failed: {type(exc).__name__}: {exc}") from exc
        if response.will_close:
            self.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def _error_text(body: bytes) -> str:
    try:
        error = json.loads(body)
        return f"{error.get('errorType', '')}: {error.get('errorMessage', '')}".strip(": ")
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


class AfterResponse:
    """An internal extension that runs the due pointer check after each response.

    Parameters
    ----------
    cache : SnapshotCache
        Whose due checks this runs; its ``checks_in_request`` is off while the loop runs.
    api : ExtensionsApi
        The Extensions API (``HttpExtensionsApi`` in Lambda; a fake in tests).
    wall_clock : callable, default time.time
        Epoch seconds, compared with each event's ``deadlineMs``.
    margin_seconds : float
        Asks for the next event this long before the invocation's deadline at the latest.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        api: ExtensionsApi,
        *,
        wall_clock: Callable[[], float] = time.time,
        margin_seconds: float = DEADLINE_MARGIN_SECONDS,
        logger: logging.Logger | None = None,
    ) -> None:
        self._cache = cache
        self._api = api
        self._wall_clock = wall_clock
        self._margin_seconds = margin_seconds
        self._log = logger or globals()["logger"]
        self._answered = threading.Event()
        self._identifier: str | None = None
        self.thread: threading.Thread | None = None

    def register(self) -> None:
        """Register for INVOKE events; must happen during init.

        Raises
        ------
        ExtensionError
            If the Extensions API refuses or cannot be reached.
        """
        self._identifier = self._api.register(EXTENSION_NAME, ["INVOKE"])

    def start(self) -> None:
        """Take the due checks off the request path and start the event loop."""
        if self._identifier is None:
            raise RuntimeError("register() the extension before start()")
        self._cache.checks_in_request = False
        self.thread = threading.Thread(target=self._loop, name=EXTENSION_NAME, daemon=True)
        self.thread.start()

    def answered(self) -> None:
        """Called when the handler has answered the current invocation."""
        self._answered.set()

    def after(self, event: dict[str, Any]) -> CheckOutcome | None:
        """For one INVOKE event: wait for the handler's answer, then run the due check.

        Both waits end before the invocation's deadline (less the margin); a check still
        running then goes on by itself, and the environment may freeze with it.
        """
        deadline = _deadline_seconds(event)
        if not self._answered.wait(self._left(deadline)):
            self._log.warning("no answer before the invocation's deadline; no check this time")
            return None
        if not self._cache.is_check_due:
            return None
        outcome = self._cache.check_if_due(wait_seconds=self._left(deadline))
        if outcome is CheckOutcome.PENDING:
            self._log.warning("pointer check still running at the deadline; it goes on alone")
        return outcome

    def _left(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(0.0, deadline - self._wall_clock() - self._margin_seconds)

    def _loop(self) -> None:
        assert self._identifier is not None
        try:
            while True:
                # Cleared before asking: the next invocation cannot start until this extension
                # has asked, so its answer cannot come before the clear.
                self._answered.clear()
                event = self._next_event(self._identifier)
                if event.get("eventType") != "INVOKE":
                    self._log.info("extension got %s; stopping", event.get("eventType"))
                    return
                self.after(event)
        except Exception:  # noqa: BLE001 - the loop must end in the hand-back below, whatever broke
            self._log.exception("refresh extension stopped; requests check the pointer again")
        finally:
            self._cache.checks_in_request = True

    def _next_event(self, identifier: str) -> dict[str, Any]:
        for attempt in range(1, NEXT_EVENT_ATTEMPTS + 1):
            try:
                return self._api.next_event(identifier)
            except ExtensionError as exc:
                if attempt == NEXT_EVENT_ATTEMPTS or not isinstance(exc.__cause__, OSError):
                    raise
                self._log.warning("event/next failed (%s); asking again", exc)
        raise AssertionError("unreachable")  # pragma: no cover


def _deadline_seconds(event: dict[str, Any]) -> float | None:
    deadline_ms = event.get("deadlineMs")
    if isinstance(deadline_ms, int | float) and not isinstance(deadline_ms, bool):
        return deadline_ms / 1000
    return None


class TimedRefresher:
    """A thread that runs the due check every ``poll_seconds``, for environments that are never
    frozen (Lambda Managed Instances, the local server).

    Parameters
    ----------
    cache : SnapshotCache
        Whose due checks this runs; its ``checks_in_request`` is off while the thread runs.
    poll_seconds : float, default 1
        How often it asks whether a check is due (a dictionary lookup when none is).
    """

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        poll_seconds: float = TIMER_POLL_SECONDS,
        logger: logging.Logger | None = None,
    ) -> None:
        self._cache = cache
        self._poll_seconds = poll_seconds
        self._log = logger or globals()["logger"]
        self._stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Take the due checks off the request path and start the thread."""
        self._cache.checks_in_request = False
        self.thread = threading.Thread(target=self._loop, name="snapshot-timer", daemon=True)
        self.thread.start()

    def stop(self, timeout_seconds: float | None = None) -> None:
        """Stop the thread and hand the checks back to the requests."""
        self._stopped.set()
        if self.thread is not None:
            self.thread.join(timeout_seconds)
        self._cache.checks_in_request = True

    def run_due(self) -> CheckOutcome | None:
        """Run the due check, if one is due, waiting up to the cache's own deadline."""
        return self._cache.check_if_due()

    def _loop(self) -> None:
        try:
            while not self._stopped.wait(self._poll_seconds):
                try:
                    self.run_due()
                except Exception:  # noqa: BLE001 - e.g. no thread to start; try again next poll
                    self._log.exception("timed pointer check failed to start")
        finally:
            self._cache.checks_in_request = True


# The extension running in this process, if any: the handler tells it when it has answered.
_extension: AfterResponse | None = None


def start_refresher(
    cache: SnapshotCache,
    settings: Settings,
    *,
    api: ExtensionsApi | None = None,
) -> AfterResponse | TimedRefresher | None:
    """Start the refresher this platform allows (module docstring); None: checks stay in requests.

    Call it during init: Lambda accepts extension registrations only then. A registration
    that fails leaves the checks in the requests, and says so in a log line.
    """
    global _extension
    if settings.refresh_mode == "request":
        return None
    if settings.max_concurrency is not None:
        timer = TimedRefresher(cache)
        timer.start()
        logger.info("pointer checks run on a timer (Lambda Managed Instances)")
        return timer
    if settings.runtime_api is None and api is None:
        return None
    extension = AfterResponse(cache, api or HttpExtensionsApi(settings.runtime_api or ""))
    try:
        extension.register()
    except ExtensionError as exc:
        logger.warning("no refresh extension (%s); requests check the pointer", exc)
        return None
    extension.start()
    _extension = extension
    logger.info("pointer checks run after each response (internal extension)")
    return extension


def wrap_handler(handler: Handler) -> Handler:
    """``handler``, telling the running extension when each invocation is answered.

    Unchanged when no extension runs in this process (outside Lambda, in tests).
    """
    extension = _extension
    if extension is None:
        return handler

    @functools.wraps(handler)
    def answering(event: Any, context: Any) -> Any:
        try:
            return handler(event, context)
        finally:
            extension.answered()

    return answering
