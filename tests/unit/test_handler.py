"""LookupFunction fed the AWS sample events, and the leak test over the real module handler."""

from __future__ import annotations

import base64
import io
import json
import logging
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pytest

import service.handler
from loaders.blocks import BlockIndex
from loaders.store import FileStore
from service import routes
from service.cache import SnapshotCache
from service.handler import LookupFunction, Service, event_kind
from service.local_server import LocalContext
from service.settings import ConfigError, Settings
from tests.conftest import customers, load_event, publish
from tests.unit.conftest import KEY_COLUMN, InMemorySource

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

MAX_KEYS = 3
HIT = "C000000001"
MISS = "C000000404"
APIS = ["rest_v1", "http_v2"]
SNAPSHOT_FIELDS = {"version", "created_at", "age_seconds", "stale", "checked_at", "mode"}


# --- events ----------------------------------------------------------------------------------


def http_event(api: str, method: str, path: str, body: str | None = None) -> dict[str, Any]:
    """A full sample event of ``api`` re-aimed at ``method path`` with ``body``."""
    if api == "rest_v1":
        event = load_event("rest_v1_batch" if method == "POST" else "rest_v1_get_customer")
        event["path"] = path
        event["httpMethod"] = method
        event["requestContext"]["httpMethod"] = method
        event["requestContext"]["path"] = f"/Prod{path}"
    else:
        event = load_event("http_v2_batch" if method == "POST" else "http_v2_get_customer")
        event["rawPath"] = path
        event["requestContext"]["http"]["method"] = method
        event["requestContext"]["http"]["path"] = path
    event["body"] = body
    event["isBase64Encoded"] = False
    return event


def get_event(api: str, key: str) -> dict[str, Any]:
    """A GET of ``key`` as each API sends it: a REST API's ``path`` keeps the client's
    percent-encoding, an HTTP API's ``rawPath`` arrives decoded; both decode ``pathParameters``.
    """
    encoded = f"/customers/{quote(key, safe='')}"
    event = http_event(api, "GET", encoded if api == "rest_v1" else f"/customers/{key}")
    event["pathParameters"] = {"customer_id": key}
    return event


def batch_event(api: str, body: str | None) -> dict[str, Any]:
    return http_event(api, "POST", "/customers/batch", body)


def batch_body(*keys: object) -> str:
    return json.dumps({"customer_ids": list(keys)})


# --- responses -------------------------------------------------------------------------------


def content_type(response: dict[str, Any]) -> str:
    if "multiValueHeaders" in response:  # REST v1
        return response["multiValueHeaders"]["Content-Type"][0]
    return response["headers"]["Content-Type"]


def answer(response: dict[str, Any], status: int) -> dict[str, Any]:
    """The JSON body of an HTTP response, after checking its status and content type."""
    assert (response["statusCode"], content_type(response)) == (status, "application/json")
    assert response["isBase64Encoded"] is False
    return json.loads(response["body"])


def error(body: dict[str, Any], code: str) -> str:
    """The message of an error body, after checking its shape and code."""
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]["message"]


# --- fixtures --------------------------------------------------------------------------------


def make_function(cache: SnapshotCache) -> LookupFunction:
    settings = Settings("file:///unused", key_column=KEY_COLUMN, max_batch_keys=MAX_KEYS)
    return LookupFunction(Service(settings, cache))


@pytest.fixture
def function(cache: SnapshotCache) -> LookupFunction:
    """The function over an empty source; tests publish when they need a snapshot."""
    return make_function(cache)


@pytest.fixture
def invoke(
    function: LookupFunction, lambda_context: LocalContext
) -> Callable[[object], dict[str, Any]]:
    return lambda event: function(event, lambda_context)


def _explode(*_args: object, **_kwargs: object) -> Any:
    raise RuntimeError("secret-internal-detail at /var/task/service/routes.py")


@pytest.fixture
def exploding_invoke(
    invoke: Callable[[object], dict[str, Any]], published: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[object], dict[str, Any]]:
    """The function with a bug in every operation: each raises what is not an AppError.

    (The cache classifies and contains a source's own bugs, so a request never sees those.)
    """
    for name in ("get_customer", "get_customers", "direct", "scheduled_refresh"):
        monkeypatch.setattr(routes, name, _explode)
    return invoke


