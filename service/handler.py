"""The lookup Lambda: build the parts once per container, then route each event by its shape.

Four callers share one entry point, :func:`handler`:

- API Gateway REST (v1) proxy events and HTTP API (v2) events, routed here by one table;
- EventBridge scheduled events, which force a pointer check and return no customer data;
- direct invocations, ``{"customer_id": ...}`` or ``{"customer_ids": [...]}``.

Module scope holds settings, clients and the cache only; nothing of any one request.

Powertools does the logging (``inject_lambda_context``) and, through :mod:`loaders.metrics`, the
metrics. Routing is ours: three routes do not need its resolvers, whose import (with every event
data class) cost about a tenth of the cold start, and whose dispatch was most of a request's CPU.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from loaders.metrics import LOOKUP_SERVICE, Metric, MetricsRecorder, quiet_recorder
from loaders.snapshot import SnapshotReader
from loaders.store import make_s3_client, open_store, parse_uri
from service import routes
from service.cache import SnapshotCache, SnapshotSource
from service.errors import (
    AppError,
    BadRequestError,
    MethodNotAllowedError,
    RouteNotFoundError,
    internal_error_body,
    to_response,
)
from service.memory import lookup_memory_pool, pin_mmap_threshold
from service.refresher import start_refresher, wrap_handler
from service.settings import Settings, in_lambda
from service.snapstart import register_restore_hook

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.typing import LambdaContext

# The snapshot lives long in a small process: a pool that decodes fast and hands freed pages
# back (see lookup_memory_pool). With the mmap threshold pinned, RSS stays flat across
# refreshes (scripts/bench.py --soak, 1M rows).
pa.set_memory_pool(lookup_memory_pool())
pin_mmap_threshold()

logger = Logger(service="customer-lookup")
copy_config_to_registered_loggers(source_logger=logger, include={"service", "loaders"})

JSON = "application/json"
_SCHEDULE_SOURCES = frozenset({"aws.events", "aws.scheduler"})
# Every route: the one table the router matches, and reads again to tell "no such path" (404)
# from "wrong method" (405).
_ROUTES = (
    ("/customers/<customer_id>", "GET"),
    ("/customers/batch", "POST"),
    ("/health", "GET"),
)
# Powertools' segment alphabet (URI characters): a REST API path whose parameters are all of
# these may end in slashes, as its REST resolver allowed. Kept so that no answer changed when
# routing moved here (tests/unit/test_handler_bytes.py pins them all).
_URI_SEGMENT = r"[-._~()'!*:@,;=+&$%<> \[\]{}|^\w]+"


def _pattern(rule: str, segment: str, tail: str = "") -> re.Pattern[str]:
    """``rule`` as a regular expression whose ``<name>`` groups match ``segment``."""
    return re.compile(re.sub(r"<(\w+)>", lambda m: f"(?P<{m[1]}>{segment})", rule) + tail)


# (rule, method, full-match pattern whose parameters take anything but "/", REST's slashed one)
_ROUTE_PATTERNS = tuple(
    (rule, method, _pattern(rule, "[^/]+"), _pattern(rule, _URI_SEGMENT, "/+"))
    for rule, method in _ROUTES
)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Service:
    """Everything a container keeps between invocations."""

    settings: Settings
    cache: SnapshotCache
    metrics: MetricsRecorder = field(default_factory=lambda: quiet_recorder(LOOKUP_SERVICE))


def build_service(
    settings: Settings, *, s3_client: Any = None, metrics: MetricsRecorder | None = None
) -> Service:
    """Open the snapshot store named by ``settings`` and wrap it in a cache (loads lazily).

    Metrics print (as EMF) only in Lambda unless a recorder is given.
    """
    if s3_client is None and parse_uri(settings.snapshot_uri)[0] == "s3":
        s3_client = make_s3_client(settings.storage)
    if metrics is None:
        metrics = MetricsRecorder(
            namespace=settings.metrics_namespace, service=LOOKUP_SERVICE, enabled=in_lambda()
        )
    store = open_store(settings.snapshot_uri, s3_client=s3_client)
    source: SnapshotSource = SnapshotReader(store)
    if settings.shares_snapshots:
        from service.shared import SharedSource  # only where processes share /tmp

        max_mb = settings.share_max_mb
        source = SharedSource(
            source, settings.share_dir, max_bytes=None if max_mb is None else max_mb << 20
        )
    cache = SnapshotCache(
        source,
        key_column=settings.key_column,
        ttl_seconds=settings.refresh_ttl_seconds,
        max_staleness_seconds=settings.max_staleness_seconds,
        refresh_wait_seconds=settings.refresh_wait_seconds,
        load_wait_seconds=settings.cold_load_wait_seconds,
        # A client that retries after this finds the load finished or given up on.
        retry_after_seconds=max(1, math.ceil(settings.cold_load_wait_seconds)),
        memory_budget_bytes=settings.memory_budget_bytes,
        metrics=metrics,
        serve_mode=settings.serve_mode,
        tiered_cache_bytes=settings.tiered_cache_mb << 20,
        tiered_fetch_workers=settings.tiered_fetch_workers,
    )
    return Service(settings, cache, metrics)


# json.dumps with options builds an encoder per call; one built here answers the same bytes.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _route_match(kind: str, method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The rule and arguments of the route for ``method path``, if there is one.

    A parameter takes anything but "/": a key holding other characters (a quote, a backslash)
    is still this route's, and gets its check's 400, not a 404. A REST API path may also end in
    slashes when its parameters are URI characters (``_URI_SEGMENT``).
    """
    for rule, route_method, pattern, slashed in _ROUTE_PATTERNS:
        if route_method != method:
            continue
        match = pattern.fullmatch(path)
        if match is None and kind == "rest_v1":
            match = slashed.fullmatch(path)
        if match is not None:
            return rule, match.groupdict()
    return None


