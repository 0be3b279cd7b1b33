"""The builder: query -> validate -> write snapshot -> announce. Lambda entry ``handler``.

After Hollow's producer: the engine, the store and the clock are injected, every validator
must pass before anything is written, and the pointer moves last, by compare-and-swap.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loaders.engines import AthenaEngine, DuckDBEngine, QueryEngine
from loaders.errors import BuildRejectedError, LoaderError, SnapshotInvalidError
from loaders.manifest import (
    CHANGES_NAME,
    Manifest,
    new_version,
    read_manifest,
    try_read_pointer,
)
from loaders.publish import publish_table
from loaders.settings import BuildSettings
from loaders.snapshot import read_snapshot
from loaders.store import ObjectStore, open_store, parse_uri
from loaders.validate import Changes, Rules, diff, validate

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What one build did."""

    manifest: Manifest
    announced: bool
    current: str
    changes: Changes
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.manifest.version,
            "announced": self.announced,
            "current": self.current,
            "rows": self.manifest.row_count,
            "bytes": self.manifest.bytes,
            "changes": {k: v for k, v in self.changes.to_dict().items() if k != "examples"},
            "seconds": self.seconds,
        }


def _previous(store: ObjectStore, progress: Progress) -> tuple[Manifest | None, pa.Table | None]:
    pointer = try_read_pointer(store)
    if pointer is None:
        return None, None
    progress(f"previous version {pointer.version}: downloading for the change report")
    try:
        snapshot = read_snapshot(store, pointer.version)
    except LoaderError as exc:
        # A broken previous snapshot must not block a good new one; its manifest may still
        # carry the row count for the change check.
        logger.warning("previous snapshot %s unreadable: %s", pointer.version, exc)
        try:
            return read_manifest(store, pointer.version), None
        except LoaderError:
            return None, None
    return snapshot.manifest, snapshot.table


def build(
    engine: QueryEngine,
    store: ObjectStore,
    sql: str,
    rules: Rules,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Progress | None = None,
    source: dict[str, Any] | None = None,
) -> BuildResult:
    """Run ``sql``, validate the rows, publish them, and announce the new version.

    Raises
    ------
    QueryFailedError
        If the engine fails; nothing is written.
    SnapshotInvalidError
        If validation rejects the rows; nothing is written and the pointer stays.
    """
    say = progress or (lambda message: logger.info(message))
    seconds: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        seconds[name] = round(time.perf_counter() - started, 3)
        say(f"{name} done in {seconds[name]:.2f}s")

    started = time.perf_counter()
    previous, previous_table = _previous(store, say)
    step("previous", started)

    started = time.perf_counter()
    say(f"query running on {engine.name}")
    table = engine.run(sql, progress=say)
    step("query", started)

    started = time.perf_counter()
    say(f"validating {table.num_rows:,} rows")
    table = validate(table, rules, previous)
    changes = diff(
        table,
        previous_table,
        key_column=rules.key_column,
        previous_version=previous.version if previous else None,
    )
    step("validate", started)

    started = time.perf_counter()
    say(f"publishing to {store.uri}")
    published = publish_table(
        store,
        table,
        key_column=rules.key_column,
        now=now(),
        source={"engine": engine.name, **(source or {})},
        extra_files={CHANGES_NAME: json.dumps(changes.to_dict(), indent=2).encode()},
    )
    step("publish", started)
    return BuildResult(published.manifest, published.announced, published.current, changes, seconds)


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
        return DuckDBEngine(dict(settings.tables))
    import boto3
    from botocore.config import Config

    # Standard mode retries throttling (Athena's TooManyRequestsException) with jittered backoff;
    # total_max_attempts counts the first try too.
    retries = Config(retries={"mode": "standard", "total_max_attempts": 6})
    return AthenaEngine(
        boto3.client("athena", config=retries),
        boto3.client("s3", config=retries),
        workgroup=settings.workgroup,
        database=settings.database,
        staging_uri=settings.staging_uri or "",
        deadline_seconds=settings.deadline_seconds,
        sleep=sleep,
    )


def make_store(uri: str) -> ObjectStore:
    """The store a root URI names, with a boto3 S3 client for ``s3://``."""
    if parse_uri(uri)[0] == "s3":
        import boto3

        return open_store(uri, s3_client=boto3.client("s3"))
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
    exc: SnapshotInvalidError, store: ObjectStore, now: datetime
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


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry ``loaders.build.handler``: one scheduled build from the environment.

    A rejected or failed build raises, so the invocation counts as an error and alarms fire;
    the pointer is untouched in that case.
    """
    _structured_logging()
    settings = BuildSettings.from_env()
    allow = bool(isinstance(event, dict) and event.get("allow_row_change") is True)
    try:
        result = build(
            make_engine(settings),
            make_store(settings.snapshot_uri),
            settings.sql,
            rules_from(settings, allow_row_change=allow),
            source={"workgroup": settings.workgroup, "database": settings.database},
        )
    except SnapshotInvalidError as exc:
        # The report names example keys: it goes to the staging prefix, not to the logs.
        staging = make_store(settings.staging_uri or settings.snapshot_uri)
        rejected = report_rejection(exc, staging, datetime.now(UTC))
        logger.error("%s; the pointer was not moved", rejected)
        raise rejected from None
    except LoaderError:
        logger.exception("build failed; the pointer was not moved")
        raise
    summary = result.to_dict()
    logger.info("build published %s", summary["version"], extra={"build": summary})
    return summary