# --- the sample events reach the right adapter -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("rest_v1_get_customer", "rest_v1"),
        ("rest_v1_batch", "rest_v1"),
        ("http_v2_get_customer", "http_v2"),
        ("http_v2_batch", "http_v2"),
        ("eventbridge_scheduled", "schedule"),
        ("direct_get_customer", "direct"),
        ("direct_batch", "direct"),
    ],
)
def test_sample_event_is_recognised(name: str, kind: str) -> None:
    assert event_kind(load_event(name)) == kind


# --- HTTP: GET /customers/{id} ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["rest_v1_get_customer", "http_v2_get_customer"])
def test_sample_get_event_answers_200_with_item_and_snapshot(
    invoke: Callable[[object], dict[str, Any]],
    source: InMemorySource,
    small_table: pa.Table,
    name: str,
    serve_mode: str,
) -> None:
    version = source.publish(small_table)

    body = answer(invoke(load_event(name)), 200)

    assert body == {
        "item": {
            "customer_id": HIT,
            "account_id": "A0000000000",
            "segment": "smb",
            "region": "us-east-1",
            "tier": "premium",
            "updated_at": "2024-01-01T09:30:00+00:00",
        },
        "snapshot": {
            "version": version,
            "created_at": "2026-11-23T12:00:00Z",
            "age_seconds": 0,
            "stale": False,
            "checked_at": "2026-11-23T12:00:00Z",
            "mode": serve_mode,
        },
    }


@pytest.mark.parametrize("api", APIS)
def test_get_miss_answers_404_not_found_with_the_snapshot(
    invoke: Callable[[object], dict[str, Any]], api: str, published: str
) -> None:
    body = answer(invoke(get_event(api, MISS)), 404)

    assert error(body, "not_found") == "customer not found"
    assert (set(body), set(body["snapshot"])) == ({"error", "snapshot"}, SNAPSHOT_FIELDS)
    assert body["snapshot"]["version"] == published


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "key",
    ["A" * 65, "bad!key", "bad.key", "Zürich", "bad key", 'bad"key', "a<b>", "%ZZ", "C%2D1"],
    ids=[
        "too-long",
        "bang",
        "dot",
        "non-ascii",
        "space",
        "quote",
        "angle",
        "bad-escape",
        "percent",
    ],
)
def test_get_bad_key_answers_400(
    invoke: Callable[[object], dict[str, Any]], api: str, key: str, published: str
) -> None:
    body = answer(invoke(get_event(api, key)), 400)

    assert "customer_id must be" in error(body, "bad_request")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/customers/C%2D1", "C-1"),
        ("/customers/C%2d1", "C-1"),
        ("/customers/%43%2D%31", "C-1"),
        ("/customers/C-1", "C-1"),
        ("/customers/b%61tch", "batch"),
    ],
    ids=["encoded-dash", "lower-case-escape", "all-encoded", "plain", "encoded-letter"],
)
def test_percent_encoded_key_is_decoded_once(
    invoke: Callable[[object], dict[str, Any]],
    source: InMemorySource,
    api: str,
    path: str,
    key: str,
) -> None:
    source.publish(customers(["C-1", "batch"]))
    # As sent: a REST API's path encoded, an HTTP API's decoded.
    event = http_event(api, "GET", path if api == "rest_v1" else unquote(path))

    assert answer(invoke(event), 200)["item"]["customer_id"] == key


