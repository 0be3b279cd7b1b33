"""A snapshot written in row groups, end to end: ``snapshotctl build`` -> the lookup handler.

The build runs as one above ``memory_layout_max_rows`` does (``stream_settings_from`` narrowed to
a threshold of 0 and 512-row row groups), with ``DUCKDB_MEMORY_LIMIT`` set as the Lambda sets
it. The lookup function then answers from that snapshot in each serving mode: memory mode loads
the row groups whole, tiered mode reads the blocks written from the same sorted stream.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scripts.sample_data import make_customers

from loaders import build as build_module
from loaders.cli import main
from loaders.manifest import DATA_NAME, snapshot_key
from loaders.settings import BuildSettings
from loaders.stream import StreamSettings
from service.handler import LookupFunction, build_service
from service.settings import Settings
from tests.conftest import load_event

if TYPE_CHECKING:
    from service.local_server import LocalContext

pytestmark = pytest.mark.usefixtures("serve_mode")

ROOT = Path(__file__).resolve().parents[2]
SQL_FILE = ROOT / "sql" / "customer_mapping.sql"
ROWS = 2_000
ROW_GROUP_ROWS = 512


@pytest.fixture(scope="module")
def source_table() -> pa.Table:
    return make_customers(ROWS)


@pytest.fixture
def built(
    tmp_path: Path,
    source_table: pa.Table,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> dict[str, Any]:
    """``snapshotctl build`` of the shuffled sample, streamed; its summary and root."""
    source = tmp_path / "customers.parquet"
    pq.write_table(source_table.take(np.random.default_rng(5).permutation(ROWS)), source)
    limits: list[str] = []

    def streamed(settings: BuildSettings) -> StreamSettings:
        limits.append(settings.duckdb_memory_limit)
        return StreamSettings(
            memory_limit=settings.duckdb_memory_limit,
            memory_layout_max_rows=0,
            row_group_rows=ROW_GROUP_ROWS,
        )

    monkeypatch.setattr(build_module, "stream_settings_from", streamed)
    monkeypatch.setattr("loaders.cli.stream_settings_from", streamed)
    monkeypatch.setenv("DUCKDB_MEMORY_LIMIT", "300MB")
    root = tmp_path / "snapshots"
    code = main(
        ["build", "--engine", "duckdb", "--sql", str(SQL_FILE), "--to", root.as_uri(),
         "--table", f"customers={source}"]
    )  # fmt: skip
    assert (code, limits) == (0, ["300MB"])
    return {"summary": json.loads(capsys.readouterr().out), "root": root}


def get_event(customer_id: str) -> dict[str, Any]:
    event = load_event("http_v2_get_customer")
    path = f"/customers/{customer_id}"
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = {"customer_id": customer_id}
    return event


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def test_streamed_build_writes_data_parquet_in_row_groups(built: dict[str, Any]) -> None:
    version = built["summary"]["version"]

    data = pq.ParquetFile(built["root"] / snapshot_key(version, DATA_NAME))

    assert (built["summary"]["outcome"], built["summary"]["rows"]) == ("announced", ROWS)
    assert data.num_row_groups == -(-ROWS // ROW_GROUP_ROWS)


@pytest.mark.parametrize("position", [0, 511, 512, ROWS - 1], ids=["first", "end", "next", "last"])
def test_lookup_answers_the_source_row_from_a_streamed_snapshot(
    built: dict[str, Any],
    source_table: pa.Table,
    lambda_context: LocalContext,
    position: int,
    serve_mode: str,
) -> None:
    expected = source_table.slice(position, 1).to_pylist()[0]
    function = LookupFunction(build_service(Settings(snapshot_uri=built["root"].as_uri())))

    response = function(get_event(expected["customer_id"]), lambda_context)

    body = json.loads(response["body"])
    assert response["statusCode"] == 200
    assert body["item"] == as_json(expected)
    assert body["snapshot"]["version"] == built["summary"]["version"]
