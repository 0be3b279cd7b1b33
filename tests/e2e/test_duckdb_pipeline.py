"""The DuckDB path end to end: sample customers -> ``snapshotctl build`` -> the lookup handler.

The source is ``scripts.sample_data.make_customers`` shuffled into a Parquet file, as a warehouse
returns rows; the shipped ``sql/customer_mapping.sql`` builds a ``file://`` snapshot; and the
lookup function answers HTTP API (v2) events from it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scripts.sample_data import make_customers

from loaders.build import Outcome
from loaders.cli import EXIT_FAILURE, EXIT_STATUS, main
from loaders.publish import publish_table
from loaders.snapshot import read_snapshot
from loaders.store import FileStore
from service.handler import LookupFunction, build_service
from service.settings import Settings
from tests.conftest import load_event

if TYPE_CHECKING:
    from service.local_server import LocalContext

ROOT = Path(__file__).resolve().parents[2]
SQL_FILE = ROOT / "sql" / "customer_mapping.sql"
ROWS = 2_000


@pytest.fixture(scope="module")
def source_table() -> pa.Table:
    return make_customers(ROWS)


def write_shuffled(table: pa.Table, path: Path) -> Path:
    order = np.random.default_rng(11).permutation(table.num_rows)
    pq.write_table(table.take(order), path)
    return path


def build_command(source: Path, uri: str) -> list[str]:
    return [
        "build",
        "--engine",
        "duckdb",
        "--sql",
        str(SQL_FILE),
        "--to",
        uri,
        "--table",
        f"customers={source}",
    ]


@pytest.fixture
def snapshot_uri(tmp_path: Path) -> str:
    return (tmp_path / "snapshots").as_uri()


@pytest.fixture
def built(
    tmp_path: Path, source_table: pa.Table, snapshot_uri: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``snapshotctl build`` over the shuffled sample; its printed summary."""
    source = write_shuffled(source_table, tmp_path / "customers.parquet")
    code = main(build_command(source, snapshot_uri))
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def get_event(customer_id: str) -> dict[str, Any]:
    event = load_event("http_v2_get_customer")
    path = f"/customers/{customer_id}"
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = {"customer_id": customer_id}
    return event


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


# --- build -----------------------------------------------------------------------------------


def test_build_publishes_and_announces_every_source_row(built: dict[str, Any]) -> None:
    assert (built["outcome"], built["current"], built["rows"]) == (
        "announced",
        built["version"],
        ROWS,
    )