def _route_error(method: str, path: str) -> AppError:
    """404 for an unknown path, 405 (with ``Allow``) for a known path and another method.

    The path is not echoed back: it may hold a customer key.
    """
    allowed = sorted({m for _, m, pattern, _ in _ROUTE_PATTERNS if pattern.fullmatch(path)})
    if allowed and method not in allowed:
        return MethodNotAllowedError(
            f"{method} is not allowed on this route; use {allowed[0]}", allowed=allowed
        )
    return RouteNotFoundError(f"no route for {method} on this path")


def _method_and_path(kind: str, event: dict[str, Any]) -> tuple[str, str]:
    """The upper-cased method and the path to route, of an event ``check_api_event`` passed."""
    if kind == "rest_v1":
        return event["httpMethod"].upper(), event["path"]
    context = event["requestContext"]
    path = event["rawPath"]
    stage = context["stage"]
    if stage != "$default":  # a named stage leads the path: "/Prod/health" is "/health"
        path = path[len(stage) + 1 :]
    return context["http"]["method"].upper(), path


def _request_body(event: dict[str, Any]) -> str | None:
    """The request body as text, base64-decoded when the event says it is encoded."""
    body = event.get("body")
    if not (event.get("isBase64Encoded") and body):
        return body
    try:
        return base64.b64decode(body.encode()).decode()
    except UnicodeDecodeError:
        raise BadRequestError("request body is not UTF-8 text") from None
    except ValueError:  # not base64, or a lone surrogate that is no character at all
        raise BadRequestError("request body is not valid base64") from None


def _http_answer(
    kind: str, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """A JSON answer in the shape of ``kind``'s API: multi-value headers for a REST API."""
    if headers:
        headers = {**headers}
        headers.setdefault("Content-Type", JSON)
    else:
        headers = {"Content-Type": JSON}
    text = _dumps(body)
    if kind == "rest_v1":
        multi = {name: [value] for name, value in headers.items()}
        return {"statusCode": status, "body": text, "isBase64Encoded": False,
                "multiValueHeaders": multi}  # fmt: skip
    return {"statusCode": status, "body": text, "isBase64Encoded": False, "headers": headers,
            "cookies": []}  # fmt: skip


def event_kind(event: object) -> str:
    """Which caller sent ``event``: ``http_v2``, ``rest_v1``, ``schedule`` or ``direct``.

    Loose on purpose: an event that looks like an API's is answered in that API's shape, and
    :func:`check_api_event` then says what is wrong with it.
    """
    if isinstance(event, dict):
        if event.get("version") == "2.0" or "rawPath" in event:
            return "http_v2"
        if "httpMethod" in event or "requestContext" in event:
            return "rest_v1"
        source = event.get("source")
        if event.get("detail-type") == "Scheduled Event" and (
            isinstance(source, str) and source in _SCHEDULE_SOURCES  # a list is unhashable
        ):
            return "schedule"
    return "direct"


_MISSING = object()
_API_NAMES = {"rest_v1": "a REST API (v1)", "http_v2": "an HTTP API (v2)"}
# The fields of an API event that the router and our views read, and their types;
# nothing else in an event is read, so nothing else is checked. Optional ones may be null.
_REQUIRED_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "rest_v1": (("httpMethod", str), ("path", str)),
    "http_v2": (
        ("rawPath", str),
        ("requestContext", dict),
        ("requestContext.http", dict),
        ("requestContext.http.method", str),
        ("requestContext.stage", str),
    ),
}
_OPTIONAL_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "rest_v1": (("body", str), ("isBase64Encoded", bool), ("headers", dict),
                ("multiValueHeaders", dict)),
    "http_v2": (("body", str), ("isBase64Encoded", bool), ("headers", dict)),
}  # fmt: skip
_TYPE_NAMES = {str: "a string", dict: "an object", bool: "a boolean", list: "an array"}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _field(event: dict[str, Any], name: str) -> object:
    """The value at dotted ``name``, or ``_MISSING``; its parents are checked objects."""
    value: Any = event
    for part in name.split("."):
        if part not in value:
            return _MISSING
        value = value[part]
    return value


