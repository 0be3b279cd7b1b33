"""AthenaEngine against moto, in-process (``mock_aws``) and over the moto server.

moto never runs SQL, so :class:`FakeUnload` plays Athena's part of an UNLOAD: when the engine
starts a query, it parses the statement, runs the inner SELECT in DuckDB over a local Parquet
file registered as ``customers``, and writes extensionless Parquet files
``<target>/<query id>_0000N`` into the moto bucket. Like Athena, it fails the query when the
target prefix is not empty. That proves the orchestration and the Parquet contract, not Trino.

QUEUED/RUNNING come from moto's state manager, CANCELLED from ``stop_query_execution``, FAILED
from an ``after-call`` hook, and throttling from a ``before-send`` hook whose answers botocore's
real retry logic sees. Sleeps and the clock are injected: nothing here waits.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.request import Request, urlopen

import boto3
import botocore.endpoint
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from moto.moto_api import state_manager

from loaders.build import make_engine as make_builder_engine
from loaders.engines import AthenaEngine, check_select
from loaders.errors import QueryFailedError
from loaders.settings import BuildSettings
from tests.conftest import BUCKET, REGION, FakeClock, customers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

MODEL = "athena::execution"
WORKGROUP = "snapshot-builder"
DATABASE = "customer_db"
STAGING_PREFIX = "athena-staging"
STAGING_URI = f"s3://{BUCKET}/{STAGING_PREFIX}"
IDS = [f"C{i:09d}" for i in range(1, 31)]
SQL = "SELECT customer_id, account_id, segment, region, tier, updated_at FROM customers"
_STATEMENT = "fake_unload_statement"


# --- the moto side: one fixture, two modes ---------------------------------------------------


def _moto_api(server: str, path: str, body: dict[str, Any]) -> None:
    request = Request(f"{server}/moto-api/{path}", data=json.dumps(body).encode(), method="POST")
    urlopen(request, timeout=10).read()


@dataclass
class Moto:
    """One moto (in-process or server): its S3 and Athena clients and its state manager."""

    mode: str
    s3: Any
    athena: Any
    set_transition: Callable[[dict[str, Any]], None]

    def athena_client(self, config: Config | None = None) -> Any:
        """A fresh Athena client; the endpoint (if any) comes from the environment."""
        return boto3.client("athena", region_name=REGION, config=config)

    def execution(self, query_id: str) -> dict[str, Any]:
        return self.athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]

    def keep_queries_pending(self, polls: int) -> None:
        """Each state (QUEUED, then RUNNING) lasts ``polls`` get_query_execution calls."""
        self.set_transition({"progression": "manual", "times": polls})


@pytest.fixture(params=["mock_aws", "moto_server"])
def moto(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    if request.param == "mock_aws":
        monkeypatch.delenv("AWS_ENDPOINT_URL_ATHENA", raising=False)
        s3 = request.getfixturevalue("mock_s3")

        def set_transition(transition: dict[str, Any]) -> None:
            state_manager.set_transition(model_name=MODEL, transition=transition)

        def unset() -> None:
            state_manager.unset_transition(MODEL)

    else:
        server = request.getfixturevalue("moto_server")
        s3 = request.getfixturevalue("server_s3")
        monkeypatch.setenv("AWS_ENDPOINT_URL_ATHENA", server)

        def set_transition(transition: dict[str, Any]) -> None:
            body = {"model_name": MODEL, "transition": transition}
            _moto_api(server, "state-manager/set-transition", body)

        def unset() -> None:
            _moto_api(server, "state-manager/unset-transition", {"model_name": MODEL})

    athena = boto3.client("athena", region_name=REGION)
    athena.create_work_group(Name=WORKGROUP)
    try:
        yield Moto(request.param, s3, athena, set_transition)
    finally:
        unset()


# --- Athena's part of an UNLOAD, played by DuckDB ----------------------------------------------

_UNLOAD = re.compile(
    r"UNLOAD\s*\((?P<select>.+)\)\s*TO\s*'(?P<target>s3://[^']+)'\s*WITH\s*\((?P<options>[^()]*)\)",
    re.IGNORECASE | re.DOTALL,
)
_OPTION = re.compile(r"(\w+)\s*=\s*'([^']*)'")


class UnloadFailedError(Exception):
    """What Athena would report as the query's StateChangeReason."""


