"""No fault ever gets a 500 or a trace: every fault in the catalogue, one after another, with
every event shape the function accepts sent twice under each.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import load_event
from tests.faults.conftest import (
    HIT,
    V2_IDS,
    customer_event,
    edit_manifest,
    fast_settings,
    write_pointer,
)
from tests.faults.hostile import (
    BAD_POINTERS,
    BAD_VERSIONS,
    BUG,
    TRANSIENT_FAULTS,
    lift,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.faults.conftest import FaultProxy, Lookup, Versions

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

# Short waits: this sweep sends a few hundred requests, many of them into a black hole. The
# budgets themselves are held tightly in test_time_budgets; here a late answer means a hang.
WAIT_SECONDS = 0.1
LATE_SECONDS = WAIT_SECONDS + 1.0
SWEEP_SETTINGS = {"refresh_wait_seconds": WAIT_SECONDS, "cold_load_wait_seconds": WAIT_SECONDS}
# Warm, each event goes twice under each fault (the second finds the check in flight or done);
# cold, once: every cold request starts or joins a check of its own anyway.
WARM_REPEATS = 2


def _health() -> dict[str, Any]:
    event = customer_event(HIT)
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/health"
    event["pathParameters"] = None
    event["routeKey"] = event["requestContext"]["routeKey"] = "GET /health"
    return event


EVENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "http_v2 get": lambda: customer_event(HIT),
    "http_v2 get missing": lambda: customer_event("C000000404"),
    "http_v2 batch": lambda: load_event("http_v2_batch"),
    "http_v2 health": _health,
    "rest_v1 get": lambda: load_event("rest_v1_get_customer"),
    "rest_v1 batch": lambda: load_event("rest_v1_batch"),
    "direct get": lambda: load_event("direct_get_customer"),
    "direct batch": lambda: load_event("direct_batch"),
    "schedule": lambda: load_event("eventbridge_scheduled"),
}


def headers_of(response: dict[str, Any]) -> set[str]:
    """Header names of an API answer: REST (v1) answers carry them in ``multiValueHeaders``."""
    return {*(response.get("headers") or {}), *(response.get("multiValueHeaders") or {})}


def complaints(response: Any, seconds: float) -> list[str]:
    """What is wrong with one answer: a 500, a trace, a 503 without Retry-After, or lateness."""
    found = []
    if seconds > LATE_SECONDS:
        found.append(f"took {seconds:.2f}s")
    text = json.dumps(response)
    if "Traceback" in text or "UnexpectedError" in text:
        found.append("carries a trace")
    if "statusCode" in response:  # an API answer: status, headers, JSON body
        status = response["statusCode"]
        body = json.loads(response["body"])
        if status >= 500 and status != 503:
            found.append(f"status {status}")
        if status == 503 and "Retry-After" not in headers_of(response):
            found.append("503 without Retry-After")
    else:  # a direct or scheduled invocation: the body itself
        body = response
    if body.get("error", {}).get("code") == "internal":
        found.append("internal error")
    return found


def sweep(lookup: Lookup, fault: str, served: set[str | None], repeats: int = 1) -> list[str]:
    """Send every event ``repeats`` times; the complaints, and the versions answers named."""
    found = []
    for _ in range(repeats):
        for name, make_event in EVENTS.items():
            response, seconds = lookup.invoke(make_event())
            found += [f"{fault} / {name}: {c}" for c in complaints(response, seconds)]
            body = json.loads(response["body"]) if "statusCode" in response else response
            served.add((body.get("snapshot") or {}).get("version"))
    return found


def ancient(versions: Versions) -> str:
    """A version whose manifest says it was made in year 1 (UTC): odd, but parseable."""
    version = versions.publish(V2_IDS)
    edit_manifest(
        versions.publisher, version, lambda doc: doc.update(created_at="0001-01-01T00:00:00Z")
    )
    return version


def test_warm_function_never_answers_500_under_repeated_faults(
    make_lookup: Callable[..., Lookup],
    versions: Versions,
    proxy: FaultProxy,
    publisher: Any,
) -> None:
    """With a snapshot loaded, every fault in turn: no 500, no trace; the last good one serves."""
    lookup = make_lookup(fast_settings(**SWEEP_SETTINGS))
    v1 = versions.publish()
    lookup.ask()
    lookup.settle()
    found: list[str] = []
    served: set[str | None] = set()

    for fault in (*TRANSIENT_FAULTS, BUG):
        fault.inject(lookup, proxy, "")
        lookup.lapse_ttl()
        found += sweep(lookup, fault.name, served, WARM_REPEATS)
        lookup.settle()
        lift(lookup, proxy)
    for bad in BAD_VERSIONS:
        if bad.memory_only and versions.serve_mode != "memory":
            continue  # served by design in tiered mode: not a fault there
        bad.plant(versions)
        lookup.lapse_ttl()
        found += sweep(lookup, bad.name, served, WARM_REPEATS)
        lookup.settle()
    for name, body in BAD_POINTERS.items():
        write_pointer(publisher, body)
        lookup.lapse_ttl()
        found += sweep(lookup, f"pointer {name}", served, WARM_REPEATS)
        lookup.settle()

    assert found == []
    assert served == {v1}


def test_cold_function_never_answers_500_under_repeated_faults(
    make_lookup: Callable[..., Lookup],
    versions: Versions,
    proxy: FaultProxy,
    publisher: Any,
) -> None:
    """With nothing loaded, every fault in turn: a 503 with Retry-After or a fallback, no 500."""
    found: list[str] = []
    served: set[str | None] = set()
    versions.publish()

    for fault in (*TRANSIENT_FAULTS, BUG):
        lookup = make_lookup(fast_settings(**SWEEP_SETTINGS))
        fault.inject(lookup, proxy, "")
        found += sweep(lookup, fault.name, served)
        lookup.settle()
        lift(lookup, proxy)
    for name, plant in [*((b.name, b.plant) for b in BAD_VERSIONS), ("year 1", ancient)]:
        plant(versions)
        found += sweep(make_lookup(fast_settings(**SWEEP_SETTINGS)), name, served)
    for name, body in BAD_POINTERS.items():
        write_pointer(publisher, body)
        found += sweep(make_lookup(fast_settings(**SWEEP_SETTINGS)), f"pointer {name}", served)

    assert found == []
