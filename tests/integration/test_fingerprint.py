"""A build whose source has not changed runs no query: ``loaders.fingerprint`` and ``build``.

Athena: a Glue table with partitions in moto (``mock_aws``), its data objects in moto's S3,
and :class:`~tests.integration.test_athena_engine.FakeUnload` in Athena's place. It writes
the UNLOAD output and records every query that starts, and moto counts them too. DuckDB:
local Parquet files. The snapshot root is a ``file://`` store whose clock is fixed, so every
build's version sorts after the last one.

Each fingerprint that cannot be taken must end in a query, never in a failed build or a
skipped change. The cases: the object bound, the time bound, a Glue error, a view, and a
clock in the SQL.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

import loaders.build
from loaders.build import Outcome, build, handler, make_engine
from loaders.engines import AthenaEngine, DuckDBEngine
from loaders.fingerprint import (
    Fingerprint,
    FingerprintBound,
    FingerprintUnavailableError,
    GlueSource,
    table_names,
)
from loaders.manifest import read_manifest, try_read_pointer
from loaders.settings import BuildConfigError, BuildSettings
from loaders.store import FileStore
from loaders.validate import Rules, parse_contract
from tests.conftest import BUCKET, REGION, T0, FakeClock, customers
from tests.integration.test_athena_engine import FakeUnload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from loaders.build import BuildResult
    from loaders.engines import QueryEngine

DATABASE = "customer_db"
TABLE = "customers"
WORKGROUP = "snapshot-builder"
SOURCE_BUCKET = "warehouse-test"
LOCATION = f"s3://{SOURCE_BUCKET}/tables/customers/"
SQL = "SELECT customer_id, account_id, segment, region, tier, updated_at FROM customers"
IDS = [f"C{i:09d}" for i in range(1, 31)]
PARTITIONS = 5
FILES_PER_PARTITION = 3
STORE_NOW = T0 + timedelta(days=1)
CONTRACT = parse_contract(
    "customer_id:string, account_id:string, segment:string, region:string, tier:string, "
    "updated_at:timestamp[us, tz=UTC]"
)


# --- the source: a partitioned Glue table over S3 objects ------------------------------------


class Warehouse:
    """The Glue table and its objects: what the fingerprint reads and tests change."""

    def __init__(self, glue: Any, s3: Any) -> None:
        self.glue = glue
        self.s3 = s3

    def create(self, partitions: int = PARTITIONS, files: int = FILES_PER_PARTITION) -> None:
        self.s3.create_bucket(Bucket=SOURCE_BUCKET)
        self.glue.create_database(DatabaseInput={"Name": DATABASE})
        self.glue.create_table(
            DatabaseName=DATABASE,
            TableInput={
                "Name": TABLE,
                "TableType": "EXTERNAL_TABLE",
                "StorageDescriptor": {
                    "Location": LOCATION,
                    "Columns": [{"Name": "customer_id", "Type": "string"}],
                },
                "PartitionKeys": [{"Name": "dt", "Type": "string"}],
            },
        )
        for day in range(1, partitions + 1):
            self.add_partition(f"2026-01-{day:02d}", files)

    def add_partition(self, dt: str, files: int = FILES_PER_PARTITION) -> None:
        location = f"{LOCATION}dt={dt}/"
        for part in range(files):
            self.put(f"dt={dt}/part-{part:05d}.parquet", f"{dt} {part}".encode())
        self.glue.create_partition(
            DatabaseName=DATABASE,
            TableName=TABLE,
            PartitionInput={"Values": [dt], "StorageDescriptor": {"Location": location}},
        )

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=SOURCE_BUCKET, Key=f"tables/customers/{key}", Body=body)


class Athena:
    """One moto world: source, fake UNLOAD, a root, and builds that count their queries."""

    def __init__(self, glue: Any, s3: Any, athena: Any, unload: FakeUnload, root: Path) -> None:
        self.glue = glue
        self.s3 = s3
        self.athena = athena
        self.unload = unload
        self.warehouse = Warehouse(glue, s3)
        self.store = FileStore(root, clock=lambda: STORE_NOW)
        self.builds = 0

    def engine(self, **glue_options: Any) -> AthenaEngine:
        source = GlueSource(self.glue, self.s3, database=DATABASE, **glue_options)
        clock = FakeClock()
        return AthenaEngine(
            self.athena,
            self.s3,
            workgroup=WORKGROUP,
            database=DATABASE,
            staging_uri=f"s3://{BUCKET}/staging",
            sleep=lambda seconds: clock.advance(seconds),
            clock=clock,
            glue_source=source,
        )

    def build(
        self,
        *,
        sql: str = SQL,
        force: bool = False,
        engine: QueryEngine | None = None,
        rules: Rules | None = None,
    ) -> BuildResult:
        """One build, stamped an hour after the last one."""
        self.builds += 1
        return build(
            engine or self.engine(),
            self.store,
            sql,
            rules or Rules("customer_id"),
            now=lambda: T0 + timedelta(hours=self.builds),
            progress=lambda _message: None,
            force=force,
        )

    @property
    def queries(self) -> int:
        """Queries Athena started, as moto counts them."""
        return len(self.athena.list_query_executions()["QueryExecutionIds"])

    def files(self) -> dict[str, bytes]:
        """Every file of the snapshot root and its bytes: what an unchanged build must keep.
        Not the build records under ``builds/``: every run writes one, an unchanged one too."""
        root = self.store.root
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] != "builds"
        }


@pytest.fixture
def aws(mock_s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Athena:
    """moto in-process (``mock_aws`` from ``mock_s3``): Glue, S3 and Athena."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_ATHENA", raising=False)
    # One attempt: a 500 injected below must not make botocore back off (and sleep).
    glue = boto3.client(
        "glue", region_name=REGION, config=Config(retries={"total_max_attempts": 1})
    )
    athena = boto3.client("athena", region_name=REGION)
    athena.create_work_group(Name=WORKGROUP)
    rows = tmp_path / "rows.parquet"
    pq.write_table(customers(IDS), rows)
    unload = FakeUnload(mock_s3, {"customers": rows})
    unload.attach(athena)
    world = Athena(glue, mock_s3, athena, unload, tmp_path / "snapshots")
    world.warehouse.create()
    return world


