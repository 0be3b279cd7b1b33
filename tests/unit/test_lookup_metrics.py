"""The lookup function's metrics: one EMF document per invocation, in CloudWatch's format, with
the counts and samples each kind of request should leave; and silence outside Lambda."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from loaders.errors import StoreError
from loaders.metrics import LOOKUP_METRICS, Metric, MetricsRecorder
from service.handler import LookupFunction, Service, build_service
from service.settings import Settings
from tests.conftest import customers, load_event
from tests.unit.conftest import TTL_SECONDS, make_cache

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow as pa

    from service.local_server import LocalContext
    from tests.conftest import FakeClock
    from tests.unit.conftest import InMemorySource

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

HIT = "C000000001"
NAMESPACE = "CustomerLookupTest"


@pytest.fixture
def documents() -> list[str]:
    return []


@pytest.fixture
def function(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    small_table: pa.Table,
    documents: list[str],
) -> LookupFunction:
    source.publish(small_table)
    recorder = MetricsRecorder(
        namespace=NAMESPACE, service="customer-lookup", enabled=True, emit=documents.append
    )
    cache = make_cache(source, clock, wall_clock, metrics=recorder)
    return LookupFunction(Service(Settings(snapshot_uri="file:///unused"), cache, recorder))


def values(document: str) -> dict[str, list[float]]:
    """Metric name -> its values, after checking the document against the EMF specification."""
    doc = json.loads(document)
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int)
    [directive] = aws["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert directive["Dimensions"] == [["service"]]
    assert doc["service"] == "customer-lookup"
    names = [m["Name"] for m in directive["Metrics"]]
    assert set(names) <= {m.value for m in LOOKUP_METRICS}
    for metric in directive["Metrics"]:
        assert metric["Unit"] in ("Count", "Seconds", "Bytes")
    # Every declared metric has its value(s) at the top level of the document.
    return {name: doc[name] if isinstance(doc[name], list) else [doc[name]] for name in names}


def get_event(key: str) -> dict[str, Any]:
    event = load_event("http_v2_get_customer")
    event["rawPath"] = f"/customers/{key}"
    event["pathParameters"] = {"customer_id": key}
    return event


def test_first_invocation_counts_a_cold_start_the_load_and_the_lookup(
    function: LookupFunction, documents: list[str], lambda_context: LocalContext
) -> None:
    function(get_event(HIT), lambda_context)

    [document] = documents
    got = values(document)
    assert got[Metric.COLD_STARTS] == [1.0]
    assert got[Metric.LOOKUPS] == [1.0]
    assert got[Metric.POINTER_CHECKS_LOADED] == [1.0]
    assert got[Metric.LOAD_ROWS] == [3.0]
    assert got[Metric.LOAD_BYTES][0] > 0
    assert got[Metric.LOAD_SECONDS][0] >= 0
    assert got[Metric.SNAPSHOT_AGE] == [0.0]
    assert Metric.MISSES not in got


def test_later_invocations_count_no_cold_start(
    function: LookupFunction, documents: list[str], lambda_context: LocalContext
) -> None:
    function(get_event(HIT), lambda_context)
    function(get_event("C999999999"), lambda_context)

    got = values(documents[1])
    assert Metric.COLD_STARTS not in got
    assert (got[Metric.LOOKUPS], got[Metric.MISSES]) == ([1.0], [1.0])


def test_batch_counts_its_keys_misses_and_size(
    function: LookupFunction, documents: list[str], lambda_context: LocalContext
) -> None:
    event = load_event("http_v2_batch")
    event["body"] = json.dumps({"customer_ids": [HIT, "C000000002", "C999999999"]})

    function(event, lambda_context)

    got = values(documents[0])
    assert (got[Metric.LOOKUPS], got[Metric.MISSES], got[Metric.BATCH_SIZE]) == (
        [3.0],
        [1.0],
        [3.0],
    )


def test_snapshot_age_is_sampled_every_invocation(
    function: LookupFunction,
    documents: list[str],
    wall_clock: FakeClock,
    lambda_context: LocalContext,
) -> None:
    function(get_event(HIT), lambda_context)
    wall_clock.advance(125)
    function({"customer_id": HIT}, lambda_context)

    assert values(documents[1])[Metric.SNAPSHOT_AGE] == [125.0]


@pytest.mark.parametrize(
    ("change", "metric"),
    [
        pytest.param(None, Metric.POINTER_CHECKS_UNCHANGED, id="unchanged"),
        pytest.param("publish", Metric.POINTER_CHECKS_LOADED, id="loaded"),
        pytest.param("corrupt", Metric.POINTER_CHECKS_REJECTED, id="rejected"),
        pytest.param("fail", Metric.POINTER_CHECKS_FAILED, id="failed"),
    ],
)
def test_pointer_checks_are_counted_by_outcome(
    function: LookupFunction,
    source: InMemorySource,
    clock: FakeClock,
    documents: list[str],
    lambda_context: LocalContext,
    change: str | None,
    metric: Metric,
) -> None:
    function(get_event(HIT), lambda_context)
    if change == "publish":
        source.publish(customers(["C000000009"]))
    elif change == "corrupt":
        source.corrupt(source.publish(customers(["C000000009"])))
    elif change == "fail":
        source.pointer_error = StoreError("SlowDown")
    clock.advance(TTL_SECONDS + 1)

    function(get_event(HIT), lambda_context)

    assert values(documents[1])[metric] == [1.0]


def test_degraded_fallback_is_counted(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    small_table: pa.Table,
    documents: list[str],
    lambda_context: LocalContext,
) -> None:
    source.publish(small_table)
    source.corrupt(source.publish(customers(["C000000009"])))
    recorder = MetricsRecorder(
        namespace=NAMESPACE, service="customer-lookup", enabled=True, emit=documents.append
    )
    cache = make_cache(source, clock, wall_clock, metrics=recorder)
    function = LookupFunction(Service(Settings(snapshot_uri="file:///unused"), cache, recorder))

    function(get_event(HIT), lambda_context)

    assert values(documents[0])[Metric.POINTER_CHECKS_DEGRADED] == [1.0]


def test_outside_lambda_metrics_never_reach_the_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lambda_context: LocalContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    service = build_service(Settings(snapshot_uri=(tmp_path / "none").as_uri()))
    function = LookupFunction(service)

    function({"customer_id": HIT}, lambda_context)

    assert service.metrics.enabled is False
    assert "_aws" not in capsys.readouterr().out


def test_recorder_prints_one_line_to_stdout_when_enabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    recorder = MetricsRecorder(namespace=NAMESPACE, service="customer-lookup", enabled=True)
    recorder.count(Metric.LOOKUPS)

    document = recorder.flush()

    assert capsys.readouterr().out == f"{document}\n"
    assert recorder.flush() is None  # cleared: nothing recorded since