@dataclass
class FakeUnload:
    """Runs each started UNLOAD's SELECT in DuckDB and writes its files where Athena would.

    Attributes
    ----------
    started : list of (query id, statement)
        Every query Athena accepted, in order.
    outputs : dict of query id to list of str
        The keys each successful UNLOAD wrote.
    failures : dict of query id to str
        Queries reported FAILED, with Athena's reason.
    """

    s3: Any
    tables: Mapping[str, Path]
    files: int = 2
    started: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def attach(self, athena: Any) -> None:
        events = athena.meta.events
        events.register("before-parameter-build.athena.StartQueryExecution", self._remember)
        events.register("after-call.athena.StartQueryExecution", self._start)
        events.register("after-call.athena.GetQueryExecution", self._report)

    @property
    def statements(self) -> list[str]:
        return [statement for _, statement in self.started]

    @property
    def query_ids(self) -> list[str]:
        return [query_id for query_id, _ in self.started]

    def _remember(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_STATEMENT] = params.get("QueryString")

    def _start(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        query_id = parsed.get("QueryExecutionId")
        if query_id is None:  # the call itself failed (throttled): no query exists
            return
        statement = context[_STATEMENT]
        self.started.append((query_id, statement))
        try:
            self.outputs[query_id] = self._unload(query_id, statement)
        except UnloadFailedError as exc:
            self.failures[query_id] = str(exc)

    def _report(self, parsed: dict[str, Any], **_: Any) -> None:
        execution = parsed.get("QueryExecution")
        if execution is None or execution["QueryExecutionId"] not in self.failures:
            return
        reason = self.failures[execution["QueryExecutionId"]]
        execution["Status"].update(
            State="FAILED",
            StateChangeReason=reason,
            AthenaError={"ErrorCategory": 2, "ErrorType": 1000, "ErrorMessage": reason},
        )

    def _unload(self, query_id: str, statement: str) -> list[str]:
        match = _UNLOAD.fullmatch(statement.strip())
        if match is None:
            raise UnloadFailedError(f"SYNTAX_ERROR: not an UNLOAD statement: {statement[:60]!r}")
        options = {name.lower(): value for name, value in _OPTION.findall(match["options"])}
        if options.get("format", "").upper() != "PARQUET":
            raise UnloadFailedError(f"this fake only writes Parquet, not {options}")
        target = match["target"]
        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/"
        if self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"):
            raise UnloadFailedError(
                f"HIVE_PATH_ALREADY_EXISTS: Target directory for table already exists: {target}. "
                f"You may need to manually clean the data at location '{target}' before retrying."
            )
        table = self._select(match["select"])
        size = -(-table.num_rows // self.files)
        keys = []
        for part in range(self.files):
            sink = pa.BufferOutputStream()
            rows = table.slice(part * size, size)
            pq.write_table(rows, sink, compression=options.get("compression", "gzip").lower())
            key = f"{prefix}{query_id}_{part:05d}"
            self.s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue().to_pybytes())
            keys.append(key)
        return keys

    def _select(self, select: str) -> pa.Table:
        con = duckdb.connect()
        try:
            for name, path in self.tables.items():
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
            return con.sql(select).to_arrow_table()
        except duckdb.Error as exc:
            raise UnloadFailedError(f"SYNTAX_ERROR: {str(exc).splitlines()[0]}") from exc
        finally:
            con.close()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "customers.parquet"
    pq.write_table(customers(IDS), path)
    return path


@pytest.fixture
def unload(moto: Moto, source: Path) -> FakeUnload:
    fake = FakeUnload(moto.s3, {"customers": source})
    fake.attach(moto.athena)
    return fake


# --- the engine side: injected sleep and clock -----------------------------------------------


@dataclass
class SleepRecorder:
    """An injected ``sleep``: records each delay and advances the clock instead of waiting."""

    clock: FakeClock = field(default_factory=FakeClock)
    then: Callable[[], None] | None = None
    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)
        if self.then is not None:
            self.then()


def make_engine(athena: Any, s3: Any, sleep: SleepRecorder | None = None, **options: Any
                ) -> AthenaEngine:  # fmt: skip
    sleep = sleep or SleepRecorder()
    settings: dict[str, Any] = {
        "workgroup": WORKGROUP,
        "database": DATABASE,
        "staging_uri": STAGING_URI,
        "sleep": sleep,
        "clock": sleep.clock,
    }
    return AthenaEngine(athena, s3, **(settings | options))


def rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.sort_by("customer_id").to_pylist()


# --- the happy path --------------------------------------------------------------------------


def test_run_returns_the_rows_of_the_select(moto: Moto, unload: FakeUnload) -> None:
    table = make_engine(moto.athena, moto.s3).run(SQL)

    assert rows(table) == customers(IDS).to_pylist()


def test_run_keeps_what_athena_reports_it_scanned(moto: Moto, unload: FakeUnload) -> None:
    engine = make_engine(moto.athena, moto.s3)
    assert engine.scanned_bytes is None

    engine.run(SQL)

    assert engine.scanned_bytes == 0  # moto reports 0; Athena the bytes it bills


def test_rows_spread_over_several_extensionless_files_are_all_read(
    moto: Moto, unload: FakeUnload
) -> None:
    unload.files = 3
    table = make_engine(moto.athena, moto.s3, run_id=lambda: "run-1").run(SQL)

    [query_id] = unload.query_ids
    assert unload.outputs[query_id] == [
        f"{STAGING_PREFIX}/run-1/{query_id}_{part:05d}" for part in range(3)
    ]
    assert sorted(table.column("customer_id").to_pylist()) == IDS


def test_unload_writes_zstd_parquet_below_a_run_prefix(moto: Moto, unload: FakeUnload) -> None:
    make_engine(moto.athena, moto.s3, run_id=lambda: "run-7").run(SQL)

    assert unload.statements == [
        f"UNLOAD ({SQL}) TO 's3://{BUCKET}/{STAGING_PREFIX}/run-7/' "
        "WITH (format = 'PARQUET', compression = 'ZSTD')"
    ]


def test_query_runs_in_the_configured_workgroup_and_database(
    moto: Moto, unload: FakeUnload
) -> None:
    make_engine(moto.athena, moto.s3).run(SQL)

    execution = moto.execution(unload.query_ids[0])
    assert execution["WorkGroup"] == WORKGROUP
    assert execution["QueryExecutionContext"] == {"Database": DATABASE}


def test_each_run_unloads_to_a_prefix_of_its_own(moto: Moto, unload: FakeUnload) -> None:
    engine = make_engine(moto.athena, moto.s3)

    first, second = engine.run(SQL), engine.run(SQL)

    targets = {re.search(r"TO '([^']+)'", s)[1] for s in unload.statements}
    assert len(targets) == 2
    assert first.num_rows == second.num_rows == len(IDS)


def test_reused_run_prefix_fails_naming_the_error_category(moto: Moto, unload: FakeUnload) -> None:
    engine = make_engine(moto.athena, moto.s3, run_id=lambda: "same-run")
    engine.run(SQL)

    with pytest.raises(QueryFailedError, match=r"FAILED: user error \(category 2, type 1000\)"):
        engine.run(SQL)


# --- polling ---------------------------------------------------------------------------------


def test_polling_doubles_the_delay_up_to_max_poll_seconds(moto: Moto, unload: FakeUnload) -> None:
    moto.keep_queries_pending(polls=3)  # 3 polls QUEUED, 3 RUNNING: five sleeps in between
    sleep = SleepRecorder()
    engine = make_engine(moto.athena, moto.s3, sleep, first_poll_seconds=1.0, max_poll_seconds=10.0)

    engine.run(SQL)

    assert sleep.delays == [1.0, 2.0, 4.0, 8.0, 10.0]


def test_progress_reports_each_polled_state(moto: Moto, unload: FakeUnload) -> None:
    moto.keep_queries_pending(polls=1)
    messages: list[str] = []

    make_engine(moto.athena, moto.s3).run(SQL, progress=messages.append)

    states = [re.search(r" ([A-Z]+) after ", m)[1] for m in messages]
    assert states == ["RUNNING", "SUCCEEDED"]


# --- failures Athena reports -----------------------------------------------------------------


def test_cancelled_query_raises_naming_cancelled(moto: Moto, unload: FakeUnload) -> None:
    moto.keep_queries_pending(polls=1)
    operator = moto.athena_client()

    def cancel() -> None:
        operator.stop_query_execution(QueryExecutionId=unload.query_ids[0])

    sleep = SleepRecorder(then=cancel)
    engine = make_engine(moto.athena, moto.s3, sleep)

    with pytest.raises(QueryFailedError, match=r"^Athena query \S+ CANCELLED: "):
        engine.run(SQL)

    assert sleep.delays == [1.0]  # the poll right after the cancel ended the run


