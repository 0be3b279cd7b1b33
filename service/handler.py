"""The lookup Lambda: build the parts once per container, then route each event by its shape.

Four callers share one entry point, :func:`handler`:

- API Gateway REST (v1) proxy events and HTTP API (v2) events, through Powertools' resolvers;
- EventBridge scheduled events, which force a pointer check and return no customer data;
- direct invocations, ``{"customer_id": ...}`` or ``{"customer_ids": [...]}``.

Module scope holds settings, clients and the cache only; nothing of any one request.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    APIGatewayRestResolver,
    Response,
)
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from loaders.snapshot import SnapshotReader
from loaders.store import make_s3_client, open_store, parse_uri
from service import routes
from service.cache import SnapshotCache
from service.errors import (
    AppError,
    BadRequestError,
    MethodNotAllowedError,
    RouteNotFoundError,
    internal_error_body,
    to_response,
)
from service.settings import Settings, in_lambda

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
    from aws_lambda_powertools.event_handler.exceptions import NotFoundError
    from aws_lambda_powertools.utilities.typing import LambdaContext

# The snapshot lives long in a small process. With glibc malloc, Arrow hands decode buffers
# back and the loaded snapshot costs about 1.05x its nbytes in RSS; the default mimalloc kept
# them (about 1.5x), and loads were no faster (scripts/bench.py, 1M rows).
pa.set_memory_pool(pa.system_memory_pool())

logger = Logger(service="customer-lookup")
copy_config_to_registered_loggers(source_logger=logger, include={"service", "loaders"})

JSON = "application/json"
_SCHEDULE_SOURCES = frozenset({"aws.events", "aws.scheduler"})
# Every route, in Powertools' rule syntax: registered from this table, and read again to tell
# "no such path" (404) from "wrong method" (405).
_ROUTES = (
    ("/customers/<customer_id>", "GET"),
    ("/customers/batch", "POST"),
    ("/health", "GET"),
)
_ROUTE_PATTERNS = tuple(
    (re.compile("^" + re.sub(r"<\w+>", "[^/]+", rule) + "$"), method) for rule, method in _ROUTES
)


@dataclass(frozen=True, slots=True)
class Service:
    """Everything a container keeps between invocations."""

    settings: Settings
    cache: SnapshotCache


def build_service(settings: Settings, *, s3_client: Any = None) -> Service:
    """Open the snapshot store named by ``settings`` and wrap it in a cache (loads lazily)."""
    if s3_client is None and parse_uri(settings.snapshot_uri)[0] == "s3":
        s3_client = make_s3_client(settings.storage)
    store = open_store(settings.snapshot_uri, s3_client=s3_client)
    cache = SnapshotCache(
        SnapshotReader(store),
        key_column=settings.key_column,
        ttl_seconds=settings.refresh_ttl_seconds,
        max_staleness_seconds=settings.max_staleness_seconds,
        refresh_wait_seconds=settings.refresh_wait_seconds,
        load_wait_seconds=settings.cold_load_wait_seconds,
        # A client that retries after this finds the load finished or given up on.
        retry_after_seconds=max(1, math.ceil(settings.cold_load_wait_seconds)),
        memory_budget_bytes=settings.memory_budget_bytes,
    )
    return Service(settings, cache)


def _json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(status_code=status, content_type=JSON, body=_dumps(body), headers=headers)


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _route_error(method: str, path: str) -> tuple[AppError, dict[str, str] | None]:
    """404 for an unknown path, 405 (with ``Allow``) for a known path and another method.

    The path is not echoed back: it may hold a customer key.
    """
    allowed = sorted({m for pattern, m in _ROUTE_PATTERNS if pattern.match(path)})
    if allowed and method not in allowed:
        error = MethodNotAllowedError(f"{method} is not allowed on this route; use {allowed[0]}")
        return error, {"Allow": ", ".join(allowed)}
    return RouteNotFoundError(f"no route for {method} on this path"), None


def _register(app: ApiGatewayResolver, service: Service) -> ApiGatewayResolver:
    """Attach the lookup routes and the one error mapping to a Powertools resolver."""
    cache = service.cache

    def get_customer(customer_id: str) -> Response:
        return _json_response(200, routes.get_customer(cache, customer_id))

    def get_customers() -> Response:
        try:
            body = app.current_event.decoded_body
        except UnicodeDecodeError:
            raise BadRequestError("request body is not UTF-8 text") from None
        except ValueError:  # isBase64Encoded with a body that is not base64
            raise BadRequestError("request body is not valid base64") from None
        payload = routes.parse_json_body(body)
        return _json_response(
            200, routes.get_customers(cache, payload, max_keys=service.settings.max_batch_keys)
        )

    def health() -> Response:
        return _json_response(200, routes.health(cache))

    views = {"/customers/<customer_id>": get_customer, "/customers/batch": get_customers,
             "/health": health}  # fmt: skip
    for rule, method in _ROUTES:
        app.route(rule, method=method)(views[rule])

    @app.exception_handler(AppError)
    def app_error(exc: AppError) -> Response:
        return _json_response(*to_response(exc), headers=exc.headers)

    @app.not_found
    def not_found(_exc: NotFoundError) -> Response:
        event = app.current_event
        error, headers = _route_error(event.http_method, event.path)
        return _json_response(*to_response(error), headers=headers)

    return app


def event_kind(event: object) -> str:
    """Which caller sent ``event``: ``http_v2``, ``rest_v1``, ``schedule`` or ``direct``."""
    if isinstance(event, dict):
        if event.get("version") == "2.0" and "requestContext" in event and "rawPath" in event:
            return "http_v2"
        if "httpMethod" in event and "requestContext" in event:
            return "rest_v1"
        if event.get("detail-type") == "Scheduled Event" and event.get("source") in (
            _SCHEDULE_SOURCES
        ):
            return "schedule"
    return "direct"


class LookupFunction:
    """Answers any of the four event shapes from one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._http = _register(APIGatewayHttpResolver(), service)
        self._rest = _register(APIGatewayRestResolver(), service)

    def __call__(self, event: Any, context: LambdaContext) -> dict[str, Any]:
        kind = event_kind(event)
        try:
            if kind == "http_v2":
                return self._http.resolve(event, context)
            if kind == "rest_v1":
                return self._rest.resolve(event, context)
            return self._invoke(kind, event)
        except Exception:  # the one broad catch: log the stack, answer without it
            logger.exception("unhandled error", extra={"event_kind": kind})
            if kind in ("http_v2", "rest_v1"):
                return {
                    "statusCode": 500,
                    "headers": {"Content-Type": JSON},
                    "body": _dumps(internal_error_body()),
                    "isBase64Encoded": False,
                }
            return internal_error_body()
        finally:
            # Powertools keeps the event being resolved on the router class; drop it so no
            # part of this request (path, body, headers) outlives the invocation.
            BaseRouter.current_event = None
            BaseRouter.lambda_context = None

    def _invoke(self, kind: str, event: Any) -> dict[str, Any]:
        cache = self.service.cache
        try:
            if kind == "schedule":
                return routes.scheduled_refresh(cache)
            return routes.direct(cache, event, max_keys=self.service.settings.max_batch_keys)
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
    """
    if not in_lambda():
        return None
    function = default_function()
    function.service.cache.refresh()
    return function


start_in_lambda()
