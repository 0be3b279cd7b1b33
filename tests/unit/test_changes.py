"""The change report (``loaders.validate.diff``): keys added, removed and changed, any type."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from loaders.validate import diff

KEYS = ["a", "b", "c", "d"]


def changed(new_values: pa.Array, old_values: pa.Array) -> list[str]:
    """Keys reported changed between two tables with the same keys and one column ``v``."""
    new = pa.table({"k": KEYS, "v": new_values})
    old = pa.table({"k": KEYS, "v": old_values})
    changes = diff(new, old, key_column="k", previous_version="v1")
    assert (changes.added, changes.removed, changes.retyped) == (0, 0, [])
    assert changes.changed == len(changes.examples["changed"])
    return changes.examples["changed"]


def uuids(values: list[bytes | None]) -> pa.Array:
    return pa.ExtensionArray.from_storage(pa.uuid(), pa.array(values, pa.binary(16)))


# Each case: row a is equal, b differs in value, c is null on both sides, d null on one side.
CASES = {
    "string": (["x", "y", None, "z"], ["x", "Y", None, None], pa.string()),
    "int8": ([1, 2, None, 3], [1, -2, None, None], pa.int8()),
    "uint64": ([2**64 - 1, 2, None, 3], [2**64 - 1, 1, None, None], pa.uint64()),
    "float16": ([1.5, 2.0, None, 1.0], [1.5, 2.5, None, None], pa.float16()),
    "float64-nan": ([float("nan"), 2.0, None, float("nan")], [float("nan"), 3.0, None, None],
                    pa.float64()),
    "bool": ([True, True, None, False], [True, False, None, None], pa.bool_()),
    "decimal": ([Decimal("1.10"), Decimal("2.00"), None, Decimal("0")],
                [Decimal("1.10"), Decimal("2.01"), None, None], pa.decimal128(5, 2)),
    "date32": ([date(2024, 1, 1), date(2024, 1, 2), None, date(2024, 1, 3)],
               [date(2024, 1, 1), date(2024, 1, 3), None, None], pa.date32()),
    "time64-ns": ([1, 2, None, 3], [1, 3, None, None], pa.time64("ns")),
    "timestamp-ns-tz": ([1, 2, None, 3], [1, 3, None, None], pa.timestamp("ns", tz="UTC")),
    "binary": ([b"\x00", b"\x01", None, b""], [b"\x00", b"\x02", None, None], pa.binary()),
    "list": ([[1, None], [2], None, []], [[1, None], [2, 3], None, None], pa.list_(pa.int64())),
    "large_list": ([["x"], ["y"], None, []], [["x"], ["z"], None, None],
                   pa.large_list(pa.string())),
    "fixed_size_list": ([[1, 2], [3, 4], None, [5, 6]], [[1, 2], [3, 5], None, None],
                        pa.list_(pa.int32(), 2)),
    "map": ([[("x", 1)], [("y", 2)], None, []], [[("x", 1)], [("y", 3)], None, None],
            pa.map_(pa.string(), pa.int64())),
    "map-int-keys": ([[(1, "x")], [(2, "y")], None, []], [[(1, "x")], [(3, "y")], None, None],
                     pa.map_(pa.int64(), pa.string())),
    "struct": ([{"n": 1, "s": "x"}, {"n": 2, "s": "y"}, None, {"n": None, "s": None}],
               [{"n": 1, "s": "x"}, {"n": 2, "s": "z"}, None, None],
               pa.struct([("n", pa.int64()), ("s", pa.string())])),
    "list-of-struct-of-list": (
        [[{"t": [1]}], [{"t": [1, 2]}], None, [None]],
        [[{"t": [1]}], [{"t": [1, 3]}], None, [{"t": None}]],
        pa.list_(pa.struct([("t", pa.list_(pa.timestamp("us")))])),
    ),
    "null": ([None] * 4, [None] * 4, pa.null()),
}  # fmt: skip


@pytest.mark.parametrize(("new", "old", "kind"), CASES.values(), ids=CASES.keys())
def test_changed_rows_are_found_in_every_column_type(
    new: list[object], old: list[object], kind: pa.DataType
) -> None:
    expected = [] if pa.types.is_null(kind) else ["b", "d"]

    assert changed(pa.array(new, kind), pa.array(old, kind)) == expected


def test_uuid_columns_compare_by_value() -> None:
    new = uuids([b"a" * 16, b"b" * 16, None, b"c" * 16])
    old = uuids([b"a" * 16, b"B" * 16, None, None])

    assert changed(new, old) == ["b", "d"]


def test_dictionary_column_compares_by_value_with_a_plain_one() -> None:
    new = pa.array(["x", "y", None, "z"]).dictionary_encode()
    old = pa.array(["x", "Y", None, None])

    assert changed(new, old) == ["b", "d"]


def test_list_of_a_different_length_is_a_change() -> None:
    kind = pa.list_(pa.int64())

    assert changed(pa.array([[1], [1, 2], [], [1]], kind), pa.array([[1], [1], [], []], kind)) == [
        "b",
        "d",
    ]


def test_map_with_its_entries_reordered_counts_as_changed() -> None:
    kind = pa.map_(pa.string(), pa.int64())
    new = pa.array([[("x", 1), ("y", 2)]] * 4, kind)
    old = pa.array([[("x", 1), ("y", 2)]] * 3 + [[("y", 2), ("x", 1)]], kind)

    assert changed(new, old) == ["d"]


def test_lists_with_field_names_from_two_writers_compare_by_value() -> None:
    # In memory a list's field is "item"; read back from Parquet it is "element".
    new = pa.array([[1], [2], None, [4]], pa.list_(pa.field("item", pa.int64())))
    old = pa.array([[1], [3], None, None], pa.list_(pa.field("element", pa.int64())))

    assert changed(new, old) == ["b", "d"]


def test_sliced_and_chunked_nested_columns_compare_their_own_rows() -> None:
    kind = pa.list_(pa.struct([("n", pa.int64())]))
    values = pa.array([[{"n": 0}], [{"n": 1}], [{"n": 2}], None, [{"n": 4}], [{"n": 5}]], kind)
    new = pa.table({"k": KEYS, "v": pa.chunked_array([values.slice(1, 2), values.slice(3, 2)])})
    old_values = pa.array([[{"n": 1}], [{"n": 9}], None, [{"n": 5}]], kind)
    old = pa.table({"k": KEYS, "v": old_values})

    changes = diff(new, old, key_column="k", previous_version="v1")

    assert changes.examples["changed"] == ["b", "d"]


def test_rows_are_paired_by_key_not_by_position() -> None:
    new = pa.table({"k": ["b", "c", "e"], "v": pa.array([[2], [3], [5]])})
    old = pa.table({"k": ["a", "b", "c"], "v": pa.array([[1], [2], [30]])})

    changes = diff(new, old, key_column="k", previous_version="v1")

    assert (changes.added, changes.removed, changes.changed) == (1, 1, 1)
    assert changes.examples == {"added": ["e"], "removed": ["a"], "changed": ["c"]}


def test_column_that_changes_type_marks_every_shared_row_changed() -> None:
    new = pa.table({"k": ["a", "b"], "v": pa.array([[1], [2]])})
    old = pa.table({"k": ["a", "b"], "v": pa.array([{"x": 1}, {"x": 2}])})

    changes = diff(new, old, key_column="k", previous_version="v1")

    assert (changes.changed, changes.retyped) == (2, ["v"])


def test_columns_on_one_side_only_are_not_compared() -> None:
    new = pa.table({"k": ["a"], "v": [1], "added_col": pa.array([[1]])})
    old = pa.table({"k": ["a"], "v": [1], "dropped_col": pa.array([{"x": 1}])})

    assert diff(new, old, key_column="k", previous_version="v1").changed == 0


def test_first_version_reports_every_row_added() -> None:
    new = pa.table({"k": KEYS, "v": pa.array([[1]] * 4)})

    changes = diff(new, None, key_column="k", previous_version=None)

    assert (changes.added, changes.removed, changes.changed) == (4, 0, 0)


def test_timestamps_in_different_zones_are_the_same_instant_but_a_type_change() -> None:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    new = pa.table({"k": ["a"], "v": pa.array([moment], pa.timestamp("us", tz="UTC"))})
    old = pa.table({"k": ["a"], "v": pa.array([moment], pa.timestamp("us", tz="+01:00"))})

    assert diff(new, old, key_column="k", previous_version="v1").retyped == ["v"]