def _fail_every_query(athena: Any, status: dict[str, Any]) -> None:
    def edit(parsed: dict[str, Any], **_: Any) -> None:
        parsed["QueryExecution"]["Status"].update(status)

    athena.meta.events.register("after-call.athena.GetQueryExecution", edit)


# Athena quotes data values in its failure text: this one names a customer's e-mail address.
DATA_IN_REASON = "INVALID_CAST_ARGUMENT: Value cannot be cast to date: 'jane.doe@example.com'"


def _everything_said(error: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """The error's message, its notes and its causes' messages, and every log line."""
    said = [caplog.text]
    seen: BaseException | None = error
    while seen is not None:
        said += [str(seen), *getattr(seen, "__notes__", [])]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(said)


def test_failed_query_names_the_error_category_and_type_not_athenas_message(
    moto: Moto, unload: FakeUnload, caplog: pytest.LogCaptureFixture
) -> None:
    _fail_every_query(
        moto.athena,
        {
            "State": "FAILED",
            "StateChangeReason": DATA_IN_REASON,
            "AthenaError": {"ErrorCategory": 2, "ErrorType": 1004, "ErrorMessage": DATA_IN_REASON},
        },
    )

    with (
        caplog.at_level(logging.DEBUG, logger="loaders"),
        pytest.raises(QueryFailedError) as failed,
    ):
        make_engine(moto.athena, moto.s3).run(SQL)

    [query_id] = unload.query_ids
    assert str(failed.value) == (
        f"Athena query {query_id} FAILED: user error (category 2, type 1004); "
        "see the query in the Athena console"
    )
    assert "jane.doe" not in _everything_said(failed.value, caplog)


def test_failed_query_without_an_error_category_still_keeps_athenas_message_out(
    moto: Moto, unload: FakeUnload, caplog: pytest.LogCaptureFixture
) -> None:
    _fail_every_query(moto.athena, {"State": "FAILED", "StateChangeReason": DATA_IN_REASON})

    with (
        caplog.at_level(logging.DEBUG, logger="loaders"),
        pytest.raises(QueryFailedError) as failed,
    ):
        make_engine(moto.athena, moto.s3).run(SQL)

    assert "no error category given" in str(failed.value)
    assert "jane.doe" not in _everything_said(failed.value, caplog)


def test_deadline_stops_the_query_and_raises(moto: Moto, unload: FakeUnload) -> None:
    moto.keep_queries_pending(polls=10_000)
    engine = make_engine(moto.athena, moto.s3, deadline_seconds=60.0)

    with pytest.raises(QueryFailedError, match="deadline"):
        engine.run(SQL)

    assert moto.execution(unload.query_ids[0])["Status"]["State"] == "CANCELLED"


def test_polling_sleeps_no_further_than_the_deadline(moto: Moto, unload: FakeUnload) -> None:
    moto.keep_queries_pending(polls=10_000)
    sleep = SleepRecorder()
    engine = make_engine(moto.athena, moto.s3, sleep, deadline_seconds=60.0, max_poll_seconds=15.0)

    with pytest.raises(QueryFailedError):
        engine.run(SQL)

    assert sleep.delays == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]  # 60 s on the fake clock


# --- a started query is stopped on every failure ----------------------------------------------


@dataclass
class StopRecorder:
    """Records the query ids the engine asks Athena to stop (the call still reaches moto)."""

    stopped: list[str] = field(default_factory=list)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.stopped.append(params["QueryExecutionId"])


@pytest.fixture
def stops(moto: Moto) -> StopRecorder:
    recorder = StopRecorder()
    moto.athena.meta.events.register("provide-client-params.athena.StopQueryExecution", recorder)
    return recorder


@pytest.fixture
def engine_s3(moto: Moto) -> Any:
    """An S3 client of the engine's own, so faults injected into it spare the fake UNLOAD."""
    return boto3.client("s3", region_name=REGION)


