"""Builds whose data.parquet is streamed in row groups, against builds in the memory layout.

``StreamSettings(memory_layout_max_rows=0)`` sends a small table down the path a table of more
than 20M rows takes: DuckDB's sorted stream, row groups of ``row_group_rows``, blocks from the
same batches, a read-back row group by row group, uploads from disk. Readers must get the same
rows, columns and blocks as from the one-row-group layout, and the build the same outcome.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loaders import stream
from loaders.build import BuildResult, build, make_engine, stream_settings_from
from loaders.engines import DuckDBEngine
from loaders.errors import SnapshotInvalidError
from loaders.manifest import CHANGES_NAME, DATA_NAME, SNAPSHOTS_PREFIX, snapshot_key
from loaders.readback import read_back, read_back_file
from loaders.settings import BuildConfigError, BuildSettings
from loaders.snapshot import encode_table, read_snapshot
from loaders.store import FileStore
from loaders.stream import StreamSettings
from loaders.validate import Rules
from tests.conftest import customers

if TYPE_CHECKING:
    from datetime import datetime

    from loaders.store import ObjectStore, StoredObject

IDS = [f"C{i:09d}" for i in range(1, 41)]
SQL = "SELECT * FROM customers"
STREAMED = StreamSettings(memory_limit="256MB", memory_layout_max_rows=0, row_group_rows=16)
MEMORY = StreamSettings(memory_limit="256MB")


def source(directory: Path, table: pa.Table, name: str = "source.parquet") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    # Reversed: the engine's output is unsorted, as a warehouse returns rows.
    pq.write_table(table.take(list(reversed(range(table.num_rows)))), path)
    return path


def run(
    store: ObjectStore, path: Path, settings: StreamSettings, *, rules: Rules | None = None
) -> BuildResult:
    return build(
        DuckDBEngine({"customers": path}),
        store,  # type: ignore[arg-type]
        SQL,
        rules or Rules("customer_id", allow_row_change=True),
        progress=lambda _message: None,
        force=True,
        settings=settings,
    )


def data_file(store: FileStore, version: str) -> pq.ParquetFile:
    return pq.ParquetFile(store.root / snapshot_key(version, DATA_NAME))


def test_streamed_snapshot_reads_back_the_rows_columns_and_blocks_of_the_memory_layout(
    any_store: ObjectStore, tmp_path: Path
) -> None:
    path = source(tmp_path, customers(IDS))
    memory_root = FileStore(tmp_path / "memory")

    streamed = run(any_store, path, STREAMED).manifest
    memory = run(memory_root, path, MEMORY).manifest

    assert read_snapshot(any_store, streamed.version).table.to_pylist() == (
        read_snapshot(memory_root, memory.version).table.to_pylist()
    )
    assert streamed.columns == memory.columns
    assert streamed.row_count == memory.row_count == 40
    assert streamed.blocks == memory.blocks


def test_streamed_data_parquet_is_in_row_groups_with_the_memory_layouts_column_types(
    tmp_path: Path,
) -> None:
    path = source(tmp_path, customers(IDS))
    streamed_root, memory_root = FileStore(tmp_path / "streamed"), FileStore(tmp_path / "memory")

    streamed = data_file(streamed_root, run(streamed_root, path, STREAMED).manifest.version)
    memory = data_file(memory_root, run(memory_root, path, MEMORY).manifest.version)

    assert (streamed.num_row_groups, memory.num_row_groups) == (3, 1)
    assert [g.num_rows for g in map(streamed.metadata.row_group, range(3))] == [16, 16, 8]
    # Dictionary columns and required columns as the memory layout chose them.
    assert streamed.schema_arrow == memory.schema_arrow


def test_streamed_manifest_counts_the_decoded_bytes_of_every_row_group(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")

    manifest = run(store, source(tmp_path, customers(IDS)), STREAMED).manifest

    groups = data_file(store, manifest.version)
    decoded = sum(groups.read_row_group(i).nbytes for i in range(groups.num_row_groups))
    assert manifest.table_bytes == decoded


@dataclass
class Recorder:
    """Forwards to ``inner`` and logs each completed write, ``put`` or ``put_file``."""

    inner: FileStore
    writes: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return self.inner.uri

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.inner.read_range(key, start, length)

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        return self.inner.get(key, if_none_match=if_none_match)

    def put(self, key: str, body: bytes, **conditions: Any) -> str:
        etag = self.inner.put(key, body, **conditions)
        self.writes.append(key)
        return etag

    def put_file(self, key: str, path: Path, **conditions: Any) -> str:
        etag = self.inner.put_file(key, path, **conditions)
        self.writes.append(key)
        return etag

    def list_prefixes(self, prefix: str) -> list[str]:
        return self.inner.list_prefixes(prefix)

    def now(self) -> datetime:
        return self.inner.now()


def test_streamed_build_writes_data_blocks_index_and_manifest_before_the_pointer(
    tmp_path: Path,
) -> None:
    store = Recorder(FileStore(tmp_path / "root"))

    version = run(store, source(tmp_path, customers(IDS)), STREAMED).manifest.version  # type: ignore[arg-type]

    assert store.writes[:6] == [
        f"snapshots/{version}/data.parquet",
        f"snapshots/{version}/blocks.bin",
        f"snapshots/{version}/blocks.arrow",
        f"snapshots/{version}/manifest.json",
        "CURRENT",
        f"snapshots/{version}/changes.json",
    ]


def test_rejected_streamed_build_leaves_the_root_untouched(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    run(store, source(tmp_path, customers(IDS)), STREAMED)
    before = (store.read("CURRENT"), store.list_prefixes(SNAPSHOTS_PREFIX))
    keys: list[str | None] = [*IDS[:-1], IDS[0]]
    duplicated = customers(IDS).set_column(0, "customer_id", pa.array(keys, pa.string()))

    with pytest.raises(SnapshotInvalidError) as rejected:
        run(store, source(tmp_path, duplicated, "bad.parquet"), STREAMED)

    assert rejected.value.problems == ("1 duplicate keys, e.g. 'C000000001'",)
    assert (store.read("CURRENT"), store.list_prefixes(SNAPSHOTS_PREFIX)) == before


def changed(table: pa.Table) -> pa.Table:
    rows = [r for r in table.to_pylist() if r["customer_id"] != "C000000001"]
    rows += customers(["C000000041"]).to_pylist()
    for row in rows:
        if row["customer_id"] == "C000000010":
            row["tier"] = "platinum"
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_change_report_is_the_same_whichever_layout_was_written(tmp_path: Path) -> None:
    first, second = (
        source(tmp_path, customers(IDS)),
        source(tmp_path, changed(customers(IDS)), "second.parquet"),
    )
    reports = []
    for settings in (STREAMED, MEMORY):
        store = FileStore(tmp_path / f"root-{settings.memory_layout_max_rows}")
        run(store, first, settings)
        version = run(store, second, settings).manifest.version
        reports.append(json.loads(store.read(snapshot_key(version, CHANGES_NAME))))

    streamed, memory = reports
    assert {k: v for k, v in streamed.items() if k != "previous_version"} == {
        "added": 1,
        "removed": 1,
        "changed": 1,
        "type_changed": [],
        "examples": {"added": ["C000000041"], "removed": ["C000000001"], "changed": ["C000000010"]},
    }
    assert {k: v for k, v in memory.items() if k != "previous_version"} == (
        {k: v for k, v in streamed.items() if k != "previous_version"}
    )


def test_large_previous_snapshot_is_downloaded_by_ranges_and_verified(
    any_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(any_store, source(tmp_path, customers(IDS)), STREAMED)
    monkeypatch.setattr(stream, "WHOLE_READ_MAX_BYTES", 0)
    monkeypatch.setattr(stream, "READ_RANGE_BYTES", 1000)

    result = run(any_store, source(tmp_path, changed(customers(IDS)), "2.parquet"), STREAMED)

    assert (result.changes.added, result.changes.removed, result.changes.changed) == (1, 1, 1)


def test_corrupt_previous_data_still_lets_a_build_through_with_its_row_count_checked(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "root")
    first = run(store, source(tmp_path, customers(IDS)), STREAMED).manifest.version
    data = store.root / snapshot_key(first, DATA_NAME)
    data.write_bytes(data.read_bytes()[:-10] + b"0123456789")

    result = run(store, source(tmp_path, changed(customers(IDS)), "2.parquet"), STREAMED)
    with pytest.raises(SnapshotInvalidError) as rejected:
        run(
            store,
            source(tmp_path, customers(IDS[:20]), "3.parquet"),
            STREAMED,
            rules=Rules("customer_id"),
        )

    # Unreadable, the previous data compares as nothing; its manifest still bounds the count.
    assert (result.changes.previous_version, result.changes.added) == (first, 40)
    assert rejected.value.problems[0].startswith("row count moved 50.0% (40 -> 20)")


# --- the read-back, row group by row group ---------------------------------------------------


def test_row_group_read_back_reports_what_the_whole_read_back_reports(tmp_path: Path) -> None:
    body = encode_table(customers(IDS), "customer_id")
    path = tmp_path / "grouped.parquet"
    table = pq.read_table(pa.BufferReader(body))
    pq.write_table(table, path, row_group_size=7)

    grouped = read_back_file(path, "customer_id")
    whole = read_back(body, "customer_id")

    assert (grouped.columns, grouped.row_count) == (whole.columns, whole.row_count)
    assert grouped.rows_checked == whole.rows_checked == 40
    parquet = pq.ParquetFile(path)
    assert grouped.table_bytes == sum(
        parquet.read_row_group(i).nbytes for i in range(parquet.num_row_groups)
    )


def test_row_group_read_back_refuses_keys_that_fall_between_row_groups(tmp_path: Path) -> None:
    table = customers(IDS)
    path = tmp_path / "unsorted.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table.slice(20))
        writer.write_table(table.slice(0, 20))

    with pytest.raises(SnapshotInvalidError, match="row group 1: keys do not follow"):
        read_back_file(path, "customer_id")


# --- settings --------------------------------------------------------------------------------


def test_duckdb_memory_limit_reaches_the_engine_and_the_out_of_core_build() -> None:
    env = {"SNAPSHOT_URI": "file:///tmp/x", "QUERY_SQL": SQL, "DUCKDB_MEMORY_LIMIT": "2GB"}

    settings = BuildSettings.from_env(env)

    assert stream_settings_from(settings).memory_limit == "2GB"
    engine = make_engine(settings)
    assert isinstance(engine, DuckDBEngine)
    assert engine.memory_limit == "2GB"


@pytest.mark.parametrize("limit", ["lots", "4", "-1GB", "4 GiBs"])
def test_malformed_duckdb_memory_limit_is_a_config_error(limit: str) -> None:
    env = {"SNAPSHOT_URI": "file:///tmp/x", "QUERY_SQL": SQL, "DUCKDB_MEMORY_LIMIT": limit}

    with pytest.raises(BuildConfigError, match="DUCKDB_MEMORY_LIMIT"):
        BuildSettings.from_env(env)
