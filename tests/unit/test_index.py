"""KeyIndex: exact lookups, the key contract, and how each Arrow type is rendered."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.errors import SnapshotInvalidError
from loaders.index import KeyIndex, to_json_value

ROW_KEYS = ["k0", "k1", "k2"]


def keyed(keys: list[str | None], **columns: pa.Array) -> pa.Table:
    return pa.table({"k": pa.array(keys, pa.string()), **columns})


def rendered(values: pa.Array) -> list[object]:
    """The JSON-ready value of ``values`` at each row, as read through a KeyIndex."""
    keys = [f"k{i}" for i in range(len(values))]
    index = KeyIndex(keyed(keys, v=values), "k")
    return [index.get(k)["v"] for k in keys]


def arrow_rows(table: pa.Table) -> list[dict[str, object]]:
    """Arrow's own conversion of each row, made JSON-ready: the reference for the fast path."""
    return [{name: to_json_value(v) for name, v in row.items()} for row in table.to_pylist()]


@pytest.fixture
def index(small_table: pa.Table) -> KeyIndex:
    return KeyIndex(small_table, "customer_id")


# --- lookups -------------------------------------------------------------------------------


def test_get_returns_the_row_of_a_present_key(index: KeyIndex) -> None:
    row = index.get("C000000002")

    assert row == {
        "customer_id": "C000000002",
        "account_id": "A0000000001",
        "segment": "smb",
        "region": "eu-west-1",
        "tier": "premium",
        "updated_at": "2024-01-02T09:30:00+00:00",
    }


def test_get_returns_none_for_an_absent_key(index: KeyIndex) -> None:
    assert index.get("C000000004") is None


def test_get_returns_none_for_the_empty_string(index: KeyIndex) -> None:
    assert index.get("") is None


@pytest.mark.parametrize("probe", ["C0000000011", "C000000001X", "C000000003_"])
def test_key_longer_than_the_widest_key_does_not_prefix_match(index: KeyIndex, probe: str) -> None:
    assert index.get(probe) is None


def test_shorter_key_does_not_match_a_longer_one() -> None:
    index = KeyIndex(keyed(["AB", "ABC"]), "k")

    assert index.get("A") is None


def test_keys_of_different_widths_are_each_found() -> None:
    keys = ["A", "AB", "ABC", "B"]
    index = KeyIndex(keyed(keys, n=pa.array([0, 1, 2, 3])), "k")

    assert [index.get(k)["n"] for k in keys] == [0, 1, 2, 3]


def test_key_with_trailing_nul_does_not_match_the_key_without_it() -> None:
    index = KeyIndex(keyed(["C1", "C22"]), "k")

    assert index.get("C1\x00") is None


def test_non_ascii_keys_are_found() -> None:
    keys = sorted(["Zürich", "Ångström", "plain", "日本"], key=str.encode)
    index = KeyIndex(keyed(keys, n=pa.array(range(len(keys)))), "k")

    assert [index.get(k)["n"] for k in keys] == list(range(len(keys)))


def test_position_gives_the_row_number(index: KeyIndex) -> None:
    assert [index.position(k) for k in ("C000000001", "C000000003", "nope")] == [0, 2, None]


def test_len_is_the_row_count(index: KeyIndex) -> None:
    assert len(index) == 3


def test_empty_table_finds_nothing() -> None:
    index = KeyIndex(keyed([]), "k")

    assert (len(index), index.get("a")) == (0, None)


def test_get_many_keeps_request_order_and_reports_missing(index: KeyIndex) -> None:
    found, missing = index.get_many(["C000000003", "X1", "C000000001", "X2"])

    assert [row["customer_id"] for row in found] == ["C000000003", "C000000001"]
    assert missing == ["X1", "X2"]


def test_get_many_answers_a_repeated_key_each_time(index: KeyIndex) -> None:
    found, missing = index.get_many(["C000000002", "C000000002"])

    assert ([row["customer_id"] for row in found], missing) == (["C000000002"] * 2, [])


# --- the key contract ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [["b", "a"], ["a", "a"], ["a", "b", "b"], ["a", "c", "b"]],
    ids=["unsorted", "duplicate", "duplicate-at-end", "unsorted-at-end"],
)
def test_unsorted_or_duplicate_keys_are_rejected(keys: list[str]) -> None:
    with pytest.raises(SnapshotInvalidError, match="unique and sorted"):
        KeyIndex(keyed(keys), "k")