def _has_fields(kind: str, event: dict[str, Any]) -> bool:
    """Whether ``event`` has ``kind``'s fields, of exactly their types: the quick form of
    :func:`_check_fields`, which runs only when this says no and then names what is wrong."""
    if kind == "http_v2":
        context = event.get("requestContext")
        if type(context) is not dict or type(event.get("rawPath")) is not str:
            return False
        http = context.get("http")
        if type(http) is not dict or type(http.get("method")) is not str:
            return False
        if type(context.get("stage")) is not str:
            return False
    elif type(event.get("httpMethod")) is not str or type(event.get("path")) is not str:
        return False
    for name, expected in _OPTIONAL_FIELDS[kind]:
        value = event.get(name)
        if value is not None and type(value) is not expected:
            return False
    return True


def _has_string_headers(kind: str, event: dict[str, Any]) -> bool:
    """The quick form of :func:`_check_headers`, for an event :func:`_has_fields` passed."""
    # str.join raises TypeError on anything but a string: one loop in C instead of in Python.
    try:
        if headers := event.get("headers"):
            "".join(headers)
            "".join(headers.values())
        if kind == "rest_v1" and (multi := event.get("multiValueHeaders")):
            "".join(multi)
            if not all(type(values) is list for values in multi.values()):
                return False
            "".join(itertools.chain.from_iterable(multi.values()))
    except TypeError:
        return False
    return True


def _check_fields(kind: str, event: dict[str, Any]) -> None:
    for name, expected in _REQUIRED_FIELDS[kind]:
        value = _field(event, name)
        if value is _MISSING:
            raise BadRequestError(f"{name} is missing")
        if not isinstance(value, expected):
            raise BadRequestError(
                f"{name} must be {_TYPE_NAMES[expected]}, got {_json_type(value)}"
            )
    for name, expected in _OPTIONAL_FIELDS[kind]:
        value = event.get(name)
        if value is not None and not isinstance(value, expected):
            raise BadRequestError(
                f"{name} must be {_TYPE_NAMES[expected]} or null, got {_json_type(value)}"
            )


def _check_headers(kind: str, event: dict[str, Any]) -> None:
    # Headers are not read today, but an API never sends other than strings: refuse the rest
    # (as when Powertools' resolvers read them) rather than answer an impossible event.
    headers = event.get("headers") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise BadRequestError("headers must map names to strings")
    if kind == "rest_v1":
        multi = event.get("multiValueHeaders") or {}
        if not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v)
            for k, v in multi.items()
        ):
            raise BadRequestError("multiValueHeaders must map names to lists of strings")


def check_api_event(kind: str, event: dict[str, Any]) -> dict[str, Any]:
    """Return ``event`` ready for routing, or raise ``BadRequestError`` saying what is wrong.

    The one well-formedness check for API events: exactly the fields that the router and our
    views read (and the headers), so that a direct invoker's half-built event is a 400 rather
    than a ``KeyError`` or ``TypeError`` deep in a view.

    Both APIs are routed on the decoded path. A REST API sends ``path`` as the client encoded it
    (and ``pathParameters`` decoded); an HTTP API decodes the path once before routing, so
    ``rawPath`` arrives decoded. Decoding the REST path here, once, gives a key such as
    ``C%2D1`` the same answer through either API and the local server.
    """
    if not (_has_fields(kind, event) and _has_string_headers(kind, event)):
        try:
            _check_fields(kind, event)
            _check_headers(kind, event)
        except BadRequestError as exc:
            raise BadRequestError(f"not {_API_NAMES[kind]} event: {exc.message}") from None
    if kind == "rest_v1" and (path := unquote(event["path"])) != event["path"]:
        event = {**event, "path": path}
    # A regex "$" also matches before a final newline, so "/health\n" would route as "/health".
    if _CONTROL_CHARACTERS.search(event["path"] if kind == "rest_v1" else event["rawPath"]):
        raise BadRequestError("the request path must not contain control characters")
    return event


