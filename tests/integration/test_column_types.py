"""Every column type Athena or DuckDB can produce, published and served as exact JSON.

Two paths, each one table holding every type: an Arrow table built in memory and written with
``write_snapshot``, and DuckDB SQL run by ``DuckDBEngine`` and published. Both are read back
with ``read_snapshot`` and answered by a ``KeyIndex`` twice: here (the dev venv has pandas) and
in one child Python that cannot import pandas, as in the Lambda. Rows: ``k0`` a typical value,
``k1`` an extreme one, ``k2`` null, ``k3`` another edge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loaders.engines import DuckDBEngine
from loaders.errors import SnapshotInvalidError
from loaders.index import KeyIndex
from loaders.manifest import Manifest, new_version
from loaders.publish import publish_table
from loaders.snapshot import read_snapshot, write_snapshot
from loaders.store import FileStore
from loaders.validate import diff
from tests.conftest import T0

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["k0", "k1", "k2", "k3"]

# --- the in-memory table: name -> (values, answers, type in the manifest) ------------------

T_SECONDS = 1_710_055_800  # 2024-03-10T07:30:00Z, the morning New York moved to -04:00
TICKS = {"s": T_SECONDS, "ms": T_SECONDS * 10**3 + 123, "us": T_SECONDS * 10**6 + 123_456,
         "ns": T_SECONDS * 10**9 + 123_456_789}  # fmt: skip
FRACTION = {"s": ("", ""), "ms": (".123000", ".999000"), "us": (".123456", ".999999"),
            "ns": (".123456", ".999999")}  # fmt: skip
# The instant T, one tick before the epoch and the epoch, as each zone's wall clock shows them.
WALL = {
    None: ("2024-03-10T07:30:00{}", "1969-12-31T23:59:59{}", "1970-01-01T00:00:00"),
    "UTC": ("2024-03-10T07:30:00{}+00:00", "1969-12-31T23:59:59{}+00:00",
            "1970-01-01T00:00:00+00:00"),
    "+05:30": ("2024-03-10T13:00:00{}+05:30", "1970-01-01T05:29:59{}+05:30",
               "1970-01-01T05:30:00+05:30"),
    "America/New_York": ("2024-03-10T03:30:00{}-04:00", "1969-12-31T18:59:59{}-05:00",
                         "1969-12-31T19:00:00-05:00"),
}  # fmt: skip


def _timestamps(unit: str, tz: str | None) -> tuple[pa.Array, list[Any], str]:
    values = pa.array([TICKS[unit], -1, None, 0], pa.int64()).cast(pa.timestamp(unit, tz=tz))
    at, before, epoch = WALL[tz]
    typical, last = FRACTION[unit]
    # Parquet has no seconds: timestamp[s] is written, and read back, as milliseconds.
    read_unit = "ms" if unit == "s" else unit
    read_type = f"timestamp[{read_unit}]" if tz is None else f"timestamp[{read_unit}, tz={tz}]"
    return values, [at.format(typical), before.format(last), None, epoch], read_type


def _uuids(values: list[bytes | None]) -> pa.Array:
    return pa.ExtensionArray.from_storage(pa.uuid(), pa.array(values, pa.binary(16)))


T_NS = TICKS["ns"]
STRUCT = pa.struct([("id", pa.int64()), ("name", pa.string()),
                    ("at", pa.timestamp("ms", tz="UTC")),
                    ("amount", pa.decimal128(9, 2))])  # fmt: skip
NESTED = pa.struct([("attrs", pa.map_(pa.string(), pa.string())),
                    ("scores", pa.list_(pa.float64()))])  # fmt: skip
MAP_OF_STRUCT = pa.map_(pa.string(), pa.struct([("d", pa.date32()),
                                                 ("tags", pa.list_(pa.string()))]))  # fmt: skip

MEMORY: dict[str, tuple[pa.Array, list[Any], str]] = {
    "string": (pa.array(["héllo ✓", "", None, "日本"]), ["héllo ✓", "", None, "日本"], "string"),
    "large_string": (pa.array(["a", "", None, "z"], pa.large_string()), ["a", "", None, "z"],
                     "large_string"),
    "dictionary": (pa.array(["x", "y", None, "x"]).dictionary_encode(), ["x", "y", None, "x"],
                   "string"),
    "int8": (pa.array([1, -128, None, 127], pa.int8()), [1, -128, None, 127], "int8"),
    "int16": (pa.array([1, -32768, None, 32767], pa.int16()), [1, -32768, None, 32767], "int16"),
    "int32": (pa.array([1, -(2**31), None, 2**31 - 1], pa.int32()), [1, -(2**31), None, 2**31 - 1],
              "int32"),
    "int64": (pa.array([1, -(2**63), None, 2**63 - 1]), [1, -(2**63), None, 2**63 - 1], "int64"),
    "uint8": (pa.array([1, 0, None, 255], pa.uint8()), [1, 0, None, 255], "uint8"),
    "uint16": (pa.array([1, 0, None, 65535], pa.uint16()), [1, 0, None, 65535], "uint16"),
    "uint32": (pa.array([1, 0, None, 2**32 - 1], pa.uint32()), [1, 0, None, 2**32 - 1], "uint32"),
    "uint64": (pa.array([1, 0, None, 2**64 - 1], pa.uint64()), [1, 0, None, 2**64 - 1], "uint64"),
    "float16": (pa.array([1.5, float("nan"), None, 65504.0], pa.float16()),
                [1.5, None, None, 65504.0], "halffloat"),
    "float32": (pa.array([1.5, float("nan"), None, float("-inf")], pa.float32()),
                [1.5, None, None, None], "float"),
    "float64": (pa.array([0.1, float("inf"), None, -1e300]), [0.1, None, None, -1e300], "double"),
    "bool": (pa.array([True, False, None, True]), [True, False, None, True], "bool"),
    "decimal128": (
        pa.array([Decimal("123.45"), Decimal("-999.99"), None, Decimal("0.01")],
                 pa.decimal128(5, 2)),
        ["123.45", "-999.99", None, "0.01"], "decimal128(5, 2)"),
    "decimal128_38": (
        pa.array([Decimal("1234567890123456789012345678.0123456789"), Decimal("-0.0000000001"),
                  None, Decimal("1.0000000000")], pa.decimal128(38, 10)),
        ["1234567890123456789012345678.0123456789", "-1E-10", None, "1.0000000000"],
        "decimal128(38, 10)"),
    "decimal256": (
        pa.array([Decimal("1" * 45 + ".12345"), Decimal("-1.00000"), None, Decimal("0.00001")],
                 pa.decimal256(50, 5)),
        ["1" * 45 + ".12345", "-1.00000", None, "0.00001"], "decimal256(50, 5)"),
    "date32": (pa.array([date(2024, 2, 29), date(1, 1, 1), None, date(9999, 12, 31)]),
               ["2024-02-29", "0001-01-01", None, "9999-12-31"], "date32[day]"),
    "date64": (pa.array([date(2024, 2, 29), date(1, 1, 1), None, date(9999, 12, 31)], pa.date64()),
               ["2024-02-29", "0001-01-01", None, "9999-12-31"], "date32[day]"),
    "time32_s": (pa.array([45_000, 86_399, None, 0], pa.int32()).view(pa.time32("s")),
                 ["12:30:00", "23:59:59", None, "00:00:00"], "time32[ms]"),
    "time32_ms": (pa.array([45_000_123, 86_399_999, None, 0], pa.int32()).view(pa.time32("ms")),
                  ["12:30:00.123000", "23:59:59.999000", None, "00:00:00"], "time32[ms]"),
    "time64_us": (pa.array([45_000_123_456, 86_399_999_999, None, 1], pa.time64("us")),
                  ["12:30:00.123456", "23:59:59.999999", None, "00:00:00.000001"], "time64[us]"),
    "time64_ns": (pa.array([45_000_123_456_789, 86_399_999_999_999, None, 999], pa.time64("ns")),
                  ["12:30:00.123456", "23:59:59.999999", None, "00:00:00"], "time64[ns]"),
    **{
        f"timestamp_{unit}_{tz or 'naive'}": _timestamps(unit, tz)
        for unit in ("s", "ms", "us", "ns")
        for tz in (None, "UTC", "+05:30", "America/New_York")
    },
    "binary": (pa.array([b"\x00\xff", b"", None, b"abc"]), ["AP8=", "", None, "YWJj"], "binary"),
    "large_binary": (pa.array([b"\x00\xff", b"", None, b"abc"], pa.large_binary()),
                     ["AP8=", "", None, "YWJj"], "large_binary"),
    "fixed_size_binary": (pa.array([b"\x00\xff\x01", b"abc", None, b"\xff\xff\xff"], pa.binary(3)),
                          ["AP8B", "YWJj", None, "////"], "fixed_size_binary[3]"),
    "uuid": (_uuids([bytes(range(16)), b"\xff" * 16, None, b"\x00" * 16]),
             ["00010203-0405-0607-0809-0a0b0c0d0e0f", "ffffffff-ffff-ffff-ffff-ffffffffffff", None,
              "00000000-0000-0000-0000-000000000000"], "extension<arrow.uuid>"),
    "list": (pa.array([[1, None, 3], [], None, [2**63 - 1]]), [[1, None, 3], [], None, [2**63 - 1]],
             "list<element: int64>"),
    "large_list": (pa.array([["a"], [None], None, []], pa.large_list(pa.string())),
                   [["a"], [None], None, []], "large_list<element: string>"),
    "fixed_size_list": (pa.array([[1, 2], [None, -1], None, [0, 0]], pa.list_(pa.int16(), 2)),
                        [[1, 2], [None, -1], None, [0, 0]], "fixed_size_list<element: int16>[2]"),
    "list_of_list": (pa.array([[[1], []], [None], None, []], pa.list_(pa.list_(pa.int32()))),
                     [[[1], []], [None], None, []], "list<element: list<element: int32>>"),
    "list_of_timestamp_ns": (
        pa.array([[T_NS], [-1], None, [None]], pa.list_(pa.timestamp("ns", tz="UTC"))),
        [["2024-03-10T07:30:00.123456+00:00"], ["1969-12-31T23:59:59.999999+00:00"], None, [None]],
        "list<element: timestamp[ns, tz=UTC]>"),
    "map_string_keys": (
        pa.array([[("a", 1), ("b", None)], [], None, [("z", -1)]],
                 pa.map_(pa.string(), pa.int64())),
        [{"a": 1, "b": None}, {}, None, {"z": -1}], "map<string, int64 ('map_string_keys')>"),
    "map_int_keys": (
        pa.array([[(1, "a"), (2, None)], [], None, [(-5, "x")]], pa.map_(pa.int32(), pa.string())),
        [[[1, "a"], [2, None]], [], None, [[-5, "x"]]], "map<int32, string ('map_int_keys')>"),
    "map_of_struct": (
        pa.array([[("a", {"d": date(2024, 2, 29), "tags": ["x"]})], [("b", None)], None, []],
                 MAP_OF_STRUCT),
        [{"a": {"d": "2024-02-29", "tags": ["x"]}}, {"b": None}, None, {}],
        "map<string, struct<d: date32[day], tags: list<element: string>> ('map_of_struct')>"),
    "struct": (
        pa.array([{"id": 7, "name": "n", "at": T_SECONDS * 1000 + 5, "amount": Decimal("-1.50")},
                  {"id": None, "name": None, "at": None, "amount": None}, None,
                  {"id": 2**63 - 1, "name": "", "at": 0, "amount": Decimal("0.01")}], STRUCT),
        [{"id": 7, "name": "n", "at": "2024-03-10T07:30:00.005000+00:00", "amount": "-1.50"},
         {"id": None, "name": None, "at": None, "amount": None}, None,
         {"id": 2**63 - 1, "name": "", "at": "1970-01-01T00:00:00+00:00", "amount": "0.01"}],
        "struct<id: int64, name: string, at: timestamp[ms, tz=UTC], amount: decimal128(9, 2)>"),
    "struct_of_map_and_list": (
        pa.array([{"attrs": [("k", "v")], "scores": [1.5, float("nan")]},
                  {"attrs": None, "scores": []}, None, {"attrs": [], "scores": None}], NESTED),
        [{"attrs": {"k": "v"}, "scores": [1.5, None]}, {"attrs": None, "scores": []}, None,
         {"attrs": {}, "scores": None}],
        "struct<attrs: map<string, string ('attrs')>, scores: list<element: double>>"),
    "null": (pa.nulls(4), [None, None, None, None], "null"),
}  # fmt: skip


def memory_table() -> pa.Table:
    return pa.table({"k": KEYS, **{name: values for name, (values, _, _) in MEMORY.items()}})


# --- the DuckDB query: name -> (DuckDB type, SQL per row, answers, type in the manifest) ----

DUCKDB: dict[str, tuple[str, list[str], list[Any], str]] = {
    "varchar": ("VARCHAR", ["'héllo ✓'", "''", "NULL", "'日本'"], ["héllo ✓", "", None, "日本"],
                "string"),
    "tinyint": ("TINYINT", ["1", "-128", "NULL", "127"], [1, -128, None, 127], "int8"),
    "smallint": ("SMALLINT", ["1", "-32768", "NULL", "32767"], [1, -32768, None, 32767], "int16"),
    "integer": ("INTEGER", ["1", str(-(2**31)), "NULL", str(2**31 - 1)],
                [1, -(2**31), None, 2**31 - 1], "int32"),
    "bigint": ("BIGINT", ["1", str(-(2**63)), "NULL", str(2**63 - 1)],
               [1, -(2**63), None, 2**63 - 1], "int64"),
    "utinyint": ("UTINYINT", ["1", "0", "NULL", "255"], [1, 0, None, 255], "uint8"),
    "usmallint": ("USMALLINT", ["1", "0", "NULL", "65535"], [1, 0, None, 65535], "uint16"),
    "uinteger": ("UINTEGER", ["1", "0", "NULL", str(2**32 - 1)], [1, 0, None, 2**32 - 1],
                 "uint32"),
    "ubigint": ("UBIGINT", ["1", "0", "NULL", str(2**64 - 1)], [1, 0, None, 2**64 - 1], "uint64"),
    # DuckDB's Parquet writer stores HUGEINT as DOUBLE: past 2**53 the builder already holds a
    # rounded value (2**53 + 1 arrives as 2**53).
    "hugeint": ("HUGEINT", [str(2**127 - 1), "-1", "NULL", str(2**53 + 1)],
                [1.7014118346046923e38, -1.0, None, 9007199254740992.0], "double"),
    "float": ("FLOAT", ["1.5", "'nan'", "NULL", "'-inf'"], [1.5, None, None, None], "float"),
    "double": ("DOUBLE", ["0.1", "'inf'", "NULL", "-1e300"], [0.1, None, None, -1e300], "double"),
    "boolean": ("BOOLEAN", ["true", "false", "NULL", "true"], [True, False, None, True], "bool"),
    "decimal_4_1": ("DECIMAL(4, 1)", ["'999.9'", "'-0.1'", "NULL", "'0.5'"],
                    ["999.9", "-0.1", None, "0.5"], "decimal128(4, 1)"),
    "decimal_18_2": ("DECIMAL(18, 2)", ["'1234567890123456.78'", "'-0.01'", "NULL", "'0.50'"],
                     ["1234567890123456.78", "-0.01", None, "0.50"], "decimal128(18, 2)"),
    "decimal_38_10": ("DECIMAL(38, 10)",
                      ["'1234567890123456789012345678.0123456789'", "'-1.5'", "NULL", "'2'"],
                      ["1234567890123456789012345678.0123456789", "-1.5000000000", None,
                       "2.0000000000"], "decimal128(38, 10)"),
    "date": ("DATE", ["'2024-02-29'", "'0001-01-01'", "NULL", "'9999-12-31'"],
             ["2024-02-29", "0001-01-01", None, "9999-12-31"], "date32[day]"),
    "time": ("TIME", ["'13:45:00.123456'", "'23:59:59.999999'", "NULL", "'00:00:00'"],
             ["13:45:00.123456", "23:59:59.999999", None, "00:00:00"], "time64[us]"),
    "timestamp": ("TIMESTAMP", ["'2024-02-29 13:45:00.123456'", "'1969-12-31 23:59:59.999999'",
                                "NULL", "'0001-01-01 00:00:00'"],
                  ["2024-02-29T13:45:00.123456", "1969-12-31T23:59:59.999999", None,
                   "0001-01-01T00:00:00"], "timestamp[us]"),
    "timestamp_s": ("TIMESTAMP_S", ["'2024-02-29 13:45:00'", "'1969-12-31 23:59:59'", "NULL",
                                    "'9999-12-31 23:59:59'"],
                    ["2024-02-29T13:45:00", "1969-12-31T23:59:59", None, "9999-12-31T23:59:59"],
                    "timestamp[us]"),
    "timestamp_ms": ("TIMESTAMP_MS", ["'2024-02-29 13:45:00.123'", "'1969-12-31 23:59:59.999'",
                                      "NULL", "'1970-01-01 00:00:00'"],
                     ["2024-02-29T13:45:00.123000", "1969-12-31T23:59:59.999000", None,
                      "1970-01-01T00:00:00"], "timestamp[ms]"),
    "timestamp_ns": ("TIMESTAMP_NS", ["'2024-02-29 13:45:00.123456789'",
                                      "'1969-12-31 23:59:59.999999999'", "NULL",
                                      "'2262-04-11 23:47:16'"],
                     ["2024-02-29T13:45:00.123456", "1969-12-31T23:59:59.999999", None,
                      "2262-04-11T23:47:16"], "timestamp[ns]"),
    "timestamptz": ("TIMESTAMPTZ", ["'2024-02-29 13:45:00.123456+02'", "'1970-01-01 00:00:00+00'",
                                    "NULL", "'2024-07-01 12:00:00-07'"],
                    ["2024-02-29T11:45:00.123456+00:00", "1970-01-01T00:00:00+00:00", None,
                     "2024-07-01T19:00:00+00:00"], "timestamp[us, tz=UTC]"),
    "blob": ("BLOB", ["'\\x00\\xFFabc'", "''", "NULL", "'\\xFF'"], ["AP9hYmM=", "", None, "/w=="],
             "binary"),
    "uuid": ("UUID", ["'550e8400-e29b-41d4-a716-446655440000'",
                      "'ffffffff-ffff-ffff-ffff-ffffffffffff'", "NULL",
                      "'00000000-0000-0000-0000-000000000000'"],
             ["550e8400-e29b-41d4-a716-446655440000", "ffffffff-ffff-ffff-ffff-ffffffffffff", None,
              "00000000-0000-0000-0000-000000000000"], "extension<arrow.uuid>"),
    "integer_list": ("INTEGER[]", ["[1, NULL, 3]", "[]", "NULL", f"[{2**31 - 1}]"],
                     [[1, None, 3], [], None, [2**31 - 1]], "list<element: int32>"),
    "varchar_list_list": ("VARCHAR[][]", ["[['a'], []]", "[NULL]", "NULL", "[]"],
                          [[["a"], []], [None], None, []],
                          "list<element: list<element: string>>"),
    # No NULL array: DuckDB 2.0 writes one as Parquet that pyarrow cannot read ("Length spanned
    # by list offsets larger than values array"); DuckDB reads it back fine.
    "integer_array": ("INTEGER[2]", ["[1, 2]", "[NULL, -1]", "[7, 8]", "[0, 0]"],
                      [[1, 2], [None, -1], [7, 8], [0, 0]], "list<element: int32>"),
    "timestamp_ns_list": ("TIMESTAMP_NS[]", ["['2024-02-29 13:45:00.123456789']",
                                             "['1969-12-31 23:59:59.999999999']", "NULL", "[NULL]"],
                          [["2024-02-29T13:45:00.123456"], ["1969-12-31T23:59:59.999999"], None,
                           [None]], "list<element: timestamp[ns]>"),
    "map_varchar": ("MAP(VARCHAR, INTEGER)",
                    ["MAP {'a': 1, 'b': NULL}", "MAP {}", "NULL", "MAP {'z': -1}"],
                    [{"a": 1, "b": None}, {}, None, {"z": -1}],
                    "map<string, int32 ('map_varchar')>"),
    "map_integer": ("MAP(INTEGER, VARCHAR)",
                    ["MAP {1: 'a', 2: NULL}", "MAP {}", "NULL", "MAP {-5: 'x'}"],
                    [[[1, "a"], [2, None]], [], None, [[-5, "x"]]],
                    "map<int32, string ('map_integer')>"),
    "struct": ("STRUCT(id INTEGER, ts TIMESTAMPTZ, amount DECIMAL(9, 2), tags VARCHAR[], "
               "attrs MAP(VARCHAR, DATE))",
               ["{'id': 7, 'ts': '2024-02-29 13:45:00+00', 'amount': -1.5, 'tags': ['x'], "
                "'attrs': MAP {'d': DATE '2024-02-29'}}",
                "{'id': NULL, 'ts': NULL, 'amount': NULL, 'tags': NULL, 'attrs': NULL}", "NULL",
                "{'id': 0, 'ts': '1970-01-01 00:00:00+00', 'amount': 0, 'tags': [], "
                "'attrs': MAP {}}"],
               [{"id": 7, "ts": "2024-02-29T13:45:00+00:00", "amount": "-1.50", "tags": ["x"],
                 "attrs": {"d": "2024-02-29"}},
                {"id": None, "ts": None, "amount": None, "tags": None, "attrs": None}, None,
                {"id": 0, "ts": "1970-01-01T00:00:00+00:00", "amount": "0.00", "tags": [],
                 "attrs": {}}],
               "struct<id: int32, ts: timestamp[us, tz=UTC], amount: decimal128(9, 2), "
               "tags: list<element: string>, attrs: map<string, date32[day] ('attrs')>>"),
}  # fmt: skip


def duckdb_sql(columns: dict[str, tuple[str, list[str], list[Any], str]]) -> str:
    """One SELECT per row, each value cast to its column's type, in key order."""
    rows = [
        ", ".join(
            [f"'{key}' AS k"]
            + [f"CAST({sql[i]} AS {kind}) AS {name}" for name, (kind, sql, _, _) in columns.items()]
        )
        for i, key in enumerate(KEYS)
    ]
    return " UNION ALL ".join(f"SELECT {row}" for row in rows) + " ORDER BY k"