def test_non_ascii_unsorted_keys_are_rejected() -> None:
    with pytest.raises(SnapshotInvalidError, match="unique and sorted"):
        KeyIndex(keyed(["Ö", "A"]), "k")


def test_null_keys_are_rejected() -> None:
    with pytest.raises(SnapshotInvalidError, match="1 nulls"):
        KeyIndex(keyed(["a", None, "b"]), "k")


def test_non_string_key_column_is_rejected() -> None:
    with pytest.raises(SnapshotInvalidError, match="must be strings"):
        KeyIndex(pa.table({"k": [1, 2]}), "k")


def test_missing_key_column_is_rejected() -> None:
    with pytest.raises(SnapshotInvalidError, match="'id' is missing"):
        KeyIndex(keyed(["a"]), "id")


# --- table layout: chunks and slices -------------------------------------------------------


def test_multi_chunk_table_finds_keys_in_every_chunk(small_table: pa.Table) -> None:
    chunked = pa.concat_tables([small_table.slice(0, 1), small_table.slice(1, 1), small_table[2:]])
    assert chunked.column("customer_id").num_chunks == 3

    index = KeyIndex(chunked, "customer_id")

    assert [index.get(k) for k in ("C000000001", "C000000002", "C000000003")] == arrow_rows(
        small_table
    )


def test_multi_chunk_table_with_keys_out_of_order_across_chunks_is_rejected(
    small_table: pa.Table,
) -> None:
    chunked = pa.concat_tables([small_table.slice(2, 1), small_table.slice(0, 2)])

    with pytest.raises(SnapshotInvalidError, match="unique and sorted"):
        KeyIndex(chunked, "customer_id")


def wide_table() -> pa.Table:
    """Six rows with one column of each type that has its own fast path."""
    return pa.table(
        {
            "k": pa.array([f"K{i}" for i in range(6)]),
            "text": pa.array(["a", None, "ß", "dd", "", "f"]),
            "large_text": pa.array(["a", "b", None, "d", "e", "f"], pa.large_string()),
            "category": pa.array(["x", "y", None, "x", "y", "z"]).dictionary_encode(),
            "count": pa.array([1, 2, None, 4, 5, 6], pa.int32()),
            "ratio": pa.array([0.5, None, 2.5, float("nan"), 4.5, 5.5]),
            "flag": pa.array([True, False, None, True, False, True]),
            "day": pa.array([date(2024, 1, d) for d in range(1, 7)], pa.date32()),
            "at": pa.array(
                [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(6)],
                pa.timestamp("us", tz="UTC"),
            ),
            "amount": pa.array([Decimal(f"{i}.25") for i in range(6)], pa.decimal128(6, 2)),
        }
    )


def test_sliced_table_reads_the_values_of_its_own_rows() -> None:
    sliced = wide_table().slice(2, 3)

    index = KeyIndex(sliced, "k")

    assert [index.get(k) for k in ("K2", "K3", "K4")] == arrow_rows(sliced)


def test_sliced_table_does_not_find_keys_outside_the_slice() -> None:
    index = KeyIndex(wide_table().slice(2, 3), "k")

    assert [index.get(k) for k in ("K1", "K5")] == [None, None]


def test_sliced_multi_chunk_table_reads_the_values_of_its_own_rows() -> None:
    table = wide_table()
    chunked = pa.concat_tables([table.slice(1, 2), table.slice(3, 2)])

    index = KeyIndex(chunked, "k")

    assert [index.get(f"K{i}") for i in range(1, 5)] == arrow_rows(chunked)


# --- value rendering -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (pa.array(["smb", None, "ent"]).dictionary_encode(), ["smb", None, "ent"]),
        (pa.array(["é", "日本", None]).dictionary_encode(), ["é", "日本", None]),
        (
            pa.DictionaryArray.from_arrays(pa.array([1, None, 0], pa.int8()), ["a", "b"]),
            ["b", None, "a"],
        ),
    ],
    ids=["strings-with-null", "non-ascii", "int8-indices"],
)
def test_dictionary_strings_render_as_their_values(
    values: pa.Array, expected: list[object]
) -> None:
    assert rendered(values) == expected


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()], ids=["string", "large_string"])
def test_strings_render_with_non_ascii_empty_and_null(kind: pa.DataType) -> None:
    values = ["plain", "Zürich ✓", None, "", "日本語"]

    assert rendered(pa.array(values, kind)) == values


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        (pa.int8(), [-128, None, 127]),
        (pa.int16(), [-32768, 0, 32767]),
        (pa.int32(), [-(2**31), None, 2**31 - 1]),
        (pa.int64(), [-(2**63), 0, 2**63 - 1]),
        (pa.uint8(), [0, None, 255]),
        (pa.uint16(), [0, 1, 65535]),
        (pa.uint32(), [0, None, 2**32 - 1]),
        (pa.uint64(), [0, 1, 2**64 - 1]),
    ],
    ids=str,
)
def test_integers_of_every_width_render_exactly(kind: pa.DataType, values: list[object]) -> None:
    assert rendered(pa.array(values, kind)) == values


