"""``loaders.build.build`` with DuckDB over local Parquet/CSV files, publishing to every store.

A rejected or failed build must leave the root as it was: ``CURRENT`` keeps its bytes and no
snapshot directory appears. Store proxies record the write order, crash between the data and
the pointer, and run a second builder in the middle of the first one's announce.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from loaders.build import LOG_LEVELS, BuildResult, Outcome, build, report_rejection
from loaders.engines import DuckDBEngine
from loaders.errors import ObjectNotFoundError, QueryFailedError, SnapshotInvalidError, StoreError
from loaders.manifest import (
    CHANGES_NAME,
    MANIFEST_NAME,
    POINTER_KEY,
    SNAPSHOTS_PREFIX,
    snapshot_key,
    try_read_pointer,
)
from loaders.publish import publish_table
from loaders.snapshot import MAX_EXAMPLES, SnapshotReader, read_snapshot
from loaders.store import FileStore, S3Store
from loaders.validate import KEY_FORMAT, Rules, diff, parse_contract, validate
from service.cache import SnapshotCache
from tests.conftest import T0, FakeClock, customers

if TYPE_CHECKING:
    from collections.abc import Callable

    from loaders.store import ClockedStore, ObjectStore, StoredObject

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SQL = (ROOT / "sql" / "customer_mapping.sql").read_text()
SQL = "SELECT * FROM customers"
IDS = [f"C{i:09d}" for i in range(1, 41)]  # 40 rows: a 10 % move is 4 rows
CONTRACT = parse_contract(
    "customer_id:string, account_id:string, segment:string, region:string, tier:string, "
    "updated_at:timestamp[us, tz=UTC]"
)
T1 = T0 + timedelta(hours=1)
T2 = T0 + timedelta(hours=2)
# The stores' clock in these tests, whatever the date: after every build's stamp.
STORE_NOW = T2 + timedelta(hours=2)


# --- sources, builds and the state of a root -------------------------------------------------


@dataclass
class Sources:
    """Writes source tables as files in a temporary directory, one new file per table."""

    directory: Path
    count: int = 0

    def parquet(self, table: pa.Table) -> Path:
        self.count += 1
        path = self.directory / f"source-{self.count}.parquet"
        pq.write_table(table, path)
        return path

    def csv(self, table: pa.Table) -> Path:
        self.count += 1
        path = self.directory / f"source-{self.count}.csv"
        pcsv.write_csv(table, path)
        return path


@pytest.fixture
def any_store(any_store: ObjectStore) -> ClockedStore:
    """conftest's stores with their clock at ``STORE_NOW``: the file store's clock reads it,
    and every S3 answer carries it as its ``Date`` (moto's in-process answers have none)."""
    if isinstance(any_store, FileStore):
        return FileStore(any_store.root, clock=lambda: STORE_NOW)
    assert isinstance(any_store, S3Store)

    def dated(parsed: dict[str, Any], **_: Any) -> None:
        headers = parsed.setdefault("ResponseMetadata", {}).setdefault("HTTPHeaders", {})
        headers["date"] = format_datetime(STORE_NOW, usegmt=True)

    any_store.client.meta.events.register("after-call.s3", dated)
    return any_store


@pytest.fixture
def sources(tmp_path: Path) -> Sources:
    directory = tmp_path / "sources"
    directory.mkdir()
    return Sources(directory)


def ticks(*moments: datetime) -> Callable[[], datetime]:
    """A builder clock that reads ``moments`` in turn (the query's start, then the publish),
    and keeps reading the last one."""
    remaining = list(moments)

    def now() -> datetime:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return now


def run_build(
    store: ClockedStore,
    source: Path,
    *,
    now: datetime | Callable[[], datetime] = T0,
    rules: Rules | None = None,
    sql: str = SQL,
) -> BuildResult:
    return build(
        DuckDBEngine({"customers": source}),
        store,
        sql,
        rules or Rules(key_column="customer_id"),
        now=now if callable(now) else ticks(now),
        progress=lambda _message: None,
    )


def root_state(store: ObjectStore) -> tuple[bytes | None, list[str]]:
    """The pointer's bytes and the snapshot directories: what a rejected build must not touch."""
    pointer = try_read_pointer(store)
    body = store.read(POINTER_KEY) if pointer is not None else None
    return body, store.list_prefixes(SNAPSHOTS_PREFIX)


def pointer_version(store: ObjectStore) -> str | None:
    pointer = try_read_pointer(store)
    return None if pointer is None else pointer.version


def with_keys(table: pa.Table, keys: list[str | None]) -> pa.Table:
    """``table`` with its key column replaced (same length, order as given)."""
    return table.set_column(0, "customer_id", pa.array(keys, pa.string()))


@pytest.fixture
def v1(any_store: ObjectStore, sources: Sources) -> str:
    """A first good build of 40 customers, announced at T0."""
    return run_build(any_store, sources.parquet(customers(IDS))).manifest.version


def rejected_build(
    store: ObjectStore, source: Path, rules: Rules | None = None
) -> SnapshotInvalidError:
    """Run a build that must be rejected; check it left the root untouched."""
    before = root_state(store)
    with pytest.raises(SnapshotInvalidError) as rejected:
        run_build(store, source, now=T1, rules=rules)
    assert root_state(store) == before
    return rejected.value


def the_problem(error: SnapshotInvalidError, *, starting: str = "", containing: str = "") -> str:
    matches = [p for p in error.problems if p.startswith(starting) and containing in p]
    assert len(matches) == 1, error.problems
    return matches[0]


# --- the happy path --------------------------------------------------------------------------


def test_build_publishes_and_announces_the_query_result(
    any_store: ObjectStore, sources: Sources
) -> None:
    table = customers(IDS)
    shuffled = table.take(list(reversed(range(table.num_rows))))

    result = run_build(any_store, sources.parquet(shuffled), sql=SHIPPED_SQL)

    assert (result.announced, result.current) == (True, result.manifest.version)
    assert pointer_version(any_store) == result.manifest.version
    assert read_snapshot(any_store, result.manifest.version).table.to_pylist() == table.to_pylist()


def test_csv_source_builds_the_same_rows_as_parquet(
    any_store: ObjectStore, sources: Sources
) -> None:
    table = customers(IDS)

    result = run_build(any_store, sources.csv(table), rules=Rules("customer_id", CONTRACT))

    assert read_snapshot(any_store, result.manifest.version).table.to_pylist() == table.to_pylist()


def test_first_build_reports_every_row_as_added(any_store: ObjectStore, v1: str) -> None:
    changes = json.loads(any_store.read(snapshot_key(v1, CHANGES_NAME)))

    assert (changes["previous_version"], changes["added"], changes["removed"]) == (None, 40, 0)


def test_changes_json_counts_rows_added_removed_and_changed(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    old = customers(IDS)
    rows = [r for r in old.to_pylist() if r["customer_id"] not in ("C000000001", "C000000002")]
    rows += customers(["C000000041", "C000000042", "C000000043"]).to_pylist()
    for row in rows:
        if row["customer_id"] == "C000000010":
            row["tier"] = "platinum"
        if row["customer_id"] == "C000000020":
            row["account_id"] = "A9999999999"
    source = sources.parquet(pa.Table.from_pylist(rows, schema=old.schema))

    version = run_build(any_store, source, now=T1).manifest.version

    changes = json.loads(any_store.read(snapshot_key(version, CHANGES_NAME)))
    assert changes == {
        "previous_version": v1,
        "added": 3,
        "removed": 2,
        "changed": 2,
        "type_changed": [],
        "examples": {
            "added": ["C000000041", "C000000042", "C000000043"],
            "removed": ["C000000001", "C000000002"],
            "changed": ["C000000010", "C000000020"],
        },
    }


def test_build_result_carries_the_same_changes_as_changes_json(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    result = run_build(any_store, sources.parquet(customers([*IDS, "C000000041"])), now=T1)

    stored = json.loads(any_store.read(snapshot_key(result.manifest.version, CHANGES_NAME)))
    assert result.changes.to_dict() == stored


# --- schema contract -------------------------------------------------------------------------


def test_missing_contract_column_is_rejected(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    source = sources.parquet(customers(IDS).drop_columns(["tier"]))

    error = rejected_build(any_store, source, Rules("customer_id", CONTRACT))

    assert the_problem(error, starting="missing columns") == "missing columns: tier"


def test_integer_column_where_the_contract_says_string_is_rejected(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    table = customers(IDS)
    numbers = pa.array(range(table.num_rows), pa.int64())
    source = sources.parquet(table.set_column(1, "account_id", numbers))

    error = rejected_build(any_store, source, Rules("customer_id", CONTRACT))

    assert the_problem(error, starting="column account_id").startswith(
        "column account_id: type int64, expected string"
    )


def test_extra_column_is_rejected(any_store: ObjectStore, sources: Sources, v1: str) -> None:
    table = customers(IDS)
    source = sources.parquet(table.append_column("email", pa.array(["x@example.com"] * 40)))

    error = rejected_build(any_store, source, Rules("customer_id", CONTRACT))

    assert the_problem(error, starting="unexpected columns") == "unexpected columns: email"


def test_previous_snapshot_columns_are_the_contract_when_none_is_configured(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    table = customers(IDS)
    source = sources.parquet(table.append_column("email", pa.array(["x@example.com"] * 40)))

    error = rejected_build(any_store, source)

    assert the_problem(error, starting="unexpected columns") == "unexpected columns: email"


def test_lossless_timestamp_respelling_is_accepted(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    table = customers(IDS)
    naive_ns = table.column("updated_at").cast(pa.timestamp("us")).cast(pa.timestamp("ns"))
    source = sources.parquet(table.set_column(5, "updated_at", naive_ns))

    result = run_build(any_store, source, now=T1, rules=Rules("customer_id", CONTRACT))

    assert pointer_version(any_store) == result.manifest.version
    assert {c.name: c.type for c in result.manifest.columns}["updated_at"] == (
        "timestamp[us, tz=UTC]"
    )


def test_lossy_timestamp_respelling_is_rejected(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    table = customers(IDS)
    nanos = pa.array([1_704_101_400_000_000_001 + i for i in range(40)], pa.timestamp("ns"))
    source = sources.parquet(table.set_column(5, "updated_at", nanos))

    error = rejected_build(any_store, source, Rules("customer_id", CONTRACT))

    assert the_problem(error, starting="column updated_at")


# --- keys ------------------------------------------------------------------------------------


def test_null_keys_are_rejected(any_store: ObjectStore, sources: Sources, v1: str) -> None:
    keys: list[str | None] = [*IDS[:-2], None, None]

    error = rejected_build(any_store, sources.parquet(with_keys(customers(IDS), keys)))

    assert the_problem(error, containing="null keys") == "2 null keys"


def test_empty_keys_are_rejected(any_store: ObjectStore, sources: Sources, v1: str) -> None:
    keys: list[str | None] = ["", *IDS[1:]]

    error = rejected_build(any_store, sources.parquet(with_keys(customers(IDS), keys)))

    assert the_problem(error, containing="empty keys") == "1 empty keys"


def test_duplicate_keys_are_rejected(any_store: ObjectStore, sources: Sources, v1: str) -> None:
    keys: list[str | None] = [*IDS[:-1], IDS[0]]

    error = rejected_build(any_store, sources.parquet(with_keys(customers(IDS), keys)))

    assert the_problem(error, containing="duplicate") == "1 duplicate keys, e.g. 'C000000001'"


BAD_KEYS = [
    *(f"bad key {i:02d}" for i in range(20)),
    "C" * 65,
    "C000/0001",
    "C\u00c40001",
    "C0001\n",
    "C0001;",
]


def test_keys_outside_the_key_format_are_counted_with_at_most_20_examples(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    keys: list[str | None] = [*IDS[: 40 - len(BAD_KEYS)], *BAD_KEYS]

    error = rejected_build(any_store, sources.parquet(with_keys(customers(IDS), keys)))

    problem = the_problem(error, containing="outside")
    named = [key for key in BAD_KEYS if repr(key) in problem]
    assert problem.startswith(f"25 keys outside {KEY_FORMAT}, e.g. ")
    assert 0 < len(named) <= MAX_EXAMPLES


# --- row counts ------------------------------------------------------------------------------


def test_fewer_rows_than_min_rows_is_rejected(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    error = rejected_build(
        any_store, sources.parquet(customers(IDS)), Rules("customer_id", min_rows=50)
    )

    assert the_problem(error, containing="MIN_ROWS") == "40 rows, fewer than MIN_ROWS=50"


def test_row_count_moving_more_than_10_percent_is_rejected(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    error = rejected_build(any_store, sources.parquet(customers(IDS[:30])))

    assert the_problem(error, starting="row count moved 25.0% (40 -> 30)")


def test_row_count_moving_exactly_10_percent_is_accepted(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    more = [*IDS, *(f"C{i:09d}" for i in range(41, 45))]

    result = run_build(any_store, sources.parquet(customers(more)), now=T1)

    assert pointer_version(any_store) == result.manifest.version


def test_row_count_override_accepts_a_large_move(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    rules = Rules("customer_id", allow_row_change=True)

    result = run_build(any_store, sources.parquet(customers(IDS[:30])), now=T1, rules=rules)

    assert pointer_version(any_store) == result.manifest.version
    assert result.manifest.row_count == 30


# --- Athena-only SQL in DuckDB ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT customer_id, date_parse('2024-01-01', '%Y-%m-%d') AS day FROM customers",
            "Athena-only SQL, which DuckDB cannot run: date_parse: use strptime",
        ),
        (
            "SELECT * FROM customers WHERE regexp_like(customer_id, '^C')",
            "Athena-only SQL, which DuckDB cannot run: regexp_like: use regexp_matches",
        ),
        (
            "UNLOAD (SELECT * FROM customers) TO 's3://b/p/' WITH (format = 'PARQUET')",
            "must be a SELECT, not UNLOAD",
        ),
    ],
    ids=["date_parse", "regexp_like", "unload"],
)
def test_athena_only_sql_fails_in_duckdb_and_leaves_the_pointer(
    any_store: ObjectStore, sources: Sources, v1: str, sql: str, message: str
) -> None:
    before = root_state(any_store)

    with pytest.raises(QueryFailedError, match=message):
        run_build(any_store, sources.parquet(customers(IDS)), now=T1, sql=sql)

    assert root_state(any_store) == before


# --- write order, crashes and races, through store proxies -----------------------------------


@dataclass
class ProxyStore:
    """Forwards to ``inner``; logs each completed put and lets a test act around calls.

    Attributes
    ----------
    puts : list of (key, body)
        Completed puts, in order; a put that raised is not in it.
    before_put : callable, optional
        Called with the key before each put is forwarded; may raise to fake a crash.
    after_get : callable, optional
        Called with the key after each get returned.
    """

    inner: ObjectStore
    puts: list[tuple[str, bytes]] = field(default_factory=list)
    before_put: Callable[[str], None] | None = None
    after_get: Callable[[str], None] | None = None

    @property
    def uri(self) -> str:
        return self.inner.uri

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        obj = self.inner.get(key, if_none_match=if_none_match)
        if self.after_get is not None:
            self.after_get(key)
        return obj

    def put(self, key: str, body: bytes, **conditions: Any) -> str:
        if self.before_put is not None:
            self.before_put(key)
        etag = self.inner.put(key, body, **conditions)
        self.puts.append((key, body))
        return etag

    def list_prefixes(self, prefix: str) -> list[str]:
        return self.inner.list_prefixes(prefix)

    def now(self) -> datetime:
        return self.inner.now()

    def pointer_writes(self) -> list[str]:
        return [json.loads(body)["version"] for key, body in self.puts if key == POINTER_KEY]


def test_build_writes_data_then_manifest_then_pointer_then_changes(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    # Readers need data and manifest only; the change report waits for the version the
    # compare-and-swap replaced.
    proxy = ProxyStore(any_store)

    version = run_build(proxy, sources.parquet(customers(IDS)), now=T1).manifest.version

    keys = [key for key, _ in proxy.puts]
    assert keys[:6] == [
        f"snapshots/{version}/data.parquet",
        f"snapshots/{version}/blocks.bin",
        f"snapshots/{version}/blocks.arrow",
        f"snapshots/{version}/manifest.json",
        "CURRENT",
        f"snapshots/{version}/changes.json",
    ]
    # Then the build record, a report of the run that no reader needs.
    assert keys[6].startswith("builds/") and keys[6:] == [keys[6], "builds/latest.json"]


def test_crash_before_the_manifest_leaves_the_pointer_and_the_cache_on_the_old_version(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    cache = SnapshotCache(
        SnapshotReader(any_store),
        key_column="customer_id",
        ttl_seconds=0.0,
        max_staleness_seconds=86_400.0,
        clock=FakeClock(),
        wall_clock=FakeClock(T1.timestamp()),
    )
    assert cache.get().snapshot["version"] == v1

    def crash(key: str) -> None:
        if key.endswith(MANIFEST_NAME):
            raise StoreError("connection reset while writing the manifest")

    pointer_before = any_store.read(POINTER_KEY)
    with pytest.raises(StoreError, match="connection reset"):
        run_build(
            ProxyStore(any_store, before_put=crash),
            sources.parquet(customers([*IDS, "C000000041"])),
            now=T1,
        )

    assert any_store.read(POINTER_KEY) == pointer_before
    assert cache.refresh() is False
    serving = cache.get()
    assert serving.snapshot["version"] == v1
    assert serving.index.get("C000000041") is None


@dataclass
class SecondBuilder:
    """Runs a whole second build the first time the first builder re-reads the pointer
    after writing its manifest, i.e. right inside its announce."""

    store: ProxyStore
    source: Path
    now: datetime | Callable[[], datetime]
    first: ProxyStore | None = None
    result: BuildResult | None = None

    def __call__(self, key: str) -> None:
        if self.result is not None or key != POINTER_KEY or self.first is None:
            return
        if any(k.endswith(MANIFEST_NAME) for k, _ in self.first.puts):
            self.result = run_build(self.store, self.source, now=self.now)


FIRST_ROWS = [*IDS, "C000000041"]


def _race(
    store: ObjectStore,
    sources: Sources,
    *,
    first_at: datetime | Callable[[], datetime],
    second_at: datetime | Callable[[], datetime],
    second_rows: list[str] = IDS,
) -> tuple[BuildResult, BuildResult, list[str]]:
    """Build ``FIRST_ROWS`` at ``first_at``; between its pointer read and its write, build
    ``second_rows`` at ``second_at``."""
    second = SecondBuilder(ProxyStore(store), sources.parquet(customers(second_rows)), second_at)
    first = ProxyStore(store, after_get=second)
    second.first = first
    first_result = run_build(first, sources.parquet(customers(FIRST_ROWS)), now=first_at)
    assert second.result is not None
    # The second build ran to its end inside the first one's announce: its writes came first.
    return first_result, second.result, [*second.store.pointer_writes(), *first.pointer_writes()]


def test_newer_build_announcing_inside_an_older_ones_announce_keeps_the_pointer(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    older, newer, _ = _race(any_store, sources, first_at=T1, second_at=T2)

    assert pointer_version(any_store) == newer.manifest.version
    assert (older.outcome, older.current) == (Outcome.SUPERSEDED, newer.manifest.version)
    assert newer.outcome is Outcome.ANNOUNCED


def test_pointer_never_moves_back_when_builders_race(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    newer, older, writes = _race(any_store, sources, first_at=T2, second_at=T1)

    history = [v1, *writes]
    assert history == sorted(history)
    assert pointer_version(any_store) == newer.manifest.version
    assert older.manifest.version < newer.manifest.version


def test_build_stamps_its_version_when_the_query_starts(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    result = run_build(any_store, sources.parquet(customers(IDS)), now=ticks(T1, T2))

    summary = result.to_dict()
    assert result.manifest.version.startswith("20261123T130000Z-")
    assert (result.manifest.created_at, result.manifest.query_started_at) == (T1, T1)
    assert result.manifest.published_at == T2
    assert (summary["query_started_at"], summary["published_at"]) == (
        "2026-11-23T13:00:00Z",
        "2026-11-23T14:00:00Z",
    )


def test_slow_build_of_older_data_loses_to_a_later_query_that_published_first(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    # The slow build's query started at T1 and it publishes at T2 + 1 h; the fast one's query
    # started at T2. Stamped at publish time, the slow one would have won with older data.
    slow, fast, _ = _race(
        any_store, sources, first_at=ticks(T1, T2 + timedelta(hours=1)), second_at=T2
    )

    assert (slow.outcome, slow.current) == (Outcome.SUPERSEDED, fast.manifest.version)
    assert fast.outcome is Outcome.ANNOUNCED
    assert pointer_version(any_store) == fast.manifest.version
    assert slow.to_dict()["outcome"] == "superseded"


def test_build_whose_query_started_later_wins_though_it_publishes_last(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    late, early, _ = _race(any_store, sources, first_at=T2, second_at=T1)

    assert (late.outcome, early.outcome) == (Outcome.ANNOUNCED, Outcome.ANNOUNCED)
    assert pointer_version(any_store) == late.manifest.version


def test_changes_json_is_against_the_version_the_announce_replaced(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    # v1 holds IDS; the racing build announces IDS + C42 first; the winner holds IDS + C41.
    winner, meanwhile, _ = _race(
        any_store, sources, first_at=T2, second_at=T1, second_rows=[*IDS, "C000000042"]
    )

    stored = json.loads(any_store.read(snapshot_key(winner.manifest.version, CHANGES_NAME)))
    assert (stored["previous_version"], stored["added"], stored["removed"]) == (
        meanwhile.manifest.version,
        1,
        1,
    )
    assert stored["examples"]["removed"] == ["C000000042"]
    assert winner.changes.to_dict() == stored


def test_superseded_build_saves_no_change_report(
    any_store: ObjectStore, sources: Sources, v1: str
) -> None:
    older, _, _ = _race(any_store, sources, first_at=T1, second_at=T2)

    with pytest.raises(ObjectNotFoundError):
        any_store.read(snapshot_key(older.manifest.version, CHANGES_NAME))
    assert older.changes.previous_version == v1


# --- the builder's clock against the store's -------------------------------------------------


@dataclass
class CountingEngine:
    """A DuckDB engine that counts the queries it runs."""

    inner: DuckDBEngine
    runs: int = 0
    name: str = "duckdb"

    def run(self, sql: str, *, progress: Callable[[str], None] | None = None) -> pa.Table:
        self.runs += 1
        return self.inner.run(sql, progress=progress)


def test_build_stamped_too_far_ahead_of_the_store_clock_is_refused_before_the_query(
    any_store: ClockedStore, sources: Sources, v1: str
) -> None:
    engine = CountingEngine(DuckDBEngine({"customers": sources.parquet(customers(IDS))}))
    ahead = any_store.now() + timedelta(hours=1)
    before = root_state(any_store)

    with pytest.raises(SnapshotInvalidError, match="ahead of the store's clock"):
        build(engine, any_store, SQL, Rules("customer_id"), now=lambda: ahead)

    assert engine.runs == 0
    assert root_state(any_store) == before


def test_future_version_standing_in_current_does_not_block_a_correct_build(
    any_store: ClockedStore, sources: Sources, caplog: pytest.LogCaptureFixture
) -> None:
    store_now = any_store.now()
    # Announced by a builder whose clock ran an hour fast, before builders checked their clock.
    future = publish_table(
        any_store, customers(IDS), key_column="customer_id", now=store_now + timedelta(hours=1)
    ).manifest.version

    with caplog.at_level(logging.WARNING, logger="loaders.publish"):
        result = run_build(any_store, sources.parquet(customers(IDS)), now=store_now)

    assert result.outcome is Outcome.ANNOUNCED
    assert pointer_version(any_store) == result.manifest.version
    assert result.changes.previous_version == future
    assert f"replacing {future}" in caplog.text


def test_every_outcome_has_a_log_level() -> None:
    assert set(LOG_LEVELS) == set(Outcome)


def test_diff_counts_every_row_changed_when_a_column_changes_type() -> None:
    old = pa.table({"customer_id": ["C1", "C2", "C3"], "tier": pa.array([1, 2, 3], pa.int64())})
    new = pa.table({"customer_id": ["C2", "C3", "C4"], "tier": ["1", "2", "3"]})

    changes = diff(new, old, key_column="customer_id", previous_version="v1")

    assert (changes.added, changes.removed, changes.changed) == (1, 1, 2)
    assert changes.retyped == ["tier"]


def test_non_string_key_column_is_rejected_with_a_report_not_a_crash() -> None:
    table = pa.table({"customer_id": pa.array([1, 2], pa.int64()), "tier": ["a", "b"]})

    with pytest.raises(SnapshotInvalidError, match="must be a string"):
        validate(table, Rules("customer_id"), None)


def test_rejection_report_keeps_keys_out_of_the_error_and_in_the_report(
    any_store: ObjectStore,
) -> None:
    rejection = SnapshotInvalidError(
        "build rejected", ("2 duplicate keys, e.g. 'C000000007', 'C000000008'", "1 null keys")
    )

    error = report_rejection(rejection, any_store, datetime(2026, 11, 23, tzinfo=UTC))

    assert "C000000007" not in str(error)
    assert "2 duplicate keys; 1 null keys" in str(error)
    report_key = str(error).rsplit("/", 2)[-2:]
    report = json.loads(any_store.read("/".join(report_key)))
    assert report["problems"][0].endswith("'C000000007', 'C000000008'")