@pytest.mark.parametrize("api", APIS)
def test_a_decoded_percent_is_not_decoded_again(
    invoke: Callable[[object], dict[str, Any]], source: InMemorySource, api: str
) -> None:
    # A client asked for the key "C%2D1" (sending "C%252D1"): that key is malformed, and is not
    # taken for "C-1", which exists.
    source.publish(customers(["C-1"]))
    path = "/customers/C%252D1" if api == "rest_v1" else "/customers/C%2D1"

    body = answer(invoke(http_event(api, "GET", path)), 400)

    assert "customer_id must be" in error(body, "bad_request")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "key", ["C000000001\n", "C00\x000001", "\t"], ids=["trailing-newline", "nul", "tab"]
)
def test_path_with_control_characters_answers_400(
    invoke: Callable[[object], dict[str, Any]], api: str, key: str, published: str
) -> None:
    # A regex "$" matches before a final newline: "/customers/C000000001\n" must not find C1.
    body = answer(invoke(get_event(api, key)), 400)

    assert "control characters" in error(body, "bad_request")


@pytest.mark.parametrize("api", APIS)
def test_get_without_a_snapshot_answers_503(
    invoke: Callable[[object], dict[str, Any]], api: str
) -> None:
    body = answer(invoke(get_event(api, HIT)), 503)

    error(body, "snapshot_unavailable")


@pytest.mark.parametrize("api", APIS)
def test_health_answers_200_with_the_snapshot(
    invoke: Callable[[object], dict[str, Any]], api: str, published: str
) -> None:
    body = answer(invoke(http_event(api, "GET", "/health")), 200)

    assert (body["status"], body["snapshot"]["version"]) == ("ok", published)


@pytest.mark.parametrize("api", APIS)
def test_health_without_a_snapshot_answers_503(
    invoke: Callable[[object], dict[str, Any]], api: str
) -> None:
    error(answer(invoke(http_event(api, "GET", "/health")), 503), "snapshot_unavailable")


# --- HTTP: POST /customers/batch -------------------------------------------------------------


@pytest.mark.parametrize("name", ["rest_v1_batch", "http_v2_batch"])
def test_sample_batch_event_answers_items_and_missing(
    invoke: Callable[[object], dict[str, Any]], name: str, published: str
) -> None:
    body = answer(invoke(load_event(name)), 200)

    assert [item["customer_id"] for item in body["items"]] == [HIT]
    assert (body["missing"], body["snapshot"]["version"]) == ([MISS], published)


@pytest.mark.parametrize("api", APIS)
def test_batch_returns_items_in_request_order(
    invoke: Callable[[object], dict[str, Any]], api: str, published: str
) -> None:
    event = batch_event(api, batch_body("C000000003", "NOPE", "C000000001"))

    body = answer(invoke(event), 200)

    assert [item["customer_id"] for item in body["items"]] == ["C000000003", "C000000001"]
    assert body["missing"] == ["NOPE"]


@pytest.mark.parametrize("api", APIS)
def test_batch_too_large_answers_400(
    invoke: Callable[[object], dict[str, Any]], api: str, published: str
) -> None:
    body = answer(invoke(batch_event(api, batch_body("A", "B", "C", "D"))), 400)

    assert "the most is 3" in error(body, "bad_request")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (batch_body("C000000001", "bad!"), r"customer_ids[1] must be"),
        (batch_body(), "must not be empty"),
        (json.dumps({"customer_ids": "C000000001"}), "must be a list"),
        (json.dumps(["C000000001"]), "expected a JSON object"),
        (json.dumps({"customer_id": "C000000001"}), "expected a JSON object"),
    ],
    ids=["bad-element", "empty", "not-a-list", "bare-list", "singular-key"],
)
def test_bad_batch_answers_400(
    invoke: Callable[[object], dict[str, Any]],
    api: str,
    payload: str,
    message: str,
    published: str,
) -> None:
    body = answer(invoke(batch_event(api, payload)), 400)

    assert message in error(body, "bad_request")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"customer_ids": [', "not valid JSON"),
        ("customer_ids=C000000001", "not valid JSON"),
        ("", "body is required"),
        (None, "body is required"),
    ],
    ids=["truncated", "form-encoded", "empty", "absent"],
)
def test_batch_body_that_is_not_json_answers_400(
    invoke: Callable[[object], dict[str, Any]],
    api: str,
    payload: str | None,
    message: str,
    published: str,
) -> None:
    body = answer(invoke(batch_event(api, payload)), 400)

    assert message in error(body, "bad_request")