@pytest.mark.parametrize("kind", [pa.float16(), pa.float32(), pa.float64()], ids=str)
def test_floats_render_with_nan_infinity_and_null_as_none(kind: pa.DataType) -> None:
    values = pa.array([1.5, float("nan"), None, -0.25, float("inf")], pa.float64()).cast(kind)

    assert rendered(values) == [1.5, None, None, -0.25, None]


def test_float64_keeps_full_precision() -> None:
    assert rendered(pa.array([0.1, 1e300, -math.pi])) == [0.1, 1e300, -math.pi]


def test_bools_render_with_null() -> None:
    assert rendered(pa.array([True, None, False])) == [True, None, False]


MOMENT = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC", "2024-01-02T03:04:05.678901+00:00"),
        ("+00:00", "2024-01-02T03:04:05.678901+00:00"),
        ("America/New_York", "2024-01-01T22:04:05.678901-05:00"),
        ("Asia/Kolkata", "2024-01-02T08:34:05.678901+05:30"),
        ("+05:30", "2024-01-02T08:34:05.678901+05:30"),
        (None, "2024-01-02T03:04:05.678901"),
    ],
    ids=["UTC", "utc-offset", "new-york", "kolkata", "fixed-offset", "naive"],
)
def test_timestamps_render_as_iso_in_their_zone(tz: str | None, expected: str) -> None:
    ticks = pa.array([int(MOMENT.timestamp()) * 1_000_000 + MOMENT.microsecond, None])

    assert rendered(ticks.cast(pa.timestamp("us", tz=tz))) == [expected, None]


@pytest.mark.parametrize(
    ("unit", "ticks", "expected"),
    [
        ("s", 1_700_000_000, "2023-11-14T22:13:20+00:00"),
        ("ms", 1_700_000_000_123, "2023-11-14T22:13:20.123000+00:00"),
        ("us", 1_700_000_000_123_456, "2023-11-14T22:13:20.123456+00:00"),
        ("ns", 1_700_000_000_123_456_000, "2023-11-14T22:13:20.123456+00:00"),
        ("s", -1, "1969-12-31T23:59:59+00:00"),
        ("ns", -1_000, "1969-12-31T23:59:59.999999+00:00"),
    ],
    ids=["s", "ms", "us", "ns", "s-before-epoch", "ns-before-epoch"],
)
def test_timestamps_render_in_every_unit(unit: str, ticks: int, expected: str) -> None:
    values = pa.array([ticks], pa.int64()).cast(pa.timestamp(unit, tz="UTC"))

    assert rendered(values) == [expected]


def test_date32_renders_as_iso_date() -> None:
    values = pa.array([date(2024, 2, 29), None, date(1969, 12, 31)], pa.date32())

    assert rendered(values) == ["2024-02-29", None, "1969-12-31"]


@pytest.mark.parametrize(
    "kind", [pa.decimal128(12, 2), pa.decimal256(40, 2)], ids=["decimal128", "decimal256"]
)
def test_decimals_render_as_exact_strings(kind: pa.DataType) -> None:
    values = pa.array([Decimal("1234567890.10"), None, Decimal("-0.01")], kind)

    assert rendered(values) == ["1234567890.10", None, "-0.01"]


# --- property: every present key is found, nothing else is --------------------------------

KEYS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(present=st.sets(KEYS, min_size=1, max_size=40), probes=st.lists(KEYS, max_size=20))
def test_index_finds_every_present_key_and_no_absent_one(
    present: set[str], probes: list[str]
) -> None:
    keys = sorted(present)
    index = KeyIndex(keyed(keys, row=pa.array(range(len(keys)))), "k")

    assert [index.get(k) for k in keys] == [{"k": k, "row": i} for i, k in enumerate(keys)]
    near_misses = [m for k in keys for m in (k[:-1], k + "_", "-" + k, k[1:])]
    absent = {p for p in [*probes, *near_misses] if p not in present}
    assert [p for p in absent if index.get(p) is not None] == []


