"""The builder: query -> validate -> write snapshot -> announce. Lambda entry ``handler``.

After Hollow's producer: the engine, the store and the clock are injected, every validator
must pass before anything is written, and the pointer moves last, by compare-and-swap. A
version is stamped when its query starts, so the build that read the freshest data wins.

The rows never need to fit in memory: the engine leaves them as Parquet files in a temporary
work directory, and :mod:`loaders.stream` checks, compares and writes them from there.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loaders import stream
from loaders.engines import AthenaEngine, DuckDBEngine, ExportingEngine, QueryEngine
from loaders.errors import BuildRejectedError, LoaderError, SnapshotInvalidError
from loaders.fingerprint import (
    Fingerprint,
    Fingerprinter,
    FingerprintUnavailableError,
    GlueSource,
)
from loaders.manifest import (
    CHANGES_NAME,
    Manifest,
    new_version,
    read_manifest,
    snapshot_key,
    try_read_pointer,
    utc_text,
)
from loaders.metrics import BUILDER_SERVICE, Metric, MetricsRecorder, build_metric
from loaders.publish import Published, check_clock, publish_staged, publish_table
from loaders.records import BuildRecord, counts_only, write_record
from loaders.settings import DEFAULT_STORAGE, BuildSettings
from loaders.store import ClockedStore, StorageBudget, make_s3_client, open_store, parse_uri
from loaders.stream import Previous, StagedResult, StreamSettings
from loaders.validate import Changes, Rules

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]
# Attempts of each Glue and S3 call a source fingerprint makes (standard mode: throttling is
# retried with backoff); the first try counts.
FINGERPRINT_MAX_ATTEMPTS = 3


class Outcome(enum.StrEnum):
    """How a build ended.

    Each outcome has a log level (:data:`LOG_LEVELS`), a ``snapshotctl build`` exit status
    (``loaders.cli.EXIT_STATUS``) and a metric (``loaders.metrics.build_metric``); a new
    outcome needs all three. ``build()`` returns the first four; a rejected or failed build
    raises, and the outcome names it in build records and metrics.
    """

    ANNOUNCED = "announced"
    """The new version is published and ``CURRENT`` names it."""
    SUPERSEDED = "superseded"
    """The new version is published, but one whose query started later stands in ``CURRENT``;
    it was not announced."""
    UNCHANGED = "unchanged"
    """The source's fingerprint equals the current snapshot's: no query ran, nothing written."""
    PINNED = "pinned"
    """The new version is published for inspection, but ``CURRENT`` is pinned: not announced."""
    REJECTED = "rejected"
    """Validation refused the rows: nothing written, ``CURRENT`` untouched."""
    FAILED = "failed"
    """The query or the store failed: ``CURRENT`` untouched."""


LOG_LEVELS: dict[Outcome, int] = {
    Outcome.ANNOUNCED: logging.INFO,
    Outcome.SUPERSEDED: logging.WARNING,
    Outcome.UNCHANGED: logging.INFO,
    Outcome.PINNED: logging.WARNING,
    Outcome.REJECTED: logging.ERROR,
    Outcome.FAILED: logging.ERROR,
}


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What one build did."""

    manifest: Manifest
    outcome: Outcome
    current: str
    changes: Changes
    seconds: dict[str, float]

    @property
    def announced(self) -> bool:
        """Whether ``CURRENT`` names this build's version."""
        return self.outcome is Outcome.ANNOUNCED

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "version": self.manifest.version,
            "announced": self.announced,
            "current": self.current,
            "query_started_at": utc_text(self.manifest.query_started_at),
            "published_at": utc_text(self.manifest.published_at),
            "rows": self.manifest.row_count,
            "bytes": self.manifest.bytes,
            "changes": {k: v for k, v in self.changes.to_dict().items() if k != "examples"},
            "seconds": self.seconds,
        }


def _current_version(store: ClockedStore) -> str | None:
    pointer = try_read_pointer(store)
    return None if pointer is None else pointer.version


def _fingerprint(engine: QueryEngine, sql: str, rules: Rules) -> Fingerprint | None:
    """The fingerprint of this build's inputs; None when it cannot be taken (then it queries)."""
    if not isinstance(engine, Fingerprinter):
        return None
    try:
        fingerprint = engine.fingerprint(sql)
    except FingerprintUnavailableError as exc:
        logger.warning("no source fingerprint, so the query runs: %s", exc)
        return None
    # The key column and the contract shape the snapshot too: changing either must rebuild.
    contract = [[column.name, column.type] for column in rules.contract]
    return fingerprint.including({"key_column": rules.key_column, "contract": contract})