@pytest.mark.parametrize("api", APIS)
def test_base64_batch_body_is_decoded(
    invoke: Callable[[object], dict[str, Any]], api: str, published: str
) -> None:
    event = batch_event(api, base64.b64encode(batch_body(HIT).encode()).decode())
    event["isBase64Encoded"] = True

    body = answer(invoke(event), 200)

    assert [item["customer_id"] for item in body["items"]] == [HIT]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "payload",
    ["not base64!", "abc", base64.b64encode(b"\xff\xfe{").decode()],
    ids=["bad-chars", "bad-padding", "not-utf8"],
)
def test_invalid_base64_batch_body_answers_400(
    invoke: Callable[[object], dict[str, Any]], api: str, payload: str, published: str
) -> None:
    event = batch_event(api, payload)
    event["isBase64Encoded"] = True

    body = answer(invoke(event), 400)

    error(body, "bad_request")


@pytest.mark.parametrize("api", APIS)
def test_batch_without_a_snapshot_answers_503(
    invoke: Callable[[object], dict[str, Any]], api: str
) -> None:
    error(answer(invoke(batch_event(api, batch_body(HIT))), 503), "snapshot_unavailable")


# --- HTTP: routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/customers"),
        ("GET", "/customers/C000000001/orders"),
        ("GET", "/"),
        ("POST", "/nowhere"),
        ("DELETE", "/admin"),
    ],
)
def test_unknown_route_answers_404_json(
    invoke: Callable[[object], dict[str, Any]], api: str, method: str, path: str, published: str
) -> None:
    body = answer(invoke(http_event(api, method, path)), 404)

    assert path not in error(body, "route_not_found")  # a path may carry a customer key


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/customers/C000000001"),
        ("POST", "/customers/C000000001"),
        ("PUT", "/customers/batch"),
        ("POST", "/health"),
    ],
)
def test_wrong_method_answers_405_json(
    invoke: Callable[[object], dict[str, Any]], api: str, method: str, path: str, published: str
) -> None:
    response = invoke(http_event(api, method, path, batch_body(HIT)))
    body = answer(response, 405)

    message = error(body, "method_not_allowed")
    assert message.startswith(f"{method} is not allowed")
    assert path not in message
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    multi = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
    allow = headers.get("allow") or ", ".join(multi.get("allow", []))
    # GET /customers/batch is a lookup of the key "batch", so both methods are allowed there.
    assert allow == ("GET, POST" if path == "/customers/batch" else "GET")


# --- malformed API events --------------------------------------------------------------------

DELETE = object()
API_NAMES = {"rest_v1": "REST API (v1)", "http_v2": "HTTP API (v2)"}
SAMPLES = {"rest_v1": "rest_v1_get_customer", "http_v2": "http_v2_get_customer"}
MALFORMED_EVENTS = {
    "v2-requestContext-without-http": ("http_v2", "requestContext.http", DELETE,
                                       "requestContext.http is missing"),
    "v2-http-null": ("http_v2", "requestContext.http", None,
                     "requestContext.http must be an object, got null"),
    "v2-method-null": ("http_v2", "requestContext.http.method", None,
                       "requestContext.http.method must be a string, got null"),
    "v2-method-number": ("http_v2", "requestContext.http.method", 7,
                         "requestContext.http.method must be a string, got a number"),
    "v2-no-rawPath": ("http_v2", "rawPath", DELETE, "rawPath is missing"),
    "v2-no-stage": ("http_v2", "requestContext.stage", DELETE, "requestContext.stage is missing"),
    "v2-requestContext-array": ("http_v2", "requestContext", [],
                                "requestContext must be an object, got an array"),
    "v2-null-header": ("http_v2", "headers.accept", None, "headers must map names to strings"),
    "v2-body-object": ("http_v2", "body", {}, "body must be a string or null, got an object"),
    "v2-base64-flag-string": ("http_v2", "isBase64Encoded", "true",
                              "isBase64Encoded must be a boolean or null, got a string"),
    "v1-no-path": ("rest_v1", "path", DELETE, "path is missing"),
    "v1-path-null": ("rest_v1", "path", None, "path must be a string, got null"),
    "v1-method-null": ("rest_v1", "httpMethod", None, "httpMethod must be a string, got null"),
    "v1-null-header": ("rest_v1", "headers.Accept", None, "headers must map names to strings"),
    "v1-null-multi-value-header": ("rest_v1", "multiValueHeaders.Accept", None,
                                   "multiValueHeaders must map names to lists of strings"),
    "v1-null-in-multi-value-list": ("rest_v1", "multiValueHeaders.Accept", [None],
                                    "multiValueHeaders must map names to lists of strings"),
    "v1-headers-array": ("rest_v1", "headers", ["Accept"],
                         "headers must be an object or null, got an array"),
    "v1-body-number": ("rest_v1", "body", 5, "body must be a string or null, got a number"),
}  # fmt: skip


