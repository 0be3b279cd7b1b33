"""The out-of-core checks and change report say exactly what the in-memory ones say.

``loaders.stream.check`` runs ``validate``'s rules in DuckDB over Parquet files, and
``loaders.stream.diff`` runs ``validate.diff`` as a join: each case here goes through both and
compares the problem lines (counts, examples and their order) or the change report.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loaders.errors import SnapshotInvalidError
from loaders.publish import publish_table
from loaders.snapshot import read_snapshot
from loaders.store import FileStore
from loaders.stream import StagedResult, StreamSettings, check, diff
from loaders.validate import Rules, parse_contract, validate
from loaders.validate import diff as diff_in_memory
from tests.conftest import T0, customers

IDS = [f"C{i:09d}" for i in range(1, 41)]
CONTRACT = parse_contract(
    "customer_id:string, account_id:string, segment:string, region:string, tier:string, "
    "updated_at:timestamp[us, tz=UTC]"
)


def staged(table: pa.Table, directory: Path) -> StagedResult:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "result.parquet"
    pq.write_table(table, path)
    return StagedResult([path], directory, StreamSettings(memory_limit="256MB"))


def problems_in_memory(table: pa.Table, rules: Rules, previous: object = None) -> tuple[str, ...]:
    with pytest.raises(SnapshotInvalidError) as rejected:
        validate(table, rules, previous)  # type: ignore[arg-type]
    return rejected.value.problems


def problems_streamed(
    table: pa.Table, rules: Rules, directory: Path, previous: object = None
) -> tuple[str, ...]:
    with staged(table, directory) as result, pytest.raises(SnapshotInvalidError) as rejected:
        check(result, rules, previous)  # type: ignore[arg-type]
    return rejected.value.problems


def keyed(keys: list[str | None]) -> pa.Table:
    """``customers`` rows with their keys replaced, in the order given (unsorted)."""
    table = customers([f"C{i:09d}" for i in range(len(keys))])
    return table.set_column(0, "customer_id", pa.array(keys, pa.string()))


MANY_DUPLICATES = [f"K{i:03d}" for i in range(30)] * 2
BAD_KEYS = [*(f"bad key {i:02d}" for i in range(22)), "C" * 65, "C0001\n", "C\u00c40001", "ok"]
CASES = {
    "null keys": keyed([*IDS[:-2], None, None]),
    "empty keys": keyed(["", *IDS[1:]]),
    "one duplicate": keyed([*IDS[:-1], IDS[0]]),
    "30 duplicates, 20 shown in key order": keyed(list(reversed(MANY_DUPLICATES))),
    "keys outside the format": keyed(list(reversed(BAD_KEYS))),
    "every key problem at once": keyed([None, "", "", "a b", "a b", "x", *IDS[:10]]),
    "non-string keys": pa.table({"customer_id": pa.array([2, 1], pa.int64()), "t": ["a", "b"]}),
    "no rows": customers([]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_key_rules_give_the_in_memory_problems(case: str, tmp_path: Path) -> None:
    table = CASES[case]
    rules = Rules("customer_id")

    streamed = problems_streamed(table, rules, tmp_path)

    assert streamed == problems_in_memory(table, rules)


CONTRACT_CASES = {
    "missing column": customers(IDS).drop_columns(["tier"]),
    "extra column": customers(IDS).append_column("email", pa.array(["x@example.com"] * 40)),
    "integer for string": customers(IDS).set_column(1, "account_id", pa.array(range(40))),
    "lossy timestamp": customers(IDS).set_column(
        5,
        "updated_at",
        pa.array([1_704_101_400_000_000_001 + i for i in range(40)], pa.timestamp("ns")),
    ),
    "key column missing": customers(IDS).drop_columns(["customer_id"]),
    "contract and keys": keyed([None, *IDS[1:]]).drop_columns(["tier"]),
}


@pytest.mark.parametrize("case", list(CONTRACT_CASES), ids=list(CONTRACT_CASES))
def test_contract_rules_give_the_in_memory_problems(case: str, tmp_path: Path) -> None:
    table = CONTRACT_CASES[case]
    rules = Rules("customer_id", CONTRACT)

    streamed = problems_streamed(table, rules, tmp_path)

    assert streamed == problems_in_memory(table, rules)


def test_lossless_respelling_conforms_the_schema_to_the_contract(tmp_path: Path) -> None:
    table = customers(IDS)
    naive_ns = table.column("updated_at").cast(pa.timestamp("us")).cast(pa.timestamp("ns"))
    table = table.set_column(5, "updated_at", naive_ns)

    with staged(table, tmp_path) as result:
        schema = check(result, Rules("customer_id", CONTRACT), None)

    assert schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert schema.names == validate(table, Rules("customer_id", CONTRACT), None).column_names


@pytest.mark.parametrize(
    ("rows", "rules"), [(30, Rules("customer_id")), (40, Rules("customer_id", min_rows=50))]
)
def test_row_count_rules_give_the_in_memory_problems(
    rows: int, rules: Rules, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "root")
    previous = publish_table(store, customers(IDS), key_column="customer_id", now=T0).manifest
    table = customers(IDS[:rows])

    streamed = problems_streamed(table, rules, tmp_path / "work", previous)

    assert streamed == problems_in_memory(table, rules, previous)


# --- the change report -----------------------------------------------------------------------


def changed_rows(old: pa.Table) -> pa.Table:
    rows = [r for r in old.to_pylist() if r["customer_id"] not in ("C000000001", "C000000002")]
    rows += customers(["C000000041", "C000000042"]).to_pylist()
    for row in rows:
        if row["customer_id"] == "C000000010":
            row["tier"] = "platinum"
        if row["customer_id"] == "C000000020":
            row["account_id"] = None
    return pa.Table.from_pylist(rows, schema=old.schema)


def values_table(keys: list[str], values: list[object], kind: pa.DataType) -> pa.Table:
    return pa.table({"customer_id": pa.array(keys, pa.string()), "v": pa.array(values, kind)})


KEYS = ["C1", "C2", "C3", "C4", "C5"]
DIFF_CASES = {
    "rows added, removed and changed": (customers(IDS), changed_rows(customers(IDS))),
    "floats with NaN and nulls": (
        values_table(KEYS, [1.0, math.nan, None, 2.0, math.nan], pa.float64()),
        values_table(KEYS, [1.0, math.nan, None, None, 3.0], pa.float64()),
    ),
    "lists element by element": (
        values_table(KEYS, [[1, 2], [1, None], None, [], [3]], pa.list_(pa.int64())),
        values_table(KEYS, [[1, 2], [1, None], [], None, [3, 4]], pa.list_(pa.int64())),
    ),
    "structs field by field": (
        values_table(
            KEYS, [{"a": 1}, {"a": None}, None, {"a": 2}, {"a": 3}], pa.struct([("a", pa.int64())])
        ),
        values_table(
            KEYS, [{"a": 1}, {"a": None}, None, {"a": 5}, None], pa.struct([("a", pa.int64())])
        ),
    ),
    "a column that changed type": (
        pa.table({"customer_id": ["C1", "C2", "C3"], "tier": pa.array([1, 2, 3], pa.int64())}),
        pa.table({"customer_id": ["C2", "C3", "C4"], "tier": ["1", "2", "3"]}),
    ),
    "no column in common": (
        pa.table({"customer_id": ["C1", "C2"], "a": [1, 2]}),
        pa.table({"customer_id": ["C2", "C3"], "b": [1, 2]}),
    ),
    "more than 20 of each": (
        customers([f"C{i:09d}" for i in range(60)]),
        customers([f"C{i:09d}" for i in range(30, 90)], segment="enterprise"),
    ),
}


@pytest.mark.parametrize("case", list(DIFF_CASES), ids=list(DIFF_CASES))
def test_change_report_equals_the_in_memory_one(case: str, tmp_path: Path) -> None:
    old, new = DIFF_CASES[case]
    old_path = tmp_path / "old.parquet"
    pq.write_table(old.sort_by("customer_id"), old_path)
    old_read = pq.read_table(old_path)

    with staged(new, tmp_path / "work") as result:
        streamed = diff(
            result, new.schema, old_path, key_column="customer_id", previous_version="v1"
        )

    expected = diff_in_memory(
        new.sort_by("customer_id"), old_read, key_column="customer_id", previous_version="v1"
    )
    assert streamed.to_dict() == expected.to_dict()


def test_change_report_against_a_published_snapshot_equals_the_in_memory_one(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "root")
    old = publish_table(store, customers(IDS), key_column="customer_id", now=T0).manifest
    new = changed_rows(customers(IDS))
    data = store.root / "snapshots" / old.version / "data.parquet"

    with staged(new, tmp_path / "work") as result:
        streamed = diff(result, new.schema, data, key_column="customer_id", previous_version="v")

    expected = diff_in_memory(
        new.sort_by("customer_id"),
        read_snapshot(store, old.version).table,
        key_column="customer_id",
        previous_version="v",
    )
    assert streamed.to_dict() == expected.to_dict()
    assert (streamed.added, streamed.removed, streamed.changed) == (2, 2, 2)