def _api_answer(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An answer in the shape both APIs accept, for events that are not routed."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": JSON},
        "body": _dumps(body),
        "isBase64Encoded": False,
    }


class LookupFunction:
    """Answers any of the four event shapes from one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._views: dict[str, Callable[..., dict[str, Any]]] = {
            "/customers/<customer_id>": self._get_customer,
            "/customers/batch": self._get_customers,
            "/health": self._health,
        }
        self._cold = True  # the container's first invocation is its cold start

    def __call__(self, event: Any, context: LambdaContext) -> dict[str, Any]:
        kind = event_kind(event)
        try:
            return self._answer(kind, event)
        finally:
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        """One EMF document per invocation: what it counted, plus the container's gauges."""
        metrics = self.service.metrics
        if self._cold:
            self._cold = False
            metrics.count(Metric.COLD_STARTS)
        age = self.service.cache.age_seconds()
        if age is not None:
            metrics.sample(Metric.SNAPSHOT_AGE, age)
        metrics.flush()

    def _answer(self, kind: str, event: Any) -> dict[str, Any]:
        try:
            if kind in _API_NAMES:
                return self._resolve(kind, event)
            return self._invoke(kind, event)
        except Exception:  # the one broad catch: log the stack, answer without it
            logger.exception("unhandled error", extra={"event_kind": kind})
            if kind in _API_NAMES:
                return _api_answer(500, internal_error_body())
            return internal_error_body()

    def _resolve(self, kind: str, event: dict[str, Any]) -> dict[str, Any]:
        """Route an API event to its view; every AppError it raises answers through its status."""
        try:
            event = check_api_event(kind, event)
        except BadRequestError as exc:
            return _api_answer(*to_response(exc))
        method, path = _method_and_path(kind, event)
        try:
            matched = _route_match(kind, method, path)
            if matched is None:
                raise _route_error(method, path)
            rule, arguments = matched
            return _http_answer(kind, 200, self._views[rule](event, **arguments))
        except AppError as exc:
            return _http_answer(kind, *to_response(exc), exc.headers)

    def _get_customer(self, _event: dict[str, Any], customer_id: str) -> dict[str, Any]:
        return routes.get_customer(self.service.cache, customer_id, metrics=self.service.metrics)

    def _get_customers(self, event: dict[str, Any]) -> dict[str, Any]:
        payload = routes.parse_json_body(_request_body(event))
        service = self.service
        max_keys = service.settings.max_batch_keys
        return routes.get_customers(
            service.cache, payload, max_keys=max_keys, metrics=service.metrics
        )

    def _health(self, _event: dict[str, Any]) -> dict[str, Any]:
        return routes.health(self.service.cache)

    def _invoke(self, kind: str, event: Any) -> dict[str, Any]:
        cache = self.service.cache
        try:
            if kind == "schedule":
                return routes.scheduled_refresh(cache)
            return routes.direct(
                cache,
                event,
                max_keys=self.service.settings.max_batch_keys,
                metrics=self.service.metrics,
            )
        except AppError as exc:
            return to_response(exc)[1]


@functools.cache
def default_function() -> LookupFunction:
    """The container's function, built on first use from the environment."""
    return LookupFunction(build_service(Settings.from_env()))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Lambda entry point: ``service.handler.handler``."""
    return default_function()(event, context)


def start_in_lambda() -> LookupFunction | None:
    """In a Lambda environment, build the function and load the snapshot during init.

    A bad setting then fails start-up with a ConfigError naming the variable, and the first
    download runs in the init phase (which has full CPU) instead of in the first request. Init
    waits for it at most ``COLD_LOAD_WAIT_SECONDS`` (Lambda caps init at 10 s); a load still
    running then finishes in the background, and a failed one is retried by the next request,
    which answers 503 with ``Retry-After`` meanwhile.

    Then, still in init: the SnapStart after-restore hook is registered (the image is taken
    after init), and the refresher this platform allows is started (Lambda accepts extension
    registrations only until the runtime first asks for an invocation).
    """
    if not in_lambda():
        return None
    function = default_function()
    cache, settings = function.service.cache, function.service.settings
    cache.refresh()
    register_restore_hook(cache, settings)
    start_refresher(cache, settings)
    return function


start_in_lambda()
# An internal extension refreshes after each response; the handler tells it when it answered.
handler = wrap_handler(handler)