def _unchanged(
    store: ClockedStore, fingerprint: Fingerprint, progress: Progress
) -> Manifest | None:
    """The manifest of the version ``CURRENT`` names, if it records ``fingerprint``."""
    try:
        version = _current_version(store)
        manifest = None if version is None else read_manifest(store, version)
    except LoaderError as exc:
        logger.warning("current manifest unreadable, so the query runs: %s", exc)
        return None
    digest = fingerprint.sha256[:12]
    if manifest is None or not fingerprint.matches(manifest.source):
        progress(f"source fingerprint {digest} is new; the query runs")
        return None
    progress(f"source unchanged since {manifest.version} (fingerprint {digest}); no query")
    return manifest


def _recorded(fingerprint: Fingerprint | None) -> dict[str, Any]:
    """The manifest ``source`` entry of a fingerprint, which the next build compares with."""
    return {} if fingerprint is None else {"fingerprint": fingerprint.to_dict()}


def build(
    engine: QueryEngine,
    store: ClockedStore,
    sql: str,
    rules: Rules,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Progress | None = None,
    source: dict[str, Any] | None = None,
    force: bool = False,
    settings: StreamSettings | None = None,
    work_dir: Path | None = None,
) -> BuildResult:
    """Run ``sql``, validate the rows, publish them, and announce the new version.

    The version is stamped with ``now()`` as the query starts: its data cutoff. ``now()`` is
    read again for the manifest's ``published_at``.

    First, an engine that can (:class:`~loaders.fingerprint.Fingerprinter`) fingerprints the
    inputs. When the manifest of the version ``CURRENT`` names records the same fingerprint,
    the build ends ``unchanged``: no query ran and nothing was written, and the result's
    ``manifest`` is that current one. ``force`` builds anyway; its manifest still records the
    fingerprint. When no fingerprint can be taken, the reason is logged and the build queries.

    The rows go through a temporary directory below ``work_dir`` (the system's temporary
    directory by default): an engine that can (:class:`~loaders.engines.ExportingEngine`)
    writes them there as Parquet, and checks, change report and snapshot are made from those
    files out of core (:mod:`loaders.stream`, bounded by ``settings``).

    Returns
    -------
    BuildResult
        Its ``outcome`` is ``announced``, or ``superseded`` when a version whose query started
        later stands in ``CURRENT``, or ``pinned`` when an operator pinned ``CURRENT`` (the
        version is published for inspection, not announced). Its build record is saved to
        ``store`` (:func:`record`), and ``now()`` is read once more for the record's end.

    Raises
    ------
    QueryFailedError
        If the engine fails; nothing is written.
    SnapshotInvalidError
        If validation rejects the rows, or ``now()`` is more than ``MAX_CLOCK_SKEW_SECONDS``
        ahead of the store's clock; nothing is written and the pointer stays.
    """
    say = progress or (lambda message: logger.info(message))
    seconds: dict[str, float] = {}
    build_started = time.perf_counter()

    def step(name: str, started: float) -> None:
        seconds[name] = round(time.perf_counter() - started, 3)
        say(f"{name} done in {seconds[name]:.2f}s")

    # Taken before the query starts: a source that changes during the query then differs
    # from the fingerprint this build records, and the next build queries again.
    started = time.perf_counter()
    fingerprint = _fingerprint(engine, sql, rules)
    standing = None if fingerprint is None or force else _unchanged(store, fingerprint, say)
    step("fingerprint", started)
    if standing is not None:
        unchanged = Changes(standing.version, added=0, removed=0, changed=0)
        result = BuildResult(standing, Outcome.UNCHANGED, standing.version, unchanged, seconds)
        # Nothing is written but the build record: each run leaves one, so `status` shows it.
        return record(
            store, result, finished_at=now(), elapsed_seconds=time.perf_counter() - build_started
        )

    with tempfile.TemporaryDirectory(prefix="snapshot-build-", dir=work_dir) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        # Its manifest now, for the row-count check; its data only for the change report.
        base = stream.previous(store, _current_version(store), work, say, data=False)
        step("previous", started)

        query_started_at = now()
        # Before the query: a skewed clock then costs no query and leaves no files behind.
        check_clock(query_started_at, store.now())
        started = time.perf_counter()
        say(f"query running on {engine.name}")
        files = _query(engine, sql, work / "result", say)
        step("query", started)

        with StagedResult(files, work, settings or StreamSettings()) as staged:
            started = time.perf_counter()
            say(f"validating {staged.row_count:,} rows")
            schema = stream.check(staged, rules, base.manifest)
            # What DuckDB kept from the checks is freed before the rows are read or sorted.
            staged.release()
            step("validate", started)

            started = time.perf_counter()
            say(f"publishing to {store.uri}")
            published = _publish(
                store,
                staged,
                schema,
                rules,
                base,
                query_started_at=query_started_at,
                published_at=now(),
                source={"engine": engine.name, **(source or {}), **_recorded(fingerprint)},
            )
            step("publish", started)

            started = time.perf_counter()
            changes = _report_changes(store, staged, schema, published, base, rules.key_column, say)
            step("changes", started)
    if published.pinned:
        outcome = Outcome.PINNED
    else:
        outcome = Outcome.ANNOUNCED if published.announced else Outcome.SUPERSEDED
    result = BuildResult(published.manifest, outcome, published.current, changes, seconds)
    return record(
        store, result, finished_at=now(), elapsed_seconds=time.perf_counter() - build_started
    )