# --- value rendering: times, nested types, extension types ---------------------------------


@pytest.mark.parametrize(
    ("kind", "ticks", "expected"),
    [
        (pa.time32("s"), [0, None, 86_399], ["00:00:00", None, "23:59:59"]),
        (pa.time32("ms"), [1, None, 3_661_500], ["00:00:00.001000", None, "01:01:01.500000"]),
        (pa.time64("us"), [1, None, 86_399_999_999], ["00:00:00.000001", None, "23:59:59.999999"]),
        (
            pa.time64("ns"),
            [999, None, 3_661_123_456_789],
            ["00:00:00", None, "01:01:01.123456"],
        ),
    ],
    ids=str,
)
def test_times_render_as_iso_time_of_day(
    kind: pa.DataType, ticks: list[int | None], expected: list[object]
) -> None:
    values = pa.array(ticks, pa.int32() if kind.bit_width == 32 else pa.int64()).view(kind)

    assert rendered(values) == expected


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (None, "2023-11-14T22:13:20.123456"),
        ("UTC", "2023-11-14T22:13:20.123456+00:00"),
        ("+05:30", "2023-11-15T03:43:20.123456+05:30"),
        ("Europe/Berlin", "2023-11-14T23:13:20.123456+01:00"),
    ],
    ids=str,
)
def test_nanosecond_timestamps_that_are_not_whole_microseconds_are_truncated(
    tz: str | None, expected: str
) -> None:
    values = pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns", tz=tz))

    assert rendered(values) == [expected, None]


def test_date64_renders_as_iso_date() -> None:
    values = pa.array([date(2024, 2, 29), None, date(1969, 12, 31)], pa.date64())

    assert rendered(values) == ["2024-02-29", None, "1969-12-31"]


@pytest.mark.parametrize(
    "kind", [pa.binary(), pa.large_binary(), pa.binary(2), pa.binary_view()], ids=str
)
def test_binaries_render_as_base64(kind: pa.DataType) -> None:
    assert rendered(pa.array([b"\x00\xff", None, b"ab"], kind)) == ["AP8=", None, "YWI="]


@pytest.mark.parametrize(
    "kind",
    [pa.list_(pa.int64()), pa.large_list(pa.int64()), pa.list_view(pa.int64())],
    ids=["list", "large_list", "list_view"],
)
def test_lists_render_as_arrays_with_nulls_at_each_level(kind: pa.DataType) -> None:
    values = pa.array([[1, None], None, [], [2**63 - 1]], kind)

    assert rendered(values) == [[1, None], None, [], [2**63 - 1]]


def test_fixed_size_lists_render_as_arrays() -> None:
    values = pa.array([[1, 2], None, [None, 4]], pa.list_(pa.int16(), 2))

    assert rendered(values) == [[1, 2], None, [None, 4]]


def test_structs_render_as_objects_and_a_null_struct_as_none() -> None:
    kind = pa.struct([("n", pa.int32()), ("tags", pa.list_(pa.string()))])
    values = pa.array([{"n": 1, "tags": ["a"]}, None, {"n": None, "tags": None}], kind)

    assert rendered(values) == [{"n": 1, "tags": ["a"]}, None, {"n": None, "tags": None}]


def test_map_with_string_keys_renders_as_an_object() -> None:
    kind = pa.map_(pa.string(), pa.float64())
    values = pa.array([[("a", 1.5), ("b", None)], None, [], [("c", float("nan"))]], kind)

    assert rendered(values) == [{"a": 1.5, "b": None}, None, {}, {"c": None}]


def test_map_with_other_keys_renders_as_key_value_pairs_in_order() -> None:
    kind = pa.map_(pa.int64(), pa.string())
    values = pa.array([[(2, "b"), (1, "a")], None, []], kind)

    assert rendered(values) == [[[2, "b"], [1, "a"]], None, []]


def test_map_with_a_repeated_string_key_keeps_the_last_value() -> None:
    values = pa.array([[("a", 1), ("a", 2)]], pa.map_(pa.string(), pa.int64()))

    assert rendered(values) == [{"a": 2}]


