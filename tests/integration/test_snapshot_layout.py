"""Snapshot layout: encode_table writes one row group, so every column decodes into one chunk;
snapshots written in the older layout (1M-row row groups) still load and answer the same."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from loaders.index import KeyIndex
from loaders.manifest import DATA_NAME, MANIFEST_NAME, snapshot_key
from loaders.snapshot import describe, encode_table, parse_table, read_snapshot
from tests.conftest import T0, customers, publish

if TYPE_CHECKING:
    from loaders.store import FileStore

KEY = "customer_id"


def _ids(rows: int) -> list[str]:
    return [f"C{i:09d}" for i in range(rows)]


def test_a_table_past_a_million_rows_is_written_as_one_row_group() -> None:
    rows = (1 << 20) + 10  # past the 1M-row groups snapshots used to be cut into
    table = pa.table(
        {
            KEY: pa.array(_ids(rows)),
            "tier": pa.array(["free", "premium"] * (rows // 2)),
        }
    )

    body = encode_table(table, KEY)

    assert pq.ParquetFile(pa.BufferReader(body)).metadata.num_row_groups == 1
    decoded = parse_table(body, what="test")
    assert pa.types.is_dictionary(decoded.schema.field("tier").type)
    assert [decoded.column(name).num_chunks for name in decoded.column_names] == [1, 1]


def test_columns_without_nulls_are_stored_required_and_read_back_unchanged() -> None:
    table = pa.table(
        {
            KEY: pa.array(_ids(4)),
            "full": pa.array([1, 2, 3, 4]),
            "gaps": pa.array([1, None, 3, None]),
            "tier": pa.array(["free", None, "free", "free"]).dictionary_encode(),
            "nested": pa.array([{"a": 1}, {"a": None}, {"a": 3}, {"a": 4}]),
        }
    )

    body = encode_table(table, KEY)

    schema = pq.ParquetFile(pa.BufferReader(body)).schema
    # Definition levels per leaf: 0 = required at every level, none to decode.
    levels = {schema.column(i).path: schema.column(i).max_definition_level for i in range(4)}
    nested = schema.column(4)
    assert levels == {KEY: 0, "full": 0, "gaps": 1, "tier": 1}
    assert (nested.path, nested.max_definition_level) == ("nested.a", 1)  # the struct: required
    decoded = parse_table(body, what="test")
    assert decoded.to_pylist() == table.to_pylist()


def _publish_in_row_groups(store: FileStore, table: pa.Table, rows_per_group: int) -> str:
    """Publish ``table`` as the builder did before issue 10: the same columns, row groups of
    ``rows_per_group`` rows (1M then; smaller here)."""
    sink = pa.BufferOutputStream()
    compacted = parse_table(encode_table(table, KEY), what="test")  # dictionary columns as built
    pq.write_table(compacted, sink, compression="zstd", row_group_size=rows_per_group)
    body = sink.getvalue().to_pybytes()
    version = "20261101T000000Z-0000abcd"
    manifest = describe(table, body, version=version, key_column=KEY, created_at=T0)
    store.put(snapshot_key(version, DATA_NAME), body)
    store.put(snapshot_key(version, MANIFEST_NAME), manifest.to_json())
    return version


def test_snapshot_in_many_row_groups_loads_and_answers_as_one_in_a_single_group(
    file_store: FileStore,
) -> None:
    table = customers(_ids(5000))
    old = _publish_in_row_groups(file_store, table, rows_per_group=1000)
    new = publish(file_store, table)

    old_table = read_snapshot(file_store, old).table
    new_table = read_snapshot(file_store, new).table

    assert old_table.column("segment").num_chunks == 5  # a chunk (and dictionary) per group
    assert new_table.column("segment").num_chunks == 1
    old_index, new_index = KeyIndex(old_table, KEY), KeyIndex(new_table, KEY)
    probes = [*_ids(5000)[::97], "C000004999", "C999999999"]
    assert old_index.get_many(probes) == new_index.get_many(probes)
    assert [old_index.get(k) for k in probes] == [new_index.get(k) for k in probes]
    last = old_index.get("C000004999")
    assert (last["customer_id"], last["region"], last["updated_at"]) == (
        "C000004999",
        "eu-west-1",
        "2024-01-16T09:30:00+00:00",
    )