def _aws_error(protocol: str, status: int, code: str, message: str) -> Callable[..., AWSResponse]:
    if protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        content_type = "application/x-amz-json-1.1"
    else:
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        content_type = "application/xml"
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}

    def answer(request: Any, **_: Any) -> AWSResponse:
        return AWSResponse(request.url, status, headers, _Body(body))

    return answer


def test_polling_error_stops_the_query(moto: Moto, unload: FakeUnload, stops: StopRecorder) -> None:
    moto.athena.meta.events.register_first(
        "before-send.athena.GetQueryExecution",
        _aws_error("json", 400, "InvalidRequestException", DATA_IN_REASON),
    )

    with pytest.raises(QueryFailedError, match="InvalidRequestException") as failed:
        make_engine(moto.athena, moto.s3).run(SQL)

    assert stops.stopped == unload.query_ids
    assert "jane.doe" not in str(failed.value)


@pytest.mark.parametrize("operation", ["ListObjectsV2", "GetObject"])
def test_failure_reading_the_unload_output_stops_the_query(
    moto: Moto, unload: FakeUnload, stops: StopRecorder, engine_s3: Any, operation: str
) -> None:
    engine_s3.meta.events.register_first(
        f"before-send.s3.{operation}", _aws_error("xml", 403, "AccessDenied", "Access Denied")
    )

    with pytest.raises(QueryFailedError, match=r"cannot read UNLOAD output .*AccessDenied"):
        make_engine(moto.athena, engine_s3).run(SQL)

    assert stops.stopped == unload.query_ids