def _query(engine: QueryEngine, sql: str, directory: Path, progress: Progress) -> list[Path]:
    """Run ``sql``, leaving its rows as Parquet files in ``directory``.

    An engine that only returns a table (a test's, a caller's) has it written there, so
    every build runs the same checks over the same kind of input.
    """
    if isinstance(engine, ExportingEngine):
        return engine.export(sql, directory, progress=progress)
    return stream.stage_table(engine.run(sql, progress=progress), directory)


def _publish(
    store: ClockedStore,
    staged: StagedResult,
    schema: pa.Schema,
    rules: Rules,
    base: Previous,
    *,
    query_started_at: datetime,
    published_at: datetime,
    source: dict[str, Any],
) -> Published:
    """Publish the checked rows: whole, in the memory-mode layout, when a reader could hold
    them (``memory_layout_max_rows``); else streamed in row groups from the sorted result."""
    options: dict[str, Any] = {
        "key_column": rules.key_column,
        "now": query_started_at,
        "published_at": published_at,
        "store_clock": store.now,
        "source": source,
    }
    if staged.row_count > staged.settings.memory_layout_max_rows:
        return publish_staged(store, staged, schema, **options)
    table = stream.read_sorted(staged, rules, base.manifest)
    return publish_table(store, table, **options)


def record(
    store: ClockedStore, result: BuildResult, *, finished_at: datetime, elapsed_seconds: float
) -> BuildResult:
    """Save the build record of a build that returned (best effort), and return ``result``."""
    write_record(
        store,
        BuildRecord(
            outcome=result.outcome.value,
            started_at=finished_at - timedelta(seconds=elapsed_seconds),
            finished_at=finished_at,
            version=result.manifest.version,
            current=result.current,
            seconds=dict(result.seconds),
            rows=result.manifest.row_count,
            changes=counts_only(result.changes.to_dict()),
        ),
    )
    return result


def record_failure(
    store: ClockedStore, exc: LoaderError, *, started_at: datetime, finished_at: datetime
) -> Outcome:
    """Save the build record of a build that raised (best effort); return its outcome.

    A :class:`SnapshotInvalidError` is ``rejected`` and its problems are kept without their
    example keys; anything else is ``failed`` and only its type is kept, since its message
    may quote data (a DuckDB error can); the builder's log has the message.
    """
    if isinstance(exc, SnapshotInvalidError):
        outcome = Outcome.REJECTED
        problems = "; ".join(without_examples(p) for p in list(exc.problems) or [str(exc)])
        error = f"{type(exc).__name__}: {problems}"
    else:
        outcome = Outcome.FAILED
        error = type(exc).__name__
    write_record(store, BuildRecord(outcome.value, started_at, finished_at, error=error))
    return outcome


