"""The lookup function's HTTP answers as Powertools' resolvers gave them: the reference for
``test_handler_bytes``.

A frozen copy of how ``service.handler`` answered API events before it routed them itself
(commit d10f9a0): ``check_api_event``, then ``APIGatewayRestResolver``/``APIGatewayHttpResolver``
with our three routes, one ``AppError`` handler, and a ``not_found`` that finds keys outside
Powertools' segment alphabet. Tests only: the Lambda package no longer imports the resolvers.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    APIGatewayRestResolver,
    Response,
)
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

from service import routes
from service.errors import (
    AppError,
    BadRequestError,
    MethodNotAllowedError,
    RouteNotFoundError,
    internal_error_body,
    to_response,
)
from service.handler import check_api_event, event_kind

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
    from aws_lambda_powertools.event_handler.exceptions import NotFoundError

    from service.handler import Service

JSON = "application/json"
_ROUTES = (
    ("/customers/<customer_id>", "GET"),
    ("/customers/batch", "POST"),
    ("/health", "GET"),
)
_ROUTE_PATTERNS = tuple(
    (rule, method, re.compile(re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", rule)))
    for rule, method in _ROUTES
)
_API_KINDS = ("rest_v1", "http_v2")


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(status_code=status, content_type=JSON, body=_dumps(body), headers=headers)


def _route_match(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for rule, route_method, pattern in _ROUTE_PATTERNS:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return rule, match.groupdict()
    return None


def _route_error(method: str, path: str) -> tuple[AppError, dict[str, str] | None]:
    allowed = sorted({m for _, m, pattern in _ROUTE_PATTERNS if pattern.fullmatch(path)})
    if allowed and method not in allowed:
        message = f"{method} is not allowed on this route; use {allowed[0]}"
        error = MethodNotAllowedError(message, allowed=allowed)
        return error, {"Allow": ", ".join(allowed)}
    return RouteNotFoundError(f"no route for {method} on this path"), None


def _register(app: ApiGatewayResolver, service: Service) -> ApiGatewayResolver:
    cache, metrics = service.cache, service.metrics

    def get_customer(customer_id: str) -> Response:
        return _json_response(200, routes.get_customer(cache, customer_id, metrics=metrics))

    def get_customers() -> Response:
        try:
            body = app.current_event.decoded_body
        except UnicodeDecodeError:
            raise BadRequestError("request body is not UTF-8 text") from None
        except ValueError:
            raise BadRequestError("request body is not valid base64") from None
        payload = routes.parse_json_body(body)
        return _json_response(
            200,
            routes.get_customers(
                cache, payload, max_keys=service.settings.max_batch_keys, metrics=metrics
            ),
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
        method, path = event.http_method.upper(), event.path
        matched = _route_match(method, path)
        if matched is not None:
            rule, arguments = matched
            return views[rule](**arguments)
        error, headers = _route_error(method, path)
        return _json_response(*to_response(error), headers=headers)

    return app


class ReferenceFunction:
    """Answers API events exactly as the Powertools-routed lookup function did."""

    def __init__(self, service: Service) -> None:
        self._http = _register(APIGatewayHttpResolver(), service)
        self._rest = _register(APIGatewayRestResolver(), service)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        kind = event_kind(event)
        if kind not in _API_KINDS:
            raise ValueError(f"the reference answers API events only, not {kind}")
        try:
            try:
                event = check_api_event(kind, event)
            except BadRequestError as exc:
                status, body = to_response(exc)
                return {
                    "statusCode": status,
                    "headers": {"Content-Type": JSON},
                    "body": _dumps(body),
                    "isBase64Encoded": False,
                }
            resolver = self._http if kind == "http_v2" else self._rest
            return resolver.resolve(event, context)
        except Exception:  # noqa: BLE001 - as the function's one broad catch answered
            return {
                "statusCode": 500,
                "headers": {"Content-Type": JSON},
                "body": _dumps(internal_error_body()),
                "isBase64Encoded": False,
            }
        finally:
            BaseRouter.current_event = None
            BaseRouter.lambda_context = None