def test_superseded_build_exits_3_and_says_why(
    built: dict[str, Any],
    tmp_path: Path,
    source_table: pa.Table,
    snapshot_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Another builder's query started two minutes from now (a clock within the allowed skew).
    store = FileStore(tmp_path / "snapshots")
    table = read_snapshot(store, built["version"]).table
    ahead = datetime.now(UTC) + timedelta(seconds=120)
    standing = publish_table(store, table, key_column="customer_id", now=ahead).manifest.version
    source = write_shuffled(source_table, tmp_path / "again.parquet")

    code = main(build_command(source, snapshot_uri))

    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == EXIT_STATUS[Outcome.SUPERSEDED] == 3
    assert (summary["outcome"], summary["announced"], summary["current"]) == (
        "superseded",
        False,
        standing,
    )
    assert f"superseded: published {summary['version']}, but {standing}" in captured.err


def root_files(root: Path) -> dict[str, bytes]:
    """Every file under a snapshot root, with its bytes; not the build records under
    ``builds/``, which every run writes (an unchanged one too) as its report."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "builds"
    }


def test_second_build_on_the_same_source_is_unchanged_and_writes_nothing(
    tmp_path: Path, source_table: pa.Table, snapshot_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_shuffled(source_table, tmp_path / "customers.parquet")
    assert main(build_command(source, snapshot_uri)) == 0
    first = json.loads(capsys.readouterr().out)
    before = root_files(tmp_path / "snapshots")

    code = main(build_command(source, snapshot_uri))

    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == EXIT_STATUS[Outcome.UNCHANGED] == 0
    assert (summary["outcome"], summary["version"], summary["current"]) == (
        "unchanged",
        first["version"],
        first["version"],
    )
    assert "query" not in summary["seconds"]
    assert f"source unchanged since {first['version']}" in captured.err
    assert root_files(tmp_path / "snapshots") == before


def test_force_builds_again_on_the_same_source(
    tmp_path: Path, source_table: pa.Table, snapshot_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_shuffled(source_table, tmp_path / "customers.parquet")
    assert main(build_command(source, snapshot_uri)) == 0
    first = json.loads(capsys.readouterr().out)

    code = main([*build_command(source, snapshot_uri), "--force"])

    summary = json.loads(capsys.readouterr().out)
    assert (code, summary["outcome"]) == (0, "announced")
    assert summary["version"] != first["version"]
    assert summary["current"] == summary["version"]


def test_touched_source_builds_again(
    tmp_path: Path, source_table: pa.Table, snapshot_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_shuffled(source_table, tmp_path / "customers.parquet")
    assert main(build_command(source, snapshot_uri)) == 0
    first = json.loads(capsys.readouterr().out)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    code = main(build_command(source, snapshot_uri))

    summary = json.loads(capsys.readouterr().out)
    assert (code, summary["outcome"]) == (0, "announced")
    assert summary["version"] != first["version"]


def test_every_build_outcome_has_an_exit_status_and_only_healthy_ones_share_0() -> None:
    returned = set(Outcome) - {Outcome.REJECTED, Outcome.FAILED}  # these two raise
    statuses = [EXIT_STATUS[outcome] for outcome in returned]

    assert set(EXIT_STATUS) == returned
    assert {o for o in returned if EXIT_STATUS[o] == 0} == {Outcome.ANNOUNCED, Outcome.UNCHANGED}
    assert len(set(statuses)) == len(statuses) - 1
    assert EXIT_FAILURE not in statuses


def test_build_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--help"])

    shown = capsys.readouterr().out
    for outcome, status in EXIT_STATUS.items():
        assert f"{status}  {outcome.value}:" in shown
    assert f"{EXIT_FAILURE}  rejected or failed:" in shown


@pytest.mark.parametrize("position", [0, ROWS // 2, ROWS - 1], ids=["first", "middle", "last"])
def test_lookup_answers_the_source_row(
    built: dict[str, Any],
    snapshot_uri: str,
    source_table: pa.Table,
    lambda_context: LocalContext,
    position: int,
) -> None:
    expected = source_table.slice(position, 1).to_pylist()[0]
    function = LookupFunction(build_service(Settings(snapshot_uri=snapshot_uri)))

    response = function(get_event(expected["customer_id"]), lambda_context)

    body = json.loads(response["body"])
    assert response["statusCode"] == 200
    assert body["item"] == as_json(expected)
    assert body["snapshot"]["version"] == built["version"]


def test_lookup_of_a_key_not_in_the_source_answers_404(
    built: dict[str, Any], snapshot_uri: str, lambda_context: LocalContext
) -> None:
    function = LookupFunction(build_service(Settings(snapshot_uri=snapshot_uri)))

    response = function(get_event("C999999999X"), lambda_context)

    assert response["statusCode"] == 404


# --- list and show ---------------------------------------------------------------------------


def test_list_marks_the_built_version_as_current(
    built: dict[str, Any], snapshot_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["list", "--root", snapshot_uri])

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 1
    assert lines[0].startswith(f"* {built['version']}  ")
    assert f"{ROWS:,} rows" in lines[0]


def test_show_prints_the_manifest_and_change_report(
    built: dict[str, Any], snapshot_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["show", built["version"], "--root", snapshot_uri])

    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (shown["version"], shown["row_count"], shown["current"]) == (
        built["version"],
        ROWS,
        True,
    )
    assert (shown["changes"]["added"], shown["changes"]["previous_version"]) == (ROWS, None)


# --- a rejected build ------------------------------------------------------------------------


def test_rejected_build_exits_non_zero_with_a_one_line_reason(
    tmp_path: Path,
    source_table: pa.Table,
    snapshot_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    duplicated = pa.concat_tables([source_table, source_table.slice(0, 3)])
    source = write_shuffled(duplicated, tmp_path / "duplicated.parquet")

    code = main(build_command(source, snapshot_uri))

    err = capsys.readouterr().err.splitlines()
    reasons = [line for line in err if line.startswith("snapshotctl build:")]
    assert code != 0
    assert len(reasons) == 1
    assert reasons[0] == err[-1]  # progress lines, if any reach stderr, come before it
    assert "duplicate keys" in reasons[0]