def _report_changes(
    store: ClockedStore,
    staged: StagedResult,
    schema: pa.Schema,
    published: Published,
    base: Previous,
    key_column: str,
    progress: Progress,
) -> Changes:
    """Diff against the version the announce replaced, and save that as ``changes.json``.

    The replaced version is re-read only when another builder announced it after this build
    read ``base``. A superseded version replaced nothing: its changes are against ``base`` and
    are not saved. Readers never need ``changes.json``, so it may follow the pointer.
    """
    if published.announced and published.replaced != base.version:
        progress(f"{published.replaced} was announced meanwhile; the change report is against it")
        base = stream.previous(store, published.replaced, staged.directory, progress)
    else:
        base = stream.with_data(store, base, staged.directory, progress)
    changes = stream.diff(
        staged, schema, base.data, key_column=key_column, previous_version=base.version
    )
    if published.announced:
        key = snapshot_key(published.manifest.version, CHANGES_NAME)
        body = json.dumps(changes.to_dict(), indent=2).encode()
        try:
            store.put(key, body, if_none_match="*")
        except LoaderError as exc:
            # The version is announced already; a missing report must not fail the build.
            logger.warning("change report for %s not saved: %s", published.manifest.version, exc)
    return changes


def stream_settings_from(settings: BuildSettings) -> StreamSettings:
    """How a build configured by ``settings`` works out of core."""
    return StreamSettings(memory_limit=settings.duckdb_memory_limit)


def rules_from(settings: BuildSettings, *, allow_row_change: bool = False) -> Rules:
    """The validation rules a build runs under."""
    return Rules(
        key_column=settings.key_column,
        contract=settings.contract,
        min_rows=settings.min_rows,
        max_row_change=settings.max_row_change,
        allow_row_change=allow_row_change,
    )


def make_engine(settings: BuildSettings, *, sleep: Callable[[float], None] = time.sleep
                ) -> QueryEngine:  # fmt: skip
    """The engine a configuration names, with real boto3 clients for Athena."""
    if settings.engine == "duckdb":
        return DuckDBEngine(
            dict(settings.tables),
            fingerprint_bound=settings.fingerprint,
            memory_limit=settings.duckdb_memory_limit,
        )
    import boto3
    from botocore.config import Config

    # Standard mode retries throttling (Athena's TooManyRequestsException) with jittered backoff;
    # total_max_attempts counts the first try too. Explicit timeouts: botocore's 60 s defaults
    # would let one hung call eat the function's whole budget.
    athena_config = Config(
        connect_timeout=settings.athena_connect_timeout_seconds,
        read_timeout=settings.athena_read_timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": settings.athena_max_attempts},
    )
    return AthenaEngine(
        boto3.client("athena", config=athena_config),
        make_s3_client(settings.storage),
        workgroup=settings.workgroup,
        database=settings.database,
        staging_uri=settings.staging_uri or "",
        deadline_seconds=settings.deadline_seconds,
        sleep=sleep,
        glue_source=make_glue_source(settings),
    )


def make_glue_source(settings: BuildSettings) -> GlueSource:
    """What fingerprints an Athena build's source: Glue and S3 clients bound by
    ``settings.fingerprint``, whose ``max_seconds`` is also each call's read timeout.

    A fingerprint only saves a query, so a hung Glue or S3 call may cost seconds, not the
    minutes that the storage and Athena budgets allow; the build then queries anyway.
    """
    import boto3
    from botocore.config import Config

    bound = settings.fingerprint
    budget = StorageBudget(
        connect_timeout_seconds=min(settings.storage.connect_timeout_seconds, bound.max_seconds),
        read_timeout_seconds=bound.max_seconds,
        max_attempts=FINGERPRINT_MAX_ATTEMPTS,
    )
    glue_config = Config(
        connect_timeout=budget.connect_timeout_seconds,
        read_timeout=budget.read_timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": budget.max_attempts},
    )
    return GlueSource(
        boto3.client("glue", config=glue_config),
        make_s3_client(budget),
        database=settings.database,
        tables=settings.source_tables,
        bound=bound,
    )


def make_store(uri: str, budget: StorageBudget = DEFAULT_STORAGE) -> ClockedStore:
    """The store a root URI names, with an S3 client bound by ``budget`` for ``s3://``."""
    if parse_uri(uri)[0] == "s3":
        return open_store(uri, s3_client=make_s3_client(budget))
    return open_store(uri)


@functools.cache
def _structured_logging() -> None:
    """In Lambda, log JSON lines through Powertools, for this module and the rest of loaders."""
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.logging.utils import (
        copy_config_to_registered_loggers,
    )

    copy_config_to_registered_loggers(
        source_logger=Logger(service="snapshot-builder"), include={"loaders"}
    )


