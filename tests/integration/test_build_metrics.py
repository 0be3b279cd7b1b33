"""The builder Lambda's metrics: one EMF document per run, with its outcome, phase seconds, row
changes and Athena's scanned bytes, in the names the template's alarms read."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

import loaders.build
from loaders.build import Outcome, handler, record_build_metrics
from loaders.metrics import BUILDER_METRICS, Metric, MetricsRecorder

if TYPE_CHECKING:
    from pathlib import Path

SQL = "SELECT 'C000000002' AS customer_id, 'gold' AS tier UNION ALL SELECT 'C000000001', 'silver'"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = (tmp_path / "snapshots").as_uri()
    for name in ("QUERY_FILE", "CONTRACT_COLUMNS", "MIN_ROWS", "MAX_ROW_CHANGE", "KEY_COLUMN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SNAPSHOT_URI", uri)
    monkeypatch.setenv("QUERY_SQL", SQL)
    monkeypatch.setenv("ENGINE", "duckdb")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "BuilderTest")
    monkeypatch.setattr(loaders.build, "_structured_logging", lambda: None)
    return uri


def emf(output: str) -> dict[str, Any]:
    """The one EMF document in ``output``, checked against the format, as name -> values."""
    [line] = [line for line in output.splitlines() if line.startswith('{"_aws"')]
    doc = json.loads(line)
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "BuilderTest"
    assert directive["Dimensions"] == [["service"]] and doc["service"] == "snapshot-builder"
    names = {m["Name"] for m in directive["Metrics"]}
    assert names <= {m.value for m in BUILDER_METRICS}
    return {name: doc[name] for name in names}


def test_announced_build_emits_outcome_phases_and_row_changes(
    root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handler({}, None)

    got = emf(capsys.readouterr().out)
    assert got[Metric.BUILDS_ANNOUNCED] == [1.0]
    assert (got[Metric.ROWS_ADDED], got[Metric.ROWS_REMOVED], got[Metric.ROWS_CHANGED]) == (
        [2.0],
        [0.0],
        [0.0],
    )
    for phase in (Metric.QUERY_SECONDS, Metric.VALIDATE_SECONDS, Metric.PUBLISH_SECONDS):
        assert got[phase][0] >= 0
    assert Metric.ATHENA_BYTES_SCANNED not in got  # DuckDB scans for free


def test_unchanged_source_emits_unchanged_and_no_row_changes(
    root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handler({}, None)
    capsys.readouterr()

    handler({}, None)

    got = emf(capsys.readouterr().out)
    assert got[Metric.BUILDS_UNCHANGED] == [1.0]
    assert Metric.ROWS_ADDED not in got and Metric.QUERY_SECONDS not in got


def test_rejected_build_emits_rejected(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUERY_SQL", "SELECT 'bad key!' AS customer_id")

    with pytest.raises(loaders.build.BuildRejectedError):
        handler({}, None)

    assert emf(capsys.readouterr().out)[Metric.BUILDS_REJECTED] == [1.0]


def test_failed_build_emits_failed(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUERY_SQL", "SELECT * FROM no_such_table")

    with pytest.raises(loaders.build.LoaderError):
        handler({}, None)

    assert emf(capsys.readouterr().out)[Metric.BUILDS_FAILED] == [1.0]


class _ScannedEngine:
    scanned_bytes = 123_456_789


def test_athena_scanned_bytes_are_emitted_even_for_a_failed_build() -> None:
    documents: list[str] = []
    recorder = MetricsRecorder(
        namespace="BuilderTest", service="snapshot-builder", enabled=True, emit=documents.append
    )

    record_build_metrics(recorder, Outcome.FAILED, engine=_ScannedEngine())  # type: ignore[arg-type]

    doc = json.loads(documents[0])
    assert (doc["BuildsFailed"], doc["AthenaBytesScanned"]) == ([1.0], [123456789.0])
