"""Hypothesis fuzzing of the handler: every event gets an answer, and none is a 500.

10,000 generated events, the same ones on every run (``derandomize``), over the four
shapes: REST (v1) and HTTP API (v2) events built from the AWS samples and then broken at any
level (fields deleted, nulled or given another type; odd paths, methods, headers, bodies and
base64 flags, huge and deeply nested bodies), bare skeletons of API events, direct payloads of
any JSON value, and EventBridge schedules. For each one:

- no exception escapes the function, and its broad ``except`` is never reached (that is the
  only thing that answers 500, so "no 500" proves it);
- an event taken for an API's is answered in that API's shape, with a JSON object body.

``pytest tests/unit/test_handler_fuzz.py --hypothesis-show-statistics`` prints the number of
examples per test and how the answers spread over kinds and statuses.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from service.handler import LookupFunction, Service, event_kind
from service.local_server import LocalContext
from service.settings import Settings
from tests.conftest import SERVE_MODES, T0, FakeClock, customers, load_event
from tests.unit.conftest import KEY_COLUMN, InMemorySource, make_cache

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_KEYS = 5
HIT, DASHED = "C000000001", "C-1"
API_KINDS = ("rest_v1", "http_v2")
SAMPLES = {
    "rest_v1": [load_event("rest_v1_get_customer"), load_event("rest_v1_batch")],
    "http_v2": [load_event("http_v2_get_customer"), load_event("http_v2_batch")],
}
SCHEDULE = load_event("eventbridge_scheduled")


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,  # nothing written into the shared working tree
        phases=(Phase.generate, Phase.shrink),  # no database to reuse, no explicit examples
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Built once per module and serving mode (issue 11: every lookup test in both modes), so the
# mode is this fixture's own parameter rather than the function-scoped ``serve_mode``.
@pytest.fixture(scope="module", params=SERVE_MODES)
def invoke(request: pytest.FixtureRequest) -> Callable[[object], Any]:
    """The function over a small in-memory snapshot; the fake clocks never move."""
    source = InMemorySource()
    source.publish(customers([HIT, "C000000002", DASHED, "batch"]))
    cache = make_cache(source, FakeClock(), FakeClock(T0.timestamp()), serve_mode=request.param)
    settings_ = Settings("file:///unused", key_column=KEY_COLUMN, max_batch_keys=MAX_KEYS)
    function = LookupFunction(Service(settings_, cache))
    return lambda event_: function(event_, LocalContext())


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# --- strategies -------------------------------------------------------------------------------
# Mostly sampled_from over hand-picked values, weighted towards well-formed ones so that deep
# paths run too: Hypothesis draws those cheaply, which keeps 10,000 examples inside the time
# budget. Free text and recursive JSON values are one branch among several.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
ODD_VALUES = [
    None, 0, -1, 2**70, 1.5, float("nan"), float("inf"), True, False, "", "x", "2.0", "GET",
    [], [None], ["GET"], [[]], {}, {"a": None}, {"http": None}, {"method": "GET"}, {"": [1]},
]  # fmt: skip
# Events are broken in place, so a drawn value is never shared with another event.
odd_values = st.sampled_from(ODD_VALUES).map(copy.deepcopy)
KEYS = [HIT, "C000000404", DASHED, "batch", "", "C%2D1", "bad key", "%ZZ", "Zürich", "A" * 65]
keys = st.sampled_from(KEYS) | st.text("AZaz09_-%. !/\x00é", max_size=70)
ROUTES = [
    ("GET", f"/customers/{HIT}"),
    ("GET", f"/customers/{DASHED}"),
    ("GET", "/customers/C%2D1"),
    ("GET", "/customers/batch"),
    ("POST", "/customers/batch"),
    ("GET", "/health"),
]
ODD_PATHS = [
    "/", "", "//", "/customers", "/customers/", f"/customers/{HIT}/", f"/customers/{HIT}\n",
    "/health\n", "/health/", "/Prod/health", "*", "http://example.com/health", "/customers/%2F",
    "/customers/a/b", "/customers/%ZZ", "/customers/%00", "/customers/a\x00b", '/customers/a"b',
    "/customers/\u00e9", "/customers/\ud7ff", "/..", "/customers/../health", "/%2e%2e/health",
    "/customers/a b", "/customers/a?b", "/customers/a#b", "/CUSTOMERS/C1", "/customers//C1",
]  # fmt: skip
METHODS = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", "Post", "", " GET", "ß",
]  # fmt: skip
paths = st.one_of(
    st.sampled_from(ODD_PATHS),
    st.lists(
        st.sampled_from(["customers", "health", "batch", "", ".", HIT]) | keys, max_size=3
    ).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=20),
    st.integers(100, 100_000).map(lambda n: "/customers/" + "C" * n),
)
targets = st.one_of(
    st.sampled_from(ROUTES),
    st.sampled_from(ROUTES),
    st.tuples(st.sampled_from(METHODS) | st.text(max_size=6), paths),
)
BODIES = [
    None, "", "{}", "[]", "null", "0", "NaN", "1e999", "not json", "\x00", "\ufeff{}",
    json.dumps({"customer_ids": [HIT]}),
    json.dumps({"customer_ids": [HIT, DASHED, "nope", "C000000002", "batch"]}),
    json.dumps({"customer_ids": [HIT] * (MAX_KEYS + 1)}),
    json.dumps({"customer_ids": []}),
    json.dumps({"customer_ids": HIT}),
    json.dumps({"customer_ids": [1, None, [], {}]}),
    json.dumps({"customer_id": HIT}),
    json.dumps({"customer_ids": [HIT], "extra": 1}),
    '{"customer_ids": [', '{"customer_ids": ["\\ud800"]}', '{"customer_ids": ["a\\u0000"]}',
]  # fmt: skip
texts = st.one_of(
    st.sampled_from(BODIES),
    st.lists(keys, max_size=MAX_KEYS + 1).map(lambda ids: json.dumps({"customer_ids": ids})),
    st.text(max_size=20),
    odd_values.map(json.dumps),
    st.integers(0, 20_000).map(lambda n: json.dumps({"customer_ids": [HIT] * n})),
    st.integers(0, 300_000).map(lambda n: json.dumps({"customer_ids": ["A" * n]})),
    st.integers(1, 50_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 5_000).map(lambda depth: '{"customer_ids": ' + "[" * depth + "]" * depth + "}"),
    st.integers(1, 5_000).map(lambda digits: '{"customer_ids": [' + "9" * digits + "]}"),
)
MISSING = "<field left out>"
HEADERS = [
    MISSING, None, {}, {"accept-encoding": "gzip"}, {"Accept-Encoding": "gzip, deflate, br"},
    {"content-type": "application/json", "host": "x"}, {"Accept": "*/*"}, {"": ""}, {"x": ","},
    {"accept-encoding": None}, {"accept-encoding": ["gzip"]}, {"x-a": 1},
]  # fmt: skip
MULTI_VALUE_HEADERS = [
    MISSING, None, {}, {"Accept-Encoding": ["gzip"]}, {"accept-encoding": ["gzip", "br"]},
    {"Accept": []}, {"a": None}, {"a": [None]}, {"a": "gzip"},
]  # fmt: skip
headers = st.sampled_from(HEADERS).map(copy.deepcopy)
multi_value_headers = st.sampled_from(MULTI_VALUE_HEADERS).map(copy.deepcopy)
flags = st.sampled_from([False] * 5 + [True] * 4 + [None] * 2 + ["true", 1, []])
encodings = st.sampled_from(["plain"] * 6 + ["base64"] * 3 + ["not a string"])
index = st.integers(0, 2**16)  # picks from a list built while drawing (one strategy, reused)
break_counts = st.sampled_from([0, 0, 0, 0, 0, 1, 1, 2, 3])
break_actions = st.sampled_from(["delete", "null", "replace"])
stages = st.sampled_from(["$default", "$default", "$default", "Prod", "", "x"])
sources = st.sampled_from(["aws.events", "aws.scheduler"]) | odd_values
SAMPLE_STRATEGIES = {kind: st.sampled_from(samples) for kind, samples in SAMPLES.items()}


# Plain functions of ``draw``, called from the composites below: a composite strategy built
# afresh for every example costs Hypothesis a validation each time.
def bodies(draw: st.DrawFn) -> tuple[object, object]:
    """A body and its ``isBase64Encoded`` flag: plain, base64-encoded, or not a string."""
    body: object = draw(texts)
    encoding = draw(encodings)
    if encoding == "base64":  # of the text, or of bytes that are not UTF-8
        body = base64.b64encode(b"\xff\xfe" if body is None else str(body).encode()).decode()
    elif encoding == "not a string":
        body = draw(odd_values)
    return body, draw(flags)


def locations(value: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path into the nested objects of ``value``, in a stable order."""
    found: list[tuple[str, ...]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            if isinstance(key, str):
                found.append((*prefix, key))
                found.extend(locations(child, (*prefix, key)))
    return found


def broken(draw: st.DrawFn, original: dict[str, Any]) -> dict[str, Any]:
    """``original`` with 0-3 fields at any depth deleted, nulled, or given another value."""
    for _ in range(draw(break_counts)):
        places = locations(original)
        if not places:
            break
        *parents, last = places[draw(index) % len(places)]
        node = original
        for part in parents:
            node = node[part]
        action = draw(break_actions)
        if action == "delete":
            del node[last]
        else:
            node[last] = None if action == "null" else draw(odd_values)
    return original


@st.composite
def api_events(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A sample event of ``kind`` re-aimed and re-filled, then (often) broken somewhere."""
    sample = copy.deepcopy(draw(SAMPLE_STRATEGIES[kind]))
    method, path = draw(targets)
    if kind == "rest_v1":
        sample["httpMethod"], sample["path"] = method, path
        fields = {"headers": draw(headers), "multiValueHeaders": draw(multi_value_headers)}
    else:
        sample["requestContext"]["http"]["method"], sample["rawPath"] = method, path
        sample["requestContext"]["stage"] = draw(stages)
        fields = {"headers": draw(headers)}
    for name, value in fields.items():
        if value is MISSING:
            del sample[name]
        else:
            sample[name] = value
    sample["body"], sample["isBase64Encoded"] = bodies(draw)
    return broken(draw, sample)


any_values = odd_values | json_values
api_skeletons = st.dictionaries(
    st.sampled_from(
        ["version", "rawPath", "httpMethod", "path", "requestContext", "headers", "body",
         "isBase64Encoded", "multiValueHeaders", "pathParameters", "customer_id"]
    ),
    st.just("2.0") | paths | st.sampled_from(METHODS) | any_values,
    min_size=1,
    max_size=6,
)  # fmt: skip
direct_payloads = st.one_of(
    any_values,
    st.fixed_dictionaries({"customer_id": keys | any_values}),
    st.fixed_dictionaries({"customer_ids": st.lists(keys | any_values, max_size=7) | any_values}),
    st.dictionaries(
        st.sampled_from(["customer_id", "customer_ids", "extra", "detail-type", "source"]),
        keys | any_values,
        max_size=3,
    ),
    st.integers(0, 20_000).map(lambda n: {"customer_ids": [HIT] * n}),
    st.integers(1, 5_000).map(lambda depth: {"customer_id": nested_list(depth)}),
)


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    sample = copy.deepcopy(SCHEDULE)
    sample["source"] = draw(sources)
    return broken(draw, sample)


# --- the property -----------------------------------------------------------------------------


def assert_answered(invoke: Callable[[object], Any], fuzzed: object) -> None:
    """One event in, one answer out: no escape, no 500, API answers in their API's shape."""
    kind = event_kind(fuzzed)
    response = invoke(fuzzed)

    assert isinstance(response, dict)
    if kind in API_KINDS:
        status = response["statusCode"]
        event(f"{kind} {status}")
        assert status != 500, response
        assert response["isBase64Encoded"] is False
        content_type = (response.get("headers") or {}).get("Content-Type") or (
            response["multiValueHeaders"]["Content-Type"][0]
        )
        assert content_type == "application/json"
        body = json.loads(response["body"])
        assert isinstance(body, dict)
        assert ("error" in body) == (status >= 400)
    else:
        code = response["error"]["code"] if "error" in response else "ok"
        event(f"{kind} {code}")
        assert code != "internal", response
        json.dumps(response)  # what the runtime will do with it


@given(fuzzed=api_events("rest_v1"))
@fuzz_settings(3_000)
def test_rest_events_are_answered_without_a_500(
    invoke: Callable[[object], Any], fuzzed: Any
) -> None:
    assert_answered(invoke, fuzzed)


@given(fuzzed=api_events("http_v2"))
@fuzz_settings(3_000)
def test_http_api_events_are_answered_without_a_500(
    invoke: Callable[[object], Any], fuzzed: Any
) -> None:
    assert_answered(invoke, fuzzed)


@given(fuzzed=api_skeletons)
@fuzz_settings(1_000)
def test_api_skeletons_are_answered_without_a_500(
    invoke: Callable[[object], Any], fuzzed: Any
) -> None:
    assert_answered(invoke, fuzzed)


@given(fuzzed=direct_payloads)
@fuzz_settings(2_000)
def test_direct_payloads_are_answered_without_a_500(
    invoke: Callable[[object], Any], fuzzed: Any
) -> None:
    assert_answered(invoke, fuzzed)


@given(fuzzed=schedules())
@fuzz_settings(1_000)
def test_schedules_are_answered_without_a_500(invoke: Callable[[object], Any], fuzzed: Any) -> None:
    assert_answered(invoke, fuzzed)