@pytest.fixture
def built(aws: Athena) -> BuildResult:
    """A first build, announced: one query."""
    result = aws.build()
    assert (result.outcome, aws.queries) == (Outcome.ANNOUNCED, 1)
    return result


def glue_fails(glue: Any, code: str, status: int) -> None:
    """Every Glue call answers ``code``; botocore parses it as it would AWS's answer."""
    body = json.dumps({"__type": code, "message": "from the test"}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.1", "Content-Length": str(len(body))}

    def answer(request: Any, **_: Any) -> AWSResponse:
        return AWSResponse(request.url, status, headers, _Raw(body))

    glue.meta.events.register_first("before-send.glue", answer)


class _Raw:
    """The raw stream an AWSResponse reads its body from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


# --- Athena: unchanged --------------------------------------------------------------------------


def test_unchanged_source_starts_no_query_and_writes_nothing(
    aws: Athena, built: BuildResult
) -> None:
    before = aws.files()

    result = aws.build()

    assert result.outcome is Outcome.UNCHANGED
    assert (aws.queries, len(aws.unload.started)) == (1, 1)
    assert aws.files() == before


def test_unchanged_result_names_the_current_snapshot(aws: Athena, built: BuildResult) -> None:
    result = aws.build()

    summary = result.to_dict()
    assert result.manifest == built.manifest
    assert (summary["outcome"], summary["version"], summary["current"]) == (
        "unchanged",
        built.manifest.version,
        built.manifest.version,
    )
    assert summary["announced"] is False
    assert (summary["changes"]["added"], summary["changes"]["removed"]) == (0, 0)
    assert "query" not in summary["seconds"]


def test_manifest_records_the_fingerprint_and_a_summary(built: BuildResult) -> None:
    recorded = built.manifest.source["fingerprint"]

    assert len(recorded["sha256"]) == 64
    assert recorded | {"sha256": "-"} == {
        "sha256": "-",
        "kind": "glue",
        "tables": [f"{DATABASE}.{TABLE}"],
        "objects": PARTITIONS * FILES_PER_PARTITION,
        "partitions": PARTITIONS,
    }


# --- Athena: what counts as a change --------------------------------------------------------


def test_rewritten_object_builds_again(aws: Athena, built: BuildResult) -> None:
    aws.warehouse.put("dt=2026-01-02/part-00001.parquet", b"rewritten: a new ETag and size")

    result = aws.build()

    assert result.outcome is Outcome.ANNOUNCED
    assert aws.queries == 2
    assert try_read_pointer(aws.store).version == result.manifest.version != built.manifest.version


def test_added_object_builds_again(aws: Athena, built: BuildResult) -> None:
    aws.warehouse.put("dt=2026-01-03/part-00099.parquet", b"late file")

    assert aws.build().outcome is Outcome.ANNOUNCED
    assert aws.queries == 2


def test_added_partition_builds_again(aws: Athena, built: BuildResult) -> None:
    aws.warehouse.add_partition("2026-02-01")

    result = aws.build()

    assert result.outcome is Outcome.ANNOUNCED
    assert result.manifest.source["fingerprint"]["partitions"] == PARTITIONS + 1


def test_partition_registered_over_existing_files_builds_again(
    aws: Athena, built: BuildResult
) -> None:
    # The files were there already (unread by Athena); registering them changes the result.
    aws.glue.create_partition(
        DatabaseName=DATABASE,
        TableName=TABLE,
        PartitionInput={
            "Values": ["2026-01-01-copy"],
            "StorageDescriptor": {"Location": f"{LOCATION}dt=2026-01-01/"},
        },
    )

    assert aws.build().outcome is Outcome.ANNOUNCED


def test_table_update_builds_again(aws: Athena, built: BuildResult) -> None:
    table = aws.glue.get_table(DatabaseName=DATABASE, Name=TABLE)["Table"]
    columns = [*table["StorageDescriptor"]["Columns"], {"Name": "tier", "Type": "string"}]
    aws.glue.update_table(
        DatabaseName=DATABASE,
        TableInput={
            "Name": TABLE,
            "TableType": "EXTERNAL_TABLE",
            "StorageDescriptor": {"Location": LOCATION, "Columns": columns},
            "PartitionKeys": table["PartitionKeys"],
        },
    )

    assert aws.build().outcome is Outcome.ANNOUNCED


def test_changed_sql_builds_again(aws: Athena, built: BuildResult) -> None:
    result = aws.build(sql=f"{SQL} WHERE customer_id IS NOT NULL")

    assert result.outcome is Outcome.ANNOUNCED
    assert aws.queries == 2


def test_sql_comments_and_trailing_semicolon_are_not_a_change(
    aws: Athena, built: BuildResult
) -> None:
    assert aws.build(sql=f"-- nightly\n{SQL};").outcome is Outcome.UNCHANGED


@pytest.mark.parametrize(
    "rules",
    [Rules("account_id"), Rules("customer_id", CONTRACT)],
    ids=["key column", "contract"],
)
def test_changed_key_column_or_contract_builds_again(
    aws: Athena, built: BuildResult, rules: Rules
) -> None:
    result = aws.build(rules=rules)

    assert result.outcome is Outcome.ANNOUNCED
    assert aws.queries == 2


def test_source_tables_setting_watches_a_table_the_sql_does_not_show(
    aws: Athena,
) -> None:
    aws.glue.create_table(
        DatabaseName=DATABASE,
        TableInput={
            "Name": "regions",
            "StorageDescriptor": {"Location": f"s3://{SOURCE_BUCKET}/tables/regions/"},
        },
    )
    watched = ("customers", f"{DATABASE}.regions")
    aws.build(engine=aws.engine(tables=watched))
    aws.s3.put_object(Bucket=SOURCE_BUCKET, Key="tables/regions/part-0.csv", Body=b"eu")

    result = aws.build(engine=aws.engine(tables=watched))

    assert result.outcome is Outcome.ANNOUNCED
    assert result.manifest.source["fingerprint"]["tables"] == [
        f"{DATABASE}.customers",
        f"{DATABASE}.regions",
    ]


# --- Athena: --force, and every way a fingerprint falls back to the query ------------------


def test_force_queries_though_the_source_is_unchanged(aws: Athena, built: BuildResult) -> None:
    forced = aws.build(force=True)

    assert forced.outcome is Outcome.ANNOUNCED
    assert aws.queries == 2
    # The forced build records its fingerprint: the next scheduled one is unchanged again.
    assert forced.manifest.source["fingerprint"] == built.manifest.source["fingerprint"]
    assert aws.build().outcome is Outcome.UNCHANGED


def fallback_builds(
    aws: Athena, caplog: pytest.LogCaptureFixture, engine: Callable[[], QueryEngine]
) -> list[str]:
    """Build twice on an unchanged source; both must query. Return the fallback warnings."""
    with caplog.at_level(logging.WARNING, logger="loaders.build"):
        first, second = aws.build(engine=engine()), aws.build(engine=engine())
    assert (first.outcome, second.outcome) == (Outcome.ANNOUNCED, Outcome.ANNOUNCED)
    assert aws.queries == 2
    assert "fingerprint" not in second.manifest.source
    return [r.getMessage() for r in caplog.records if "no source fingerprint" in r.getMessage()]


def test_source_over_the_object_bound_builds_and_says_why(
    aws: Athena, caplog: pytest.LogCaptureFixture
) -> None:
    bound = FingerprintBound(max_objects=PARTITIONS * FILES_PER_PARTITION - 1)

    warnings = fallback_builds(aws, caplog, lambda: aws.engine(bound=bound))

    assert len(warnings) == 2
    assert f"more than {bound.max_objects} S3 objects (FINGERPRINT_MAX_OBJECTS)" in warnings[0]


def test_too_many_partitions_builds_and_says_why(
    aws: Athena, caplog: pytest.LogCaptureFixture
) -> None:
    bound = FingerprintBound(max_objects=PARTITIONS - 1)

    warnings = fallback_builds(aws, caplog, lambda: aws.engine(bound=bound))

    assert "Glue partitions (FINGERPRINT_MAX_OBJECTS)" in warnings[0]


def test_listing_past_the_time_bound_builds_and_says_why(
    aws: Athena, caplog: pytest.LogCaptureFixture
) -> None:
    def slow_clock() -> Callable[[], float]:
        clock = FakeClock()

        def tick() -> float:  # each page of the listing takes 2 s
            clock.advance(2.0)
            return clock()

        return tick

    bound = FingerprintBound(max_seconds=3.0)

    warnings = fallback_builds(aws, caplog, lambda: aws.engine(bound=bound, clock=slow_clock()))

    assert "took over 3s (FINGERPRINT_MAX_SECONDS)" in warnings[0]


@pytest.mark.parametrize(
    ("code", "status"),
    [("AccessDeniedException", 400), ("InternalServiceException", 500)],
)
def test_glue_error_builds_and_names_the_error(
    aws: Athena, caplog: pytest.LogCaptureFixture, code: str, status: int
) -> None:
    glue_fails(aws.glue, code, status)

    warnings = fallback_builds(aws, caplog, aws.engine)

    assert f"AWS answered {code}" in warnings[0]


def test_table_missing_from_glue_builds(aws: Athena, caplog: pytest.LogCaptureFixture) -> None:
    warnings = fallback_builds(aws, caplog, lambda: aws.engine(tables=("no_such_table",)))

    assert "EntityNotFoundException" in warnings[0]


def test_view_builds_because_its_tables_are_unknown(
    aws: Athena, caplog: pytest.LogCaptureFixture
) -> None:
    aws.glue.create_table(
        DatabaseName=DATABASE,
        TableInput={
            "Name": "customers_v",
            "TableType": "VIRTUAL_VIEW",
            "ViewOriginalText": "/* Presto View */",
        },
    )

    warnings = fallback_builds(aws, caplog, lambda: aws.engine(tables=("customers_v",)))

    assert "is a view" in warnings[0]


def test_sql_reading_the_clock_builds_every_time(
    aws: Athena, caplog: pytest.LogCaptureFixture
) -> None:
    sql = f"{SQL} WHERE updated_at < current_timestamp"
    with caplog.at_level(logging.WARNING, logger="loaders.build"):
        results = [aws.build(sql=sql), aws.build(sql=sql)]

    assert [r.outcome for r in results] == [Outcome.ANNOUNCED, Outcome.ANNOUNCED]
    assert "uses current_timestamp" in caplog.text


def test_engine_without_a_glue_source_builds(aws: Athena) -> None:
    def bare() -> AthenaEngine:
        engine = aws.engine()
        engine.glue_source = None
        return engine

    assert [aws.build(engine=bare()).outcome for _ in range(2)] == [Outcome.ANNOUNCED] * 2


# --- the builder's Glue and listing clients ------------------------------------------------


def test_glue_and_listing_clients_are_bounded_by_the_fingerprint_settings(aws_env: None) -> None:
    settings = BuildSettings.from_env(
        {
            "SNAPSHOT_URI": f"s3://{BUCKET}/root",
            "QUERY_SQL": SQL,
            "ENGINE": "athena",
            "ATHENA_STAGING_URI": f"s3://{BUCKET}/staging",
            "ATHENA_DATABASE": DATABASE,
            "SOURCE_TABLES": "customers,other_db.regions",
            "FINGERPRINT_MAX_OBJECTS": "500",
            "FINGERPRINT_MAX_SECONDS": "2",
        }
    )

    engine = make_engine(settings)

    assert isinstance(engine, AthenaEngine) and engine.glue_source is not None
    source = engine.glue_source
    assert (source.database, source.tables) == (DATABASE, ("customers", "other_db.regions"))
    assert source.bound == FingerprintBound(max_objects=500, max_seconds=2.0)
    for client in (source.glue, source.s3):
        config = client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (2.0, 2.0)
        assert config.retries == {"mode": "standard", "total_max_attempts": 3}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SOURCE_TABLES", "customers;drop"),
        ("FINGERPRINT_MAX_OBJECTS", "0"),
        ("FINGERPRINT_MAX_SECONDS", "soon"),
    ],
)
def test_bad_fingerprint_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(BuildConfigError, match=name):
        BuildSettings.from_env({"SNAPSHOT_URI": "file:///tmp/x", "QUERY_SQL": SQL, name: value})


# --- table names from the SQL ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        (SQL, ("customers",)),
        ('SELECT * FROM db.a x JOIN b ON x.k = b.k LEFT JOIN "AwsDataCatalog"."db".c y ON 1=1',
         ("awsdatacatalog.db.c", "b", "db.a")),
        ("SELECT * FROM a, b WHERE a.k = b.k", ("a", "b")),
        ("WITH r AS (SELECT * FROM events) SELECT * FROM r JOIN Dim ON 1=1", ("dim", "events")),
        ("SELECT * FROM t WHERE k IN (SELECT k FROM allowed)", ("allowed", "t")),
        ("SELECT * FROM (SELECT * FROM inner_t) s CROSS JOIN UNNEST(s.tags) AS u(tag)",
         ("inner_t",)),
        ("SELECT EXTRACT(YEAR FROM ts), trim(BOTH FROM x) FROM t WHERE a IS DISTINCT FROM b",
         ("t",)),
        ("SELECT 'FROM x' AS s FROM t -- JOIN y", ("t",)),
        ("SELECT * FROM a UNION ALL SELECT * FROM b", ("a", "b")),
        ("SELECT 1", ()),
    ],
    ids=["shipped", "qualified", "comma", "cte", "subquery", "unnest", "not-a-source",
         "literal", "union", "none"],
)  # fmt: skip
def test_table_names_are_the_sources_after_from_and_join(sql: str, names: tuple[str, ...]) -> None:
    assert table_names(sql) == names


CROSS_CHECKED = [
    (Path(__file__).parents[2] / "sql" / "customer_mapping.sql").read_text(),
    "SELECT * FROM data d, other o WHERE d.k = o.k",
    "SELECT * FROM events AS e JOIN source s ON e.k = s.k LEFT JOIN result r ON r.k = e.k",
    "SELECT * FROM a, b x, c WHERE a.k IN (SELECT k FROM location)",
    "WITH r AS (SELECT * FROM raw.events) SELECT * FROM r JOIN Customers c ON 1 = 1",
    "WITH a AS (SELECT * FROM x), b AS (SELECT * FROM a JOIN y ON 1 = 1) SELECT * FROM b, z",
    "SELECT (SELECT max(v) FROM m WHERE m.k = t.k) AS v FROM t",
    "SELECT * FROM t1 FULL OUTER JOIN t2 ON t1.k = t2.k RIGHT JOIN t3 ON t3.k = t2.k",
    "SELECT k FROM a EXCEPT SELECT k FROM b INTERSECT SELECT k FROM c",
    "SELECT * FROM (SELECT * FROM (SELECT * FROM deep) d1) d2",
    "SELECT CAST(x AS VARCHAR), substring(s FROM 2) FROM db.t WHERE a IS NOT DISTINCT FROM b",
    "SELECT count(*) FILTER (WHERE x > 1) OVER (PARTITION BY k ORDER BY ts) FROM w",
]


@pytest.mark.parametrize("sql", CROSS_CHECKED)
def test_table_names_agree_with_duckdbs_parser(sql: str) -> None:
    # DuckDB's own parser, as an oracle: it drops CTE names, and keeps db in db.t only when
    # asked for qualified names, which then carry aliases; compare the last parts.
    expected = {name.lower() for name in duckdb.get_table_names(sql)}

    assert {name.split(".")[-1] for name in table_names(sql)} == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_parquet('/data/x.parquet')",
        "SELECT * FROM '/data/x.csv'",
        "SELECT * FROM (a JOIN b ON a.k = b.k)",
        "SELECT * FROM t CROSS JOIN LATERAL (SELECT 1)",
    ],
    ids=["table function", "file path", "parenthesised join", "lateral"],
)
def test_source_that_is_not_a_table_name_cannot_be_fingerprinted(sql: str) -> None:
    with pytest.raises(FingerprintUnavailableError):
        table_names(sql)


# --- DuckDB: files ----------------------------------------------------------------------------


@pytest.fixture
def duck_root(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "snapshots", clock=lambda: STORE_NOW)


@dataclass
class CountingDuckDB:
    """A DuckDB engine that counts the queries it runs; it fingerprints as DuckDB does."""

    inner: DuckDBEngine
    runs: int = 0
    name: str = "duckdb"

    def run(self, sql: str, *, progress: Callable[[str], None] | None = None) -> pa.Table:
        self.runs += 1
        return self.inner.run(sql, progress=progress)

    def fingerprint(self, sql: str) -> Fingerprint:
        return self.inner.fingerprint(sql)


class DuckBuilds:
    """DuckDB builds over the same tables, stamped an hour apart, counting their queries."""

    def __init__(self, store: FileStore, tables: dict[str, Path]) -> None:
        self.store = store
        self.engine = CountingDuckDB(DuckDBEngine(tables))
        self.builds = 0

    @property
    def queries(self) -> int:
        return self.engine.runs

    def build(self, sql: str = SQL, *, force: bool = False) -> BuildResult:
        self.builds += 1
        return build(
            self.engine,
            self.store,
            sql,
            Rules("customer_id"),
            now=lambda: T0 + timedelta(hours=self.builds),
            progress=lambda _message: None,
            force=force,
        )


@pytest.fixture
def source_file(tmp_path: Path) -> Path:
    path = tmp_path / "customers.parquet"
    pq.write_table(customers(IDS), path)
    return path


@pytest.fixture
def duck(duck_root: FileStore, source_file: Path) -> DuckBuilds:
    builds = DuckBuilds(duck_root, {"customers": source_file})
    assert builds.build().outcome is Outcome.ANNOUNCED
    return builds


def test_duckdb_unchanged_file_runs_no_query(duck: DuckBuilds) -> None:
    result = duck.build()

    assert result.outcome is Outcome.UNCHANGED
    assert duck.queries == 1
    assert result.manifest.source["fingerprint"]["kind"] == "files"


def test_duckdb_touched_file_builds_again(duck: DuckBuilds, source_file: Path) -> None:
    stat = source_file.stat()
    os.utime(source_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    assert duck.build().outcome is Outcome.ANNOUNCED
    assert duck.queries == 2


def test_duckdb_rewritten_file_builds_again(duck: DuckBuilds, source_file: Path) -> None:
    stat = source_file.stat()
    pq.write_table(customers([*IDS, "C000000099"]), source_file)
    os.utime(source_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # only the size tells

    result = duck.build()

    assert result.outcome is Outcome.ANNOUNCED
    assert result.manifest.row_count == len(IDS) + 1


def test_duckdb_file_added_to_a_directory_builds_again(
    duck_root: FileStore, tmp_path: Path
) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(customers(IDS[:28]), folder / "a.parquet")
    builds = DuckBuilds(duck_root, {"customers": folder})
    builds.build()
    assert builds.build().outcome is Outcome.UNCHANGED

    pq.write_table(customers(IDS[28:]), folder / "b.parquet")  # +2 rows: within 10 %

    assert builds.build().outcome is Outcome.ANNOUNCED
    assert builds.queries == 2


def test_duckdb_sql_reading_a_file_directly_builds_every_time(
    duck_root: FileStore, source_file: Path
) -> None:
    builds = DuckBuilds(duck_root, {})
    sql = f"SELECT * FROM read_parquet('{source_file}')"

    assert [builds.build(sql).outcome for _ in range(2)] == [Outcome.ANNOUNCED] * 2


def test_duckdb_force_builds_though_unchanged(duck: DuckBuilds) -> None:
    assert duck.build(force=True).outcome is Outcome.ANNOUNCED
    assert duck.queries == 2


# --- the builder Lambda: {"force": true} ------------------------------------------------------


@pytest.fixture
def lambda_root(tmp_path: Path, source_file: Path, monkeypatch: pytest.MonkeyPatch) -> FileStore:
    store = FileStore(tmp_path / "lambda-root")
    for name in ("QUERY_FILE", "CONTRACT_COLUMNS", "MIN_ROWS", "MAX_ROW_CHANGE", "KEY_COLUMN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SNAPSHOT_URI", store.uri)
    monkeypatch.setenv("ENGINE", "duckdb")
    monkeypatch.setenv(
        "QUERY_SQL", "SELECT 'C000000002' AS customer_id UNION ALL SELECT 'C000000001'"
    )
    # Powertools would stop loaders' records from reaching caplog for the rest of the session.
    monkeypatch.setattr(loaders.build, "_structured_logging", lambda: None)
    return store


def test_handler_returns_and_logs_unchanged_and_force_rebuilds(
    lambda_root: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="loaders.build"):
        first = handler({}, None)
        again = handler({}, None)
        forced = handler({"force": True}, None)

    lines = [r for r in caplog.records if r.getMessage().startswith("build ")]
    assert [line.build["outcome"] for line in lines] == ["announced", "unchanged", "announced"]
    assert (again["outcome"], again["version"], again["current"]) == (
        "unchanged",
        first["version"],
        first["version"],
    )
    assert lines[1].levelno == logging.INFO
    assert lines[1].getMessage() == (
        f"build unchanged: {first['version']}; CURRENT names {first['version']}"
    )
    assert forced["outcome"] == "announced"
    assert forced["version"] != first["version"]
    assert read_manifest(lambda_root, forced["version"]).source["fingerprint"]["kind"] == "files"


def test_sql_past_sqlparse_limits_is_unavailable_not_an_error() -> None:
    huge = "SELECT " + ", ".join(f"c{i}" for i in range(12_000)) + " FROM customers"

    with pytest.raises(FingerprintUnavailableError, match="Maximum number of tokens"):
        DuckDBEngine({"customers": "customers.parquet"}).fingerprint(huge)