def test_unreadable_unload_output_stops_the_query(
    moto: Moto, unload: FakeUnload, stops: StopRecorder, engine_s3: Any
) -> None:
    def garble(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Body"] = io.BytesIO(b"not parquet")

    engine_s3.meta.events.register("after-call.s3.GetObject", garble)

    with pytest.raises(QueryFailedError, match="not readable Parquet"):
        make_engine(moto.athena, engine_s3).run(SQL)

    assert stops.stopped == unload.query_ids


def test_deadline_stops_the_query_once(moto: Moto, unload: FakeUnload, stops: StopRecorder) -> None:
    moto.keep_queries_pending(polls=10_000)

    with pytest.raises(QueryFailedError, match="deadline"):
        make_engine(moto.athena, moto.s3, deadline_seconds=60.0).run(SQL)

    assert stops.stopped == unload.query_ids


def test_interrupt_while_waiting_stops_the_query_and_propagates(
    moto: Moto, unload: FakeUnload, stops: StopRecorder
) -> None:
    moto.keep_queries_pending(polls=10)

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_engine(moto.athena, moto.s3, SleepRecorder(then=interrupt)).run(SQL)

    assert stops.stopped == unload.query_ids
    assert moto.execution(unload.query_ids[0])["Status"]["State"] == "CANCELLED"


def test_failed_stop_keeps_the_original_error_and_logs_a_warning(
    moto: Moto, unload: FakeUnload, caplog: pytest.LogCaptureFixture
) -> None:
    moto.keep_queries_pending(polls=10_000)
    moto.athena.meta.events.register_first(
        "before-send.athena.StopQueryExecution",
        _aws_error("json", 400, "InvalidRequestException", DATA_IN_REASON),
    )

    with (
        caplog.at_level(logging.WARNING, logger="loaders"),
        pytest.raises(QueryFailedError) as failed,
    ):
        make_engine(moto.athena, moto.s3, deadline_seconds=60.0).run(SQL)

    [query_id] = unload.query_ids
    assert "deadline" in str(failed.value)
    assert failed.value.__notes__ == [
        f"stopping Athena query {query_id} failed too: InvalidRequestException"
    ]
    assert f"stopping Athena query {query_id} failed too" in caplog.text
    assert "jane.doe" not in _everything_said(failed.value, caplog)


# --- throttling: botocore's own retries over injected answers --------------------------------


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def _throttling(request: Any) -> AWSResponse:
    body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.1", "Content-Length": str(len(body))}
    return AWSResponse(request.url, 400, headers, _Body(body))


@dataclass
class Throttle:
    """A before-send hook: the first ``times`` attempts are throttled, then moto answers."""

    times: int
    attempts: int = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.attempts += 1
        return _throttling(request) if self.attempts <= self.times else None


class _NoWaitTime:
    """``time`` as botocore's endpoint sees it: retry backoffs are recorded, not slept."""

    def __init__(self) -> None:
        self.backoffs: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.backoffs.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def retrying_athena(moto: Moto, source: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An Athena client with 5 standard-mode attempts, its UNLOADs played by DuckDB."""
    monkeypatch.setattr(botocore.endpoint, "time", _NoWaitTime())
    athena = moto.athena_client(Config(retries={"mode": "standard", "total_max_attempts": 5}))
    FakeUnload(moto.s3, {"customers": source}).attach(athena)
    return athena


def test_throttled_start_is_retried_and_the_run_succeeds(moto: Moto, retrying_athena: Any) -> None:
    throttle = Throttle(times=2)
    retrying_athena.meta.events.register_first("before-send.athena.StartQueryExecution", throttle)

    table = make_engine(retrying_athena, moto.s3).run(SQL)

    assert throttle.attempts == 3
    assert table.num_rows == len(IDS)


def test_throttling_past_the_retry_budget_raises_query_failed(
    moto: Moto, retrying_athena: Any
) -> None:
    throttle = Throttle(times=100)
    retrying_athena.meta.events.register_first("before-send.athena.StartQueryExecution", throttle)

    with pytest.raises(QueryFailedError, match="ThrottlingException"):
        make_engine(retrying_athena, moto.s3).run(SQL)

    assert throttle.attempts == 5


def test_builders_own_athena_client_retries_throttling(
    moto: Moto, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(botocore.endpoint, "time", _NoWaitTime())
    settings = BuildSettings(
        snapshot_uri=f"s3://{BUCKET}/snapshots",
        sql=SQL,
        engine="athena",
        workgroup=WORKGROUP,
        database=DATABASE,
        staging_uri=STAGING_URI,
    )
    engine = make_builder_engine(settings, sleep=SleepRecorder())
    assert isinstance(engine, AthenaEngine)
    FakeUnload(moto.s3, {"customers": source}).attach(engine.athena)
    throttle = Throttle(times=2)
    engine.athena.meta.events.register_first("before-send.athena.StartQueryExecution", throttle)

    table = engine.run(SQL)

    assert throttle.attempts == 3
    assert table.num_rows == len(IDS)


# --- check_select: one SELECT, nothing else --------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT 2",
        "SELECT * FROM customers; DROP TABLE customers",
        "SELECT 1;\n-- trailing comment\nDELETE FROM customers;",
    ],
)
def test_check_select_rejects_several_statements(sql: str) -> None:
    with pytest.raises(QueryFailedError, match="single SELECT"):
        check_select(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE customers",
        "INSERT INTO customers SELECT * FROM staging",
        "CREATE TABLE copy AS SELECT * FROM customers",
        f"UNLOAD ({SQL}) TO 's3://elsewhere/' WITH (format = 'PARQUET')",
    ],
)
def test_check_select_rejects_statements_other_than_select(sql: str) -> None:
    with pytest.raises(QueryFailedError, match="must be a SELECT"):
        check_select(sql)


@pytest.mark.parametrize("sql", ["", "  ;  ", "-- only a comment\n"])
def test_check_select_rejects_an_empty_query(sql: str) -> None:
    with pytest.raises(QueryFailedError, match="empty"):
        check_select(sql)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("-- the mapping\nSELECT 1 AS x;\n", "SELECT 1 AS x"),
        ("WITH t AS (SELECT 1 AS x) SELECT x FROM t;", "WITH t AS (SELECT 1 AS x) SELECT x FROM t"),
    ],
)
def test_check_select_accepts_one_select_with_comments_and_a_final_semicolon(
    sql: str, expected: str
) -> None:
    assert check_select(sql) == expected


def test_check_select_keeps_a_double_dash_inside_a_string_literal() -> None:
    sql = "SELECT * FROM customers WHERE customer_id <> 'C--1'"

    assert check_select(sql) == sql


def test_check_select_accepts_a_semicolon_inside_a_string_literal() -> None:
    sql = "SELECT * FROM customers WHERE segment <> 'smb;legacy'"

    assert check_select(sql) == sql


def test_a_statement_other_than_select_never_reaches_athena(moto: Moto, unload: FakeUnload) -> None:
    with pytest.raises(QueryFailedError, match="must be a SELECT"):
        make_engine(moto.athena, moto.s3).run("DELETE FROM customers")

    assert moto.athena.list_query_executions()["QueryExecutionIds"] == []
