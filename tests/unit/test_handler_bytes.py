"""Every answer of the lookup function, byte for byte: status, headers, body, and key order.

Two guards for one promise (issue 10: the hot path changed how events are routed, not what any
caller gets back):

- a catalogue of named events (every route and status, both APIs, direct calls, schedules, the
  sample events, malformed and odd events) whose exact answers were captured from the
  Powertools-routed function (commit d10f9a0) into ``handler_answers.json``;
- the same answers, for thousands of fuzzed API events, from the function and from
  :mod:`tests.unit.powertools_reference`, a frozen copy of that routing, side by side.

An answer is compared as ``json.dumps`` of the returned dict, which keeps key order: what the
runtime sends to API Gateway or a direct caller.

    python -m tests.unit.test_handler_bytes   # rewrites the golden file (review the diff)
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given

from service import handler, routes
from service.handler import LookupFunction, Service, event_kind
from service.local_server import LocalContext
from service.settings import Settings
from tests.conftest import T0, FakeClock, customers, load_event
from tests.unit.conftest import KEY_COLUMN, InMemorySource, make_cache
from tests.unit.powertools_reference import ReferenceFunction
from tests.unit.test_handler import (
    DELETE,
    MALFORMED_EVENTS,
    SAMPLES,
    batch_body,
    batch_event,
    changed,
    get_event,
    http_event,
)
from tests.unit.test_handler_fuzz import api_events, api_skeletons, fuzz_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

GOLDEN = Path(__file__).with_name("handler_answers.json")
MAX_KEYS = 3
HIT, MISS = "C000000001", "C000000404"
KEYS = [HIT, "C000000002", "C000000003", "C-1", "batch", "health"]
APIS = ("rest_v1", "http_v2")
# Scenarios: a published snapshot, none yet (503), and a bug in every operation (500).
PUBLISHED, EMPTY, EXPLODING = "published", "empty", "exploding"


def _source(scenario: str) -> InMemorySource:
    source = InMemorySource()
    if scenario != EMPTY:
        source.publish(customers(KEYS))
    return source


def make_function(scenario: str) -> LookupFunction:
    """A fresh function over its own cache, with fake clocks: answers are the same every run."""
    cache = make_cache(_source(scenario), FakeClock(), FakeClock(T0.timestamp()))
    settings = Settings("file:///unused", key_column=KEY_COLUMN, max_batch_keys=MAX_KEYS)
    return LookupFunction(Service(settings, cache))


def _explode(*_args: object, **_kwargs: object) -> Any:
    raise RuntimeError("secret-internal-detail")


def _stage(event: dict[str, Any], stage: str, raw_path: str) -> dict[str, Any]:
    event["requestContext"]["stage"] = stage
    event["rawPath"] = raw_path
    return event


def _with(event: dict[str, Any], **fields: object) -> dict[str, Any]:
    """``event`` with top-level ``fields`` set (or left out, for DELETE)."""
    for name, value in fields.items():
        if value is DELETE:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


GET_KEYS = [HIT, MISS, "C-1", "batch", "health"]
BAD_KEYS = ["A" * 65, "bad!key", "bad.key", "Zürich", "bad key", 'bad"key', "a<b>", "%ZZ",
            "C%2D1", "a\\b", "a'b", "a(b)", "~", "a+b", "a:b", "é"]  # fmt: skip
CONTROL_KEYS = ["C000000001\n", "C00\x000001", "\t", "\x7f"]
ENCODED_PATHS = ["/customers/C%2D1", "/customers/C%2d1", "/customers/%43%2D%31",
                 "/customers/b%61tch", "/customers/C%252D1", "/customers/%2F", "/customers/a%2Fb",
                 "/%68ealth"]  # fmt: skip
BATCH_BODIES = {
    "ok": batch_body(HIT, MISS, "C-1"),
    "order": batch_body("C000000003", "NOPE", HIT),
    "too-many": batch_body("A", "B", "C", "D"),
    "bad-element": batch_body(HIT, "bad!"),
    "empty-list": batch_body(),
    "not-list": json.dumps({"customer_ids": HIT}),
    "bare-list": json.dumps([HIT]),
    "singular": json.dumps({"customer_id": HIT}),
    "extra": json.dumps({"customer_ids": [HIT], "extra": 1}),
    "truncated": '{"customer_ids": [',
    "form": "customer_ids=C000000001",
    "empty": "",
    "absent": None,
    "nan": "NaN",
    "deep": "[" * 5000 + "]" * 5000,
    "surrogate": '{"customer_ids": ["\\ud800"]}',
    "nul": '{"customer_ids": ["a\\u0000"]}',
    "bom": "\ufeff{}",
    "non-ascii": batch_body("Zürich"),
}
BASE64_BODIES = {"ok": _b64(batch_body(HIT)), "bad-chars": "not base64!", "bad-padding": "abc",
                 "not-utf8": _b64(b"\xff\xfe{"), "empty": "", "junk-inside": "e30=!!",
                 "surrogate": "\ud800"}  # fmt: skip
NOT_FOUND = [("GET", "/customers"), ("GET", "/customers/"), ("GET", f"/customers/{HIT}/orders"),
             ("GET", "/"), ("GET", ""), ("POST", "/nowhere"), ("DELETE", "/admin"),
             ("GET", "/CUSTOMERS/C1"), ("GET", "/customers//C1"), ("GET", "//"),
             ("GET", "/customers/../health"), ("GET", "*"), ("GET", "http://x/health")]  # fmt: skip
WRONG_METHOD = [("DELETE", f"/customers/{HIT}"), ("POST", f"/customers/{HIT}"),
                ("PUT", "/customers/batch"), ("POST", "/health"), ("HEAD", "/health"),
                ("OPTIONS", "/customers/batch"), ("PATCH", '/customers/a"b'), ("", "/health"),
                (" GET", "/health"), ("ß", "/health"), ("get", f"/customers/{HIT}"),
                ("Get", "/health"), ("post", "/customers/batch")]  # fmt: skip
TRAILING_SLASH = [("GET", f"/customers/{HIT}/"), ("GET", f"/customers/{HIT}///"),
                  ("GET", "/health/"), ("POST", "/customers/batch/"), ("GET", "/customers/batch/"),
                  ("GET", '/customers/a"b/'), ("DELETE", f"/customers/{HIT}/"),
                  ("GET", "/customers/Zürich/"), ("GET", "/customers/bad!key/")]  # fmt: skip


def _get_catalogue(api: str) -> Iterator[tuple[str, str, Any]]:
    """GETs of keys: found, missing, malformed, with control characters, percent-encoded."""
    for key in GET_KEYS:
        yield f"get-{key}", PUBLISHED, get_event(api, key)
    for n, key in enumerate(BAD_KEYS):
        yield f"get-bad-key-{n}", PUBLISHED, get_event(api, key)
    for n, key in enumerate(CONTROL_KEYS):
        yield f"get-control-{n}", PUBLISHED, get_event(api, key)
    for n, path in enumerate(ENCODED_PATHS):
        yield f"get-encoded-{n}", PUBLISHED, http_event(api, "GET", path)
    yield "health", PUBLISHED, http_event(api, "GET", "/health")


def _status_catalogue(api: str) -> Iterator[tuple[str, str, Any]]:
    """503 without a snapshot, 500 on a bug, and 404/405 routing, trailing slashes included."""
    yield "health-no-snapshot", EMPTY, http_event(api, "GET", "/health")
    yield "get-no-snapshot", EMPTY, get_event(api, HIT)
    yield "batch-no-snapshot", EMPTY, batch_event(api, batch_body(HIT))
    yield "405-no-snapshot", EMPTY, http_event(api, "DELETE", "/health")
    yield "get-500", EXPLODING, get_event(api, HIT)
    yield "batch-500", EXPLODING, batch_event(api, batch_body(HIT))
    yield "health-500", EXPLODING, http_event(api, "GET", "/health")
    for n, (method, path) in enumerate(NOT_FOUND):
        yield f"404-{n}", PUBLISHED, http_event(api, method, path)
    for n, (method, path) in enumerate(WRONG_METHOD):
        yield f"method-{n}", PUBLISHED, http_event(api, method, path, batch_body(HIT))
    for n, (method, path) in enumerate(TRAILING_SLASH):
        yield f"trailing-slash-{n}", PUBLISHED, http_event(api, method, path, batch_body(HIT))


def _batch_catalogue(api: str) -> Iterator[tuple[str, str, Any]]:
    """Batch bodies: good, bad, not JSON, base64 (good and bad), odd base64 flags."""
    for name, body in BATCH_BODIES.items():
        yield f"batch-{name}", PUBLISHED, batch_event(api, body)
    for name, body in BASE64_BODIES.items():
        yield f"batch-b64-{name}", PUBLISHED, _with(batch_event(api, body), isBase64Encoded=True)
    for flag in ["true", 1, [], None]:
        event = _with(batch_event(api, _b64(batch_body(HIT))), isBase64Encoded=flag)
        yield f"batch-b64-flag-{flag!r}", PUBLISHED, event


def _api_catalogue(api: str) -> Iterator[tuple[str, str, Any]]:
    """(name, scenario, event) for one API: every route, status and odd path we know of."""
    yield from _get_catalogue(api)
    yield from _status_catalogue(api)
    yield from _batch_catalogue(api)


def _v2_stage_catalogue() -> Iterator[tuple[str, str, Any]]:
    """HTTP API stages: Powertools cut ``len("/" + stage)`` characters off a rawPath."""
    cases = [("Prod", f"/Prod/customers/{HIT}"), ("Prod", f"/customers/{HIT}"),
             ("Prod", "/Prod/health"), ("", "/health"), ("", f"//customers/{HIT}"),
             ("x", "/x/health"), ("x", "/y/health"), ("Prod", "/Prod"),
             ("Prod", "/Pr")]  # fmt: skip
    for n, (stage, raw_path) in enumerate(cases):
        yield f"stage-{n}", PUBLISHED, _stage(load_event("http_v2_get_customer"), stage, raw_path)
    event = _stage(load_event("http_v2_batch"), "Prod", "/Prod/customers/batch")
    yield "stage-batch", PUBLISHED, event


def _malformed_catalogue() -> Iterator[tuple[str, str, Any]]:
    for name, (api, field, value, _message) in MALFORMED_EVENTS.items():
        yield name, PUBLISHED, changed(load_event(SAMPLES[api]), field, value)
    skeletons = [{"version": "2.0"}, {"rawPath": "/health"}, {"requestContext": {}},
                 {"httpMethod": "GET"}, {"httpMethod": "GET", "path": "/health"},
                 {"rawPath": "/health", "requestContext": {"http": {"method": "GET"},
                                                            "stage": "$default"}}]  # fmt: skip
    for n, event in enumerate(skeletons):
        yield f"skeleton-{n}", PUBLISHED, event
    for api in APIS:
        for field in ["headers", "body", "isBase64Encoded"] + (
            ["multiValueHeaders"] if api == "rest_v1" else []
        ):
            for value, label in ((None, "null"), (DELETE, "absent")):
                event = _with(load_event(SAMPLES[api]), **{field: value})
                yield f"{api}-optional-{field}-{label}", PUBLISHED, event
    yield (
        "rest_v1-headers-gzip",
        PUBLISHED,
        _with(
            load_event("rest_v1_get_customer"),
            headers={"accept-encoding": "gzip"},
            multiValueHeaders={"Accept-Encoding": ["gzip", "br"]},
        ),
    )
    yield (
        "http_v2-headers-gzip",
        PUBLISHED,
        _with(load_event("http_v2_get_customer"), headers={"accept-encoding": "gzip", "x": ","}),
    )


def _other_catalogue() -> Iterator[tuple[str, str, Any]]:
    names = ["rest_v1_get_customer", "rest_v1_batch", "http_v2_get_customer", "http_v2_batch",
             "eventbridge_scheduled", "direct_get_customer", "direct_batch"]  # fmt: skip
    for scenario in (PUBLISHED, EMPTY, EXPLODING):
        for name in names:
            yield f"sample-{name}-{scenario}", scenario, load_event(name)
    direct = {"miss": {"customer_id": MISS}, "bad-key": {"customer_id": "bad!"},
              "extra": {"customer_id": HIT, "extra": True},
              "too-many": {"customer_ids": list("ABCD")},
              "list": [HIT], "string": HIT, "null": None, "empty": {}, "number": 7,
              "batch-bad": {"customer_ids": [HIT, 5]}, "batch-not-list": {"customer_ids": HIT},
              "ids-empty": {"customer_ids": []}, "nested": {"customer_id": [[[]]]}}  # fmt: skip
    for name, event in direct.items():
        yield f"direct-{name}", PUBLISHED, event
    for n, source in enumerate([["aws.events"], {"a": 1}, None, 7, "aws.scheduler", "aws.other"]):
        event = load_event("eventbridge_scheduled")
        event["source"] = source
        yield f"schedule-source-{n}", PUBLISHED, event


def catalogue() -> Iterator[tuple[str, str, Any]]:
    """Every named event: ``(name, scenario, event)``; names are unique."""
    for api in APIS:
        for name, scenario, event in _api_catalogue(api):
            yield f"{api}-{name}", scenario, event
    yield from _v2_stage_catalogue()
    yield from _malformed_catalogue()
    yield from _other_catalogue()


def answer_text(response: object) -> str:
    """An answer as the runtime serialises it: key order kept, non-ASCII escaped."""
    return json.dumps(response)


def answer(scenario: str, event: object) -> str:
    function = make_function(scenario)
    if scenario == EXPLODING:
        operations = ("get_customer", "get_customers", "health", "direct", "scheduled_refresh")
        saved = {name: getattr(routes, name) for name in operations}
        try:
            for name in saved:
                setattr(routes, name, _explode)
            return answer_text(function(event, LocalContext()))
        finally:
            for name, value in saved.items():
                setattr(routes, name, value)
    return answer_text(function(event, LocalContext()))


def capture() -> dict[str, str]:
    return {name: answer(scenario, event) for name, scenario, event in catalogue()}


# --- the golden answers ------------------------------------------------------------------------

GOLDEN_ANSWERS: dict[str, str] = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
CATALOGUE = list(catalogue())


def test_catalogue_names_are_unique_and_all_have_a_golden_answer() -> None:
    names = [name for name, _, _ in CATALOGUE]

    assert len(names) == len(set(names))
    assert sorted(names) == sorted(GOLDEN_ANSWERS)


# The snapshot block's "mode", however deeply the answer text escapes it.
_MODE = re.compile(r'(\\*"mode\\*":\s?\\*")memory(\\*")')


def in_mode(golden: str, mode: str) -> str:
    """A golden answer (captured in memory mode) as ``mode`` answers it: the same bytes but
    for the snapshot block's ``"mode"`` (issue 11: answers, errors and snapshot blocks are
    those of memory mode)."""
    return _MODE.sub(rf"\g<1>{mode}\g<2>", golden)


@pytest.mark.parametrize(("name", "scenario", "event"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_answer_is_byte_for_byte_the_captured_one(
    name: str, scenario: str, event: Any, serve_mode: str
) -> None:
    assert answer(scenario, event) == in_mode(GOLDEN_ANSWERS[name], serve_mode)


def test_every_golden_snapshot_block_names_its_mode_once() -> None:
    with_snapshot = [text for text in GOLDEN_ANSWERS.values() if "checked_at" in text]

    assert with_snapshot
    assert [text for text in with_snapshot if len(_MODE.findall(text)) != 1] == []


def test_catalogue_covers_every_status_and_header_shape() -> None:
    statuses: set[int] = set()
    headers: set[str] = set()
    for text in GOLDEN_ANSWERS.values():
        response = json.loads(text)
        if isinstance(response, dict) and "statusCode" in response:
            statuses.add(response["statusCode"])
            headers |= set(response.get("headers") or {}) | set(
                response.get("multiValueHeaders") or {}
            )

    assert statuses == {200, 400, 404, 405, 500, 503}
    assert headers == {"Content-Type", "Allow", "Retry-After"}


# --- against the Powertools routing, fuzzed ---------------------------------------------------


# Routing only, fuzzed: which mode serves the lookups does not change how an event is routed
# (the catalogue above pins both modes' answers), so these run once, in memory mode.
ROUTING_ONLY = pytest.mark.parametrize("serve_mode", ["memory"], indirect=True)


@pytest.fixture(scope="module")
def both() -> Callable[[object], tuple[str, str]]:
    """The function and the Powertools reference, each over its own identical cache."""
    ours = make_function(PUBLISHED)
    reference = ReferenceFunction(make_function(PUBLISHED).service)
    return lambda event: (
        answer_text(ours(json.loads(json.dumps(event)), LocalContext())),
        answer_text(reference(json.loads(json.dumps(event)), LocalContext())),
    )


def _same(both: Callable[[object], tuple[str, str]], event: object) -> None:
    if event_kind(event) not in APIS:
        return  # broken into a direct call: the reference routes API events only
    try:
        json.dumps(event, allow_nan=False)
    except (ValueError, TypeError):
        return  # an event no API sends (NaN); the fuzz test proves it is answered
    ours, reference = both(event)
    assert ours == reference


@ROUTING_ONLY
@given(fuzzed=api_events("rest_v1"))
@fuzz_settings(1_500)
def test_rest_answers_match_powertools_routing(
    both: Callable[[object], tuple[str, str]], fuzzed: Any
) -> None:
    _same(both, fuzzed)


@ROUTING_ONLY
@given(fuzzed=api_events("http_v2"))
@fuzz_settings(1_500)
def test_http_api_answers_match_powertools_routing(
    both: Callable[[object], tuple[str, str]], fuzzed: Any
) -> None:
    _same(both, fuzzed)


@ROUTING_ONLY
@given(fuzzed=api_skeletons)
@fuzz_settings(500)
def test_api_skeleton_answers_match_powertools_routing(
    both: Callable[[object], tuple[str, str]], fuzzed: Any
) -> None:
    _same(both, fuzzed)


def _quick_check_agrees(fuzzed: object) -> None:
    kind = event_kind(fuzzed)
    if kind not in APIS:
        return
    assert isinstance(fuzzed, dict)
    if handler._has_fields(kind, fuzzed) and handler._has_string_headers(kind, fuzzed):
        handler._check_fields(kind, fuzzed)  # raises if the quick check let a bad one through
        handler._check_headers(kind, fuzzed)


@ROUTING_ONLY
@given(fuzzed=api_events("rest_v1") | api_events("http_v2") | api_skeletons)
@fuzz_settings(3_000)
def test_quick_event_check_passes_only_what_the_full_check_passes(fuzzed: Any) -> None:
    _quick_check_agrees(fuzzed)


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(capture(), indent=1, ensure_ascii=False) + "\n")
    sys.stdout.write(f"wrote {GOLDEN}\n")