def without_examples(problem: str) -> str:
    """A problem line with its example keys cut off, fit for logs (keys are customer data)."""
    return problem.partition(", e.g. ")[0]


def report_rejection(
    exc: SnapshotInvalidError, store: ClockedStore, now: datetime
) -> BuildRejectedError:
    """Save the full rejection report (with example keys) to ``store`` and return an error
    whose message has counts only, for logs and for Lambda's error output."""
    problems = list(exc.problems) or [str(exc)]
    key = f"rejections/{new_version(now)}.json"
    body = json.dumps({"rejected_at": now.isoformat(), "problems": problems}, indent=2).encode()
    try:
        store.put(key, body, if_none_match="*")
        where = f"{store.uri}/{key}"
    except LoaderError as write_error:
        where = f"not saved ({type(write_error).__name__})"
    summary = "; ".join(without_examples(p) for p in problems)
    return BuildRejectedError(f"build rejected: {summary}; full report: {where}")


def record_build_metrics(
    metrics: MetricsRecorder,
    outcome: Outcome,
    *,
    result: BuildResult | None = None,
    engine: QueryEngine | None = None,
) -> str | None:
    """Emit one build's metrics as one EMF document: its outcome, the seconds of each phase
    that ran, rows added, removed and changed, and what Athena scanned (its cost)."""
    metrics.count(build_metric(outcome.value))
    if result is not None:
        for phase, metric in _PHASE_METRICS.items():
            if phase in result.seconds:
                metrics.sample(metric, result.seconds[phase])
        if outcome is not Outcome.UNCHANGED:
            metrics.count(Metric.ROWS_ADDED, result.changes.added)
            metrics.count(Metric.ROWS_REMOVED, result.changes.removed)
            metrics.count(Metric.ROWS_CHANGED, result.changes.changed)
    scanned = getattr(engine, "scanned_bytes", None)
    if scanned is not None:
        metrics.count(Metric.ATHENA_BYTES_SCANNED, scanned)
    return metrics.flush()


_PHASE_METRICS = {
    "query": Metric.QUERY_SECONDS,
    "validate": Metric.VALIDATE_SECONDS,
    "publish": Metric.PUBLISH_SECONDS,
}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry ``loaders.build.handler``: one scheduled build from the environment.

    Returns the build's summary, whose ``outcome`` says whether it was announced or
    superseded (logged as a warning), or unchanged (no query ran; ``{"force": true}`` in the
    event builds anyway). A rejected or failed build raises, so the invocation
    counts as an error and alarms fire; the pointer is untouched in that case.
    """
    _structured_logging()
    settings = BuildSettings.from_env()
    allow = bool(isinstance(event, dict) and event.get("allow_row_change") is True)
    # {"force": true} rebuilds though the source's fingerprint matches the current snapshot's.
    force = bool(isinstance(event, dict) and event.get("force") is True)
    store = make_store(settings.snapshot_uri, settings.storage)
    started_at = datetime.now(UTC)
    engine = make_engine(settings)
    metrics = MetricsRecorder(
        namespace=settings.metrics_namespace, service=BUILDER_SERVICE, enabled=True
    )
    try:
        result = build(
            engine,
            store,
            settings.sql,
            rules_from(settings, allow_row_change=allow),
            source={"workgroup": settings.workgroup, "database": settings.database},
            force=force,
            settings=stream_settings_from(settings),
        )
    except SnapshotInvalidError as exc:
        record_failure(store, exc, started_at=started_at, finished_at=datetime.now(UTC))
        # The report names example keys: it goes to the staging prefix, not to the logs.
        staging = make_store(settings.staging_uri or settings.snapshot_uri, settings.storage)
        rejected = report_rejection(exc, staging, datetime.now(UTC))
        logger.error("%s; the pointer was not moved", rejected)
        record_build_metrics(metrics, Outcome.REJECTED, engine=engine)
        raise rejected from None
    except LoaderError as exc:
        record_failure(store, exc, started_at=started_at, finished_at=datetime.now(UTC))
        logger.exception("build failed; the pointer was not moved")
        record_build_metrics(metrics, Outcome.FAILED, engine=engine)
        raise
    record_build_metrics(metrics, result.outcome, result=result, engine=engine)
    summary = result.to_dict()
    logger.log(
        LOG_LEVELS[result.outcome],
        "build %s: %s; CURRENT names %s",
        result.outcome.value,
        summary["version"],
        summary["current"],
        extra={"build": summary},
    )
    return summary