def changed(event: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    """``event`` with the field at ``dotted`` set to ``value`` (or deleted, for DELETE)."""
    *parents, last = dotted.split(".")
    node = event
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return event


def assert_no_unhandled_error(caplog: pytest.LogCaptureFixture) -> None:
    assert [r for r in caplog.records if r.getMessage() == "unhandled error"] == []


@pytest.mark.parametrize(("api", "field", "value", "message"), MALFORMED_EVENTS.values(),
                         ids=MALFORMED_EVENTS)  # fmt: skip
def test_malformed_api_event_answers_400_in_the_api_shape_naming_the_field(
    invoke: Callable[[object], dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    api: str,
    field: str,
    value: object,
    message: str,
    published: str,
) -> None:
    response = invoke(changed(load_event(SAMPLES[api]), field, value))

    said = error(answer(response, 400), "bad_request")
    assert said == f"not {'an' if api == 'http_v2' else 'a'} {API_NAMES[api]} event: {message}"
    assert_no_unhandled_error(caplog)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"version": "2.0"}, "rawPath is missing"),
        ({"rawPath": "/health"}, "requestContext is missing"),
        ({"requestContext": {}}, "httpMethod is missing"),
        ({"httpMethod": "GET"}, "path is missing"),
    ],
    ids=["version-only", "rawPath-only", "requestContext-only", "httpMethod-only"],
)
def test_skeleton_api_event_answers_400_in_the_api_shape(
    invoke: Callable[[object], dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    event: dict[str, Any],
    message: str,
) -> None:
    assert error(answer(invoke(event), 400), "bad_request").endswith(message)
    assert_no_unhandled_error(caplog)


@pytest.mark.parametrize(
    ("api", "field"),
    [
        ("rest_v1", "headers"),
        ("rest_v1", "multiValueHeaders"),
        ("http_v2", "headers"),
        ("rest_v1", "body"),
        ("http_v2", "isBase64Encoded"),
    ],
)
@pytest.mark.parametrize("value", [None, DELETE], ids=["null", "absent"])
def test_optional_field_may_be_null_or_absent(
    invoke: Callable[[object], dict[str, Any]], api: str, field: str, value: object, published: str
) -> None:
    event = changed(load_event(SAMPLES[api]), field, value)

    assert answer(invoke(event), 200)["item"]["customer_id"] == HIT


# --- direct invocation -----------------------------------------------------------------------


def test_direct_get_answers_item_and_snapshot(
    invoke: Callable[[object], dict[str, Any]], published: str
) -> None:
    body = invoke(load_event("direct_get_customer"))

    assert (set(body), set(body["snapshot"])) == ({"item", "snapshot"}, SNAPSHOT_FIELDS)
    assert (body["item"]["customer_id"], body["snapshot"]["version"]) == (HIT, published)


def test_direct_batch_answers_items_and_missing(
    invoke: Callable[[object], dict[str, Any]], published: str
) -> None:
    body = invoke(load_event("direct_batch"))

    assert [item["customer_id"] for item in body["items"]] == [HIT]
    assert body["missing"] == [MISS]


def test_direct_miss_answers_not_found_with_the_snapshot(
    invoke: Callable[[object], dict[str, Any]], published: str
) -> None:
    body = invoke({"customer_id": MISS})

    error(body, "not_found")
    assert body["snapshot"]["version"] == published


@pytest.mark.parametrize(
    "event",
    [
        {"customer_id": "bad!"},
        {"customer_id": HIT, "extra": True},
        {"customer_ids": ["A", "B", "C", "D"]},
        ["C000000001"],
        "C000000001",
        None,
        {},
    ],
    ids=["bad-key", "extra-key", "too-large", "list", "string", "null", "empty"],
)
def test_direct_bad_payload_answers_bad_request(
    invoke: Callable[[object], dict[str, Any]], event: object, published: str
) -> None:
    error(invoke(event), "bad_request")


@pytest.mark.parametrize("name", ["direct_get_customer", "direct_batch"])
def test_direct_without_a_snapshot_answers_snapshot_unavailable(
    invoke: Callable[[object], dict[str, Any]], name: str
) -> None:
    body = invoke(load_event(name))

    assert set(body) == {"error"}
    error(body, "snapshot_unavailable")


# --- EventBridge schedule --------------------------------------------------------------------


def test_scheduled_event_loads_and_reports_the_snapshot(
    invoke: Callable[[object], dict[str, Any]], source: InMemorySource, small_table: pa.Table
) -> None:
    version = source.publish(small_table)

    body = invoke(load_event("eventbridge_scheduled"))

    assert (set(body), body["refreshed"]) == ({"refreshed", "snapshot"}, True)
    assert (set(body["snapshot"]), body["snapshot"]["version"]) == (SNAPSHOT_FIELDS, version)


def test_scheduled_event_returns_no_customer_data(
    invoke: Callable[[object], dict[str, Any]], published: str
) -> None:
    body = invoke(load_event("eventbridge_scheduled"))

    assert "C00000000" not in json.dumps(body)
    assert "A00000000" not in json.dumps(body)


def test_scheduled_event_forces_a_pointer_check_within_ttl(
    invoke: Callable[[object], dict[str, Any]], source: InMemorySource, published: str
) -> None:
    invoke(load_event("direct_get_customer"))
    new = source.publish(customers(["C000000009"]))

    body = invoke(load_event("eventbridge_scheduled"))

    assert (body["refreshed"], body["snapshot"]["version"]) == (True, new)


def test_scheduled_event_with_an_unchanged_pointer_reports_not_refreshed(
    invoke: Callable[[object], dict[str, Any]], published: str
) -> None:
    invoke(load_event("eventbridge_scheduled"))

    assert invoke(load_event("eventbridge_scheduled"))["refreshed"] is False


@pytest.mark.parametrize(
    "event_source", [["aws.events"], {"a": 1}, None, 7], ids=["list", "object", "null", "number"]
)
def test_scheduled_event_with_an_odd_source_answers_bad_request(
    invoke: Callable[[object], dict[str, Any]], event_source: object, published: str
) -> None:
    # Found by the fuzz: a list here was unhashable, and escaped the function as a TypeError.
    event = load_event("eventbridge_scheduled")
    event["source"] = event_source

    error(invoke(event), "bad_request")


def test_scheduled_event_without_a_snapshot_answers_snapshot_unavailable(
    invoke: Callable[[object], dict[str, Any]],
) -> None:
    error(invoke(load_event("eventbridge_scheduled")), "snapshot_unavailable")


# --- unexpected failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [get_event("rest_v1", HIT), get_event("http_v2", HIT), batch_event("http_v2", batch_body(HIT))],
    ids=["rest_v1-get", "http_v2-get", "http_v2-batch"],
)
def test_unexpected_error_answers_json_500_without_a_trace(
    exploding_invoke: Callable[[object], dict[str, Any]], event: dict[str, Any]
) -> None:
    response = exploding_invoke(event)

    assert answer(response, 500) == {"error": {"code": "internal", "message": "internal error"}}
    for leak in ("Traceback", "RuntimeError", "secret-internal-detail", "/var/task"):
        assert leak not in response["body"]