def test_nested_values_render_like_top_level_ones() -> None:
    kind = pa.list_(
        pa.struct(
            [
                ("at", pa.timestamp("ns", tz="UTC")),
                ("day", pa.date32()),
                ("amount", pa.decimal128(6, 2)),
                ("raw", pa.binary()),
                ("attrs", pa.map_(pa.string(), pa.list_(pa.time64("us")))),
            ]
        )
    )
    row = {
        "at": 1_700_000_000_123_456_789,
        "day": date(2024, 2, 29),
        "amount": Decimal("-1.50"),
        "raw": b"\x00",
        "attrs": [("t", [3_600_000_000, None])],
    }
    values = pa.array([[row, None], None], kind)

    assert rendered(values) == [
        [
            {
                "at": "2023-11-14T22:13:20.123456+00:00",
                "day": "2024-02-29",
                "amount": "-1.50",
                "raw": "AA==",
                "attrs": {"t": ["01:00:00", None]},
            },
            None,
        ],
        None,
    ]


def test_uuid_renders_in_canonical_form() -> None:
    storage = pa.array([bytes(range(16)), None], pa.binary(16))

    values = pa.ExtensionArray.from_storage(pa.uuid(), storage)

    assert rendered(values) == ["00010203-0405-0607-0809-0a0b0c0d0e0f", None]


def test_json_extension_renders_as_its_text() -> None:
    values = pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": 1}', None]))

    assert rendered(values) == ['{"a": 1}', None]


def test_null_column_renders_as_none() -> None:
    assert rendered(pa.nulls(2)) == [None, None]


def test_get_many_renders_nested_columns_like_get() -> None:
    table = keyed(
        ["a", "b", "c"],
        m=pa.array([[("x", 1)], None, []], pa.map_(pa.string(), pa.int8())),
        s=pa.array([{"t": 0}, {"t": None}, None], pa.struct([("t", pa.timestamp("ns"))])),
    )
    index = KeyIndex(table, "k")

    found, _ = index.get_many(["c", "a", "b", "a"])

    assert found == [index.get(k) for k in ["c", "a", "b", "a"]]


def test_sliced_nested_columns_read_the_values_of_their_own_rows() -> None:
    values = pa.array([[1], [2, 3], None, [4]], pa.list_(pa.int64()))
    sliced = keyed(["a", "b", "c", "d"], v=values).slice(1, 3)

    index = KeyIndex(sliced, "k")

    assert [index.get(k)["v"] for k in ("b", "c", "d")] == [[2, 3], None, [4]]


# --- columns that cannot be served ---------------------------------------------------------


UNION = pa.UnionArray.from_sparse(
    pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]
)
INTERVAL = pa.array([pa.MonthDayNano([1, 2, 3]), None], pa.month_day_nano_interval())


@pytest.mark.parametrize(
    "values",
    [UNION, INTERVAL, pa.array([[pa.MonthDayNano([1, 2, 3])], None])],
    ids=["union", "interval", "list-of-interval"],
)
def test_a_type_without_a_json_form_is_rejected_naming_the_column(values: pa.Array) -> None:
    with pytest.raises(SnapshotInvalidError, match=r"column 'v' of type .* cannot be served"):
        KeyIndex(keyed(["a", "b"], v=values), "k")


@pytest.mark.parametrize(
    "values",
    [
        pa.array([0, 253_402_300_800], pa.timestamp("s")),
        pa.array([0, 253_402_300_800], pa.timestamp("s", tz="Asia/Tokyo")),
        pa.array([0, 3_000_000], pa.int32()).view(pa.date32()),
        pa.array([0, 90_000], pa.int32()).view(pa.time32("s")),
        pa.array([[0], [253_402_300_800]], pa.list_(pa.timestamp("s"))),
    ],
    ids=["timestamp", "zoned-timestamp", "date", "time", "nested-timestamp"],
)
def test_a_value_python_cannot_represent_is_rejected_at_load(values: pa.Array) -> None:
    with pytest.raises(SnapshotInvalidError, match=r"column 'v' of type .* cannot be served"):
        KeyIndex(keyed(["a", "b"], v=values), "k")


def test_unknown_time_zone_is_rejected_naming_the_column() -> None:
    values = pa.array([0, 1], pa.timestamp("s", tz="Mars/Olympus"))

    with pytest.raises(SnapshotInvalidError, match=r"column 'v'.*unknown time zone 'Mars/Olympus'"):
        KeyIndex(keyed(["a", "b"], v=values), "k")


def test_an_empty_batch_finds_nothing_and_misses_nothing() -> None:
    index = KeyIndex(pa.table({"customer_id": ["C1", "C2"], "v": [1, 2]}), "customer_id")

    assert index.get_many([]) == ([], [])