# --- publishing both, reading both --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    root: Path
    manifest: Manifest
    table: pa.Table  # what the builder held


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Published]:
    """Both paths' snapshots, each written once for the module."""
    tmp = tmp_path_factory.mktemp("column-types")
    table = memory_table()
    memory = write_snapshot(
        FileStore(tmp / "memory"), table, version=new_version(T0), key_column="k", created_at=T0
    )
    engine_table = DuckDBEngine({}).run(duckdb_sql(DUCKDB))
    duck = publish_table(FileStore(tmp / "duckdb"), engine_table, key_column="k", now=T0)
    return {
        "memory": Published(tmp / "memory", memory, table),
        "duckdb": Published(tmp / "duckdb", duck.manifest, engine_table),
    }


def answers(root: Path, version: str) -> dict[str, Any]:
    """Every key through ``get`` and all keys through ``get_many``, read as a reader reads."""
    index = KeyIndex(read_snapshot(FileStore(root), version).table, "k")
    found, missing = index.get_many(KEYS)
    return {"get": [index.get(key) for key in KEYS], "get_many": found, "missing": missing}


# The same reading, in a child Python that cannot import pandas (the Lambda has none).
WITHOUT_PANDAS = """
import json, sys
from loaders.readback import block_pandas
block_pandas()
from pathlib import Path
from loaders.index import KeyIndex
from loaders.snapshot import read_snapshot
from loaders.store import FileStore
keys = json.loads(sys.argv[1])
out = {}
for name, root, version in zip(*[iter(sys.argv[2:])] * 3, strict=True):
    index = KeyIndex(read_snapshot(FileStore(Path(root)), version).table, "k")
    found, missing = index.get_many(keys)
    out[name] = {"get": [index.get(k) for k in keys], "get_many": found, "missing": missing}
out["pandas_imported"] = "pandas" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def read_without_pandas(published: dict[str, Published]) -> dict[str, Any]:
    args = [str(a) for p in published.items() for a in (p[0], p[1].root, p[1].manifest.version)]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PANDAS, json.dumps(KEYS), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def read_with_pandas(published: dict[str, Published]) -> dict[str, Any]:
    return {name: answers(p.root, p.manifest.version) for name, p in published.items()}


@pytest.fixture(params=["with_pandas", "without_pandas"])
def read(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(f"read_{request.param}")


def column(read: dict[str, Any], path: str, name: str) -> list[Any]:
    return [row[name] for row in read[path]["get"]]


# --- every type, both paths ---------------------------------------------------------------


@pytest.mark.parametrize("name", MEMORY)
def test_in_memory_column_is_answered_exactly(read: dict[str, Any], name: str) -> None:
    assert column(read, "memory", name) == MEMORY[name][1]


@pytest.mark.parametrize("name", DUCKDB)
def test_duckdb_column_is_answered_exactly(read: dict[str, Any], name: str) -> None:
    assert column(read, "duckdb", name) == DUCKDB[name][2]


@pytest.mark.parametrize("name", MEMORY)
def test_in_memory_manifest_gives_the_type_a_reader_reads(
    published: dict[str, Published], name: str
) -> None:
    types = {c.name: c.type for c in published["memory"].manifest.columns}

    assert types[name] == MEMORY[name][2]


@pytest.mark.parametrize("name", DUCKDB)
def test_duckdb_manifest_gives_the_type_a_reader_reads(
    published: dict[str, Published], name: str
) -> None:
    types = {c.name: c.type for c in published["duckdb"].manifest.columns}

    assert types[name] == DUCKDB[name][3]


@pytest.mark.parametrize("path", ["memory", "duckdb"])
def test_batch_answers_equal_single_answers(read: dict[str, Any], path: str) -> None:
    assert read[path]["get_many"] == read[path]["get"]
    assert read[path]["missing"] == []


def test_answers_are_json_without_nan(read: dict[str, Any]) -> None:
    json.dumps({path: read[path]["get"] for path in ("memory", "duckdb")}, allow_nan=False)


def test_reader_without_pandas_never_imported_it(read_without_pandas: dict[str, Any]) -> None:
    assert read_without_pandas["pandas_imported"] is False


@pytest.mark.parametrize("path", ["memory", "duckdb"])
def test_manifest_counts_the_read_back_table_bytes(
    published: dict[str, Published], path: str
) -> None:
    manifest = published[path].manifest
    table = read_snapshot(FileStore(published[path].root), manifest.version).table

    assert manifest.table_bytes == table.nbytes


def test_duckdb_types_keep_their_types_through_the_snapshot(
    published: dict[str, Published],
) -> None:
    built = published["duckdb"]
    table = read_snapshot(FileStore(built.root), built.manifest.version).table

    assert table.schema.types == built.table.schema.types


def test_change_report_finds_no_change_between_a_duckdb_build_and_its_snapshot(
    published: dict[str, Published],
) -> None:
    built = published["duckdb"]
    table = read_snapshot(FileStore(built.root), built.manifest.version).table

    changes = diff(built.table, table, key_column="k", previous_version="v1")

    assert (changes.added, changes.removed, changes.changed, changes.retyped) == (0, 0, 0, [])


def test_change_report_names_only_the_columns_parquet_retypes(
    published: dict[str, Published],
) -> None:
    built = published["memory"]
    table = read_snapshot(FileStore(built.root), built.manifest.version).table

    changes = diff(built.table, table, key_column="k", previous_version="v1")

    # Lists and maps come back with other field names, but the same type: compared by value.
    assert changes.retyped == [
        "date64",
        "time32_s",
        *(f"timestamp_s_{tz}" for tz in ("naive", "UTC", "+05:30", "America/New_York")),
    ]


# --- types that cannot be served ----------------------------------------------------------

UNION = pa.UnionArray.from_sparse(
    pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]
)
INTERVALS = pa.array([pa.MonthDayNano([1, 2, 3]), None], pa.month_day_nano_interval())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (UNION, r"column 'bad' of type sparse_union<.*> cannot be served"),
        (INTERVALS, r"column 'bad' of type month_day_nano_interval cannot be served"),
        (pa.array([[pa.MonthDayNano([1, 2, 3])], None]),
         r"column 'bad' of type list<item: month_day_nano_interval> cannot be served"),
        (pa.array([0, 253_402_300_800], pa.timestamp("s")),
         r"read back as a reader would: column 'bad' of type timestamp\[ms\] cannot be served: "
         r"date value out of range"),
    ],
    ids=["union", "interval", "list-of-interval", "year-10000"],
)  # fmt: skip
def test_a_type_that_cannot_be_served_fails_the_build_and_writes_nothing(
    tmp_path: Path, values: pa.Array, message: str
) -> None:
    store = FileStore(tmp_path / "snapshots")
    table = pa.table({"k": ["a", "b"], "ok": [1, 2], "bad": values})

    with pytest.raises(SnapshotInvalidError, match=message):
        write_snapshot(store, table, version=new_version(T0), key_column="k", created_at=T0)

    assert not store.root.exists() or not any(store.root.rglob("*"))


def test_duckdb_interval_fails_the_build_and_writes_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "snapshots")

    with pytest.raises(SnapshotInvalidError, match=r"column 'iv'.*(?i:interval)"):
        table = DuckDBEngine({}).run("SELECT 'a' AS k, INTERVAL 1 DAY AS iv")
        publish_table(store, table, key_column="k", now=T0)

    assert not store.root.exists() or not any(store.root.rglob("*"))