@pytest.mark.parametrize("name", ["direct_get_customer", "eventbridge_scheduled"])
def test_unexpected_error_in_a_direct_call_answers_internal_without_a_trace(
    exploding_invoke: Callable[[object], dict[str, Any]], name: str
) -> None:
    assert exploding_invoke(load_event(name)) == {
        "error": {"code": "internal", "message": "internal error"}
    }


def test_unexpected_error_is_logged_with_its_stack(
    exploding_invoke: Callable[[object], dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    exploding_invoke(get_event("http_v2", HIT))

    (record,) = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert (record.levelno, record.exc_info[0]) == (logging.ERROR, RuntimeError)


# --- the leak test: two warm invocations of the real module handler --------------------------

FIRST_KEY, SECOND_KEY = "C000000001", "C000000002"
FIRST_REQUEST, SECOND_REQUEST = "req-first-7f3a9c", "req-second-2b8d41"
FIRST_ONLY_LOG_KEY = "first_invocation_only"


def reachable_strings(
    root: object, *, ignore: tuple[type, ...] = (), max_depth: int = 8
) -> list[str]:
    """Every string reachable from ``root`` through containers and instance attributes.

    Snapshot data (Arrow and numpy buffers, a tiered reader's block index), code, modules and
    classes are not walked: the table legitimately holds every key, and the test is about
    request state, not the snapshot. Types in ``ignore`` are not walked either (pytest's log
    capture holds every record on purpose).
    """
    skip = (
        types.ModuleType,
        type,
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodType,
        pa.Table,
        pa.Array,
        pa.ChunkedArray,
        np.ndarray,
        BlockIndex,  # a tiered reader's key ranges: snapshot data too
        io.IOBase,
        *ignore,
    )
    found: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > max_depth or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found.append(obj)
            continue
        if isinstance(obj, dict):
            children = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = list(obj)
        else:
            children = list(getattr(obj, "__dict__", {}).values())
            for klass in type(obj).__mro__:
                for slot in getattr(klass, "__slots__", ()):
                    children.append(getattr(obj, slot, None))
        stack.extend((child, depth + 1) for child in children)
    return found


def module_state(ignore: tuple[type, ...]) -> list[str]:
    """Strings held by ``service.handler``'s globals, including its cached function."""
    return [
        *reachable_strings(vars(service.handler), ignore=ignore),
        *reachable_strings(service.handler.default_function(), ignore=ignore),
    ]


@pytest.fixture
def real_handler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """``service.handler.handler`` built from the environment over a published file:// root."""
    root = tmp_path / "snapshots"
    publish(FileStore(root), customers([FIRST_KEY, SECOND_KEY, "C000000003"]))
    monkeypatch.setenv("SNAPSHOT_URI", root.as_uri())
    for name in ("KEY_COLUMN", "REFRESH_TTL_SECONDS", "MAX_STALENESS_SECONDS", "MAX_BATCH_KEYS"):
        monkeypatch.delenv(name, raising=False)
    service.handler.default_function.cache_clear()
    yield
    service.handler.default_function.cache_clear()


@pytest.fixture
def two_invocations(
    real_handler: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> dict[str, Any]:
    """Invoke twice, warm, with different keys and request ids; record what each left behind.

    The route is wrapped so that, as a careless future change might, the first invocation appends
    its key to the logger's keys, and every invocation logs a line; the lines are formatted by
    the Powertools formatter as they are emitted, so they show the keys in force at the time.
    """
    logger = service.handler.logger
    lookup = routes.get_customer
    calls: list[str] = []

    def logging_lookup(cache: SnapshotCache, customer_id: object, **options: Any) -> dict[str, Any]:
        if not calls:
            logger.append_keys(**{FIRST_ONLY_LOG_KEY: customer_id})
        calls.append(str(customer_id))
        logger.info("looking up a customer")
        return lookup(cache, customer_id, **options)

    monkeypatch.setattr(routes, "get_customer", logging_lookup)
    caplog.set_level(logging.INFO)
    caplog.handler.setFormatter(logger.registered_formatter)
    capture = (type(caplog.handler),)

    first = service.handler.handler(
        get_event("http_v2", FIRST_KEY), LocalContext(aws_request_id=FIRST_REQUEST)
    )
    first_log, first_state = caplog.text, module_state(capture)
    caplog.clear()
    second = service.handler.handler(
        get_event("http_v2", SECOND_KEY), LocalContext(aws_request_id=SECOND_REQUEST)
    )
    return {
        "first": first,
        "first_log": first_log,
        "first_state": first_state,
        "second": second,
        "second_log": caplog.text,
        "second_records": list(caplog.records),
        "second_state": module_state(capture),
    }


def first_invocation_traces(first_response: dict[str, Any]) -> list[str]:
    """What only the first invocation knew: its key, request id, logger key and answer."""
    item = json.loads(first_response["body"])["item"]
    return [FIRST_KEY, FIRST_REQUEST, FIRST_ONLY_LOG_KEY, item["account_id"]]


def test_leak_check_sees_the_first_invocation_while_it_is_current(
    two_invocations: dict[str, Any],
) -> None:
    # The controls: the log lines and the module walk do show an invocation's own traces, so
    # their absence below means something.
    first_log, first_state = two_invocations["first_log"], two_invocations["first_state"]

    assert answer(two_invocations["first"], 200)["item"]["customer_id"] == FIRST_KEY
    assert FIRST_REQUEST in first_log
    assert f'"{FIRST_ONLY_LOG_KEY}":"{FIRST_KEY}"' in first_log
    assert FIRST_KEY in first_state
    assert SECOND_REQUEST in two_invocations["second_log"]


def test_second_response_holds_nothing_of_the_first(two_invocations: dict[str, Any]) -> None:
    second = two_invocations["second"]

    assert answer(second, 200)["item"]["customer_id"] == SECOND_KEY
    text = json.dumps(second)
    assert [t for t in first_invocation_traces(two_invocations["first"]) if t in text] == []


def test_second_log_holds_nothing_of_the_first(two_invocations: dict[str, Any]) -> None:
    second_log = two_invocations["second_log"]
    record_text = " ".join(
        f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in two_invocations["second_records"]
    )

    traces = first_invocation_traces(two_invocations["first"])
    assert [t for t in traces if t in second_log or t in record_text] == []


def test_module_state_holds_nothing_of_the_first_invocation(
    two_invocations: dict[str, Any],
) -> None:
    state = two_invocations["second_state"]

    traces = first_invocation_traces(two_invocations["first"])
    assert [t for t in traces if any(t in s for s in state)] == []


# --- Lambda init ------------------------------------------------------------------------------


def test_outside_lambda_nothing_is_built_at_import(
    real_handler: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)

    assert service.handler.start_in_lambda() is None
    assert service.handler.default_function.cache_info().currsize == 0


def test_in_lambda_the_snapshot_is_loaded_during_init(
    real_handler: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "customer-lookup")

    function = service.handler.start_in_lambda()

    assert function is not None
    assert function.service.cache.version is not None


def test_in_lambda_a_bad_setting_fails_init_naming_the_variable(
    real_handler: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "customer-lookup")
    monkeypatch.setenv("MAX_BATCH_KEYS", "lots")

    with pytest.raises(ConfigError, match="MAX_BATCH_KEYS"):
        service.handler.start_in_lambda()


# --- nothing of a request outlives it -------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_no_http_event_stays_in_the_function_after_an_invocation(
    function: LookupFunction, lambda_context: LocalContext, api: str, published: str
) -> None:
    event = http_event(api, "POST", "/customers/batch", batch_body(HIT, "C000000777"))
    event["headers"]["authorization"] = "Bearer SECRET-JWT"

    function(event, lambda_context)

    held = [*reachable_strings(function), *reachable_strings(vars(service.handler))]
    assert [s for s in held if "SECRET-JWT" in s or "C000000777" in s] == []


@pytest.mark.parametrize("api", APIS)
def test_body_that_is_not_utf8_answers_400_saying_so(
    invoke: Callable[[object], dict[str, Any]], api: str, published: str
) -> None:
    event = http_event(api, "POST", "/customers/batch", base64.b64encode(b'{"x": "\xff"}').decode())
    event["isBase64Encoded"] = True

    message = error(answer(invoke(event), 400), "bad_request")

    assert "UTF-8" in message
