"""Builds under an operator's pin, and the build record every run leaves behind.

While ``CURRENT`` is pinned a build publishes its version for inspection but does not announce
it, and ends ``pinned``; a pin written while a build announces makes its compare-and-swap fail,
and the re-read ends it pinned too. Every run writes ``builds/latest.json`` and a kept
``builds/<stamp>.json`` with counts and times, never a key; a failed record write never fails
the build.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest

import loaders.build
from loaders.build import Outcome, build, handler
from loaders.engines import DuckDBEngine
from loaders.errors import BuildRejectedError, QueryFailedError, StoreError
from loaders.manifest import MANIFEST_NAME, POINTER_KEY, snapshot_key, try_read_pointer
from loaders.ops_pointer import pin, unpin
from loaders.records import LATEST_KEY, BuildRecord, read_latest
from loaders.store import FileStore, S3Store
from loaders.validate import Rules
from tests.conftest import BUCKET, PREFIX, T0, customers, publish
from tests.integration.rawstore import stored_keys

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from pathlib import Path

    from loaders.build import BuildResult
    from loaders.store import ObjectStore, StoredObject

IDS = [f"C{i:09d}" for i in range(1, 41)]
T1 = T0 + timedelta(hours=1)


# What differs by store is covered on both; the rest runs on file:// only.
FILE_ONLY = pytest.mark.parametrize("root", ["file"], indirect=True)


@pytest.fixture(params=["file", "moto_server"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "snapshots")
    return S3Store(request.getfixturevalue("server_s3"), BUCKET, PREFIX)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """41 customers: one added and every segment changed against ``v1``."""
    path = tmp_path / "customers.parquet"
    pq.write_table(customers([*IDS, "C000000041"], segment="ent"), path)
    return path


@pytest.fixture
def v1(root: ObjectStore) -> str:
    return publish(root, customers(IDS), T0)


def run_build(store: Any, source: Path, now: datetime = T1) -> BuildResult:
    return build(
        DuckDBEngine({"customers": source}),
        store,
        "SELECT * FROM customers",
        Rules("customer_id"),
        now=lambda: now,
        progress=lambda _message: None,
    )


@dataclass
class ProxyStore:
    """Forwards to ``inner``; ``after_get(key)`` runs after each get, ``before_put(key)`` before
    each put (and may raise)."""

    inner: ObjectStore
    after_get: Callable[[str], None] = lambda _key: None
    before_put: Callable[[str], None] = lambda _key: None
    puts: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return self.inner.uri

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        obj = self.inner.get(key, if_none_match=if_none_match)
        self.after_get(key)
        return obj

    def put(self, key: str, body: bytes, **conditions: Any) -> str:
        self.before_put(key)
        etag = self.inner.put(key, body, **conditions)
        self.puts.append(key)
        return etag

    def list_prefixes(self, prefix: str) -> list[str]:
        return self.inner.list_prefixes(prefix)

    def now(self) -> Any:
        return self.inner.now()


# --- builds under a pin -----------------------------------------------------------------------


def test_build_while_pinned_publishes_for_inspection_and_ends_pinned(
    root: ObjectStore, source: Path, v1: str
) -> None:
    pin(root, v1, by="alice", at=T1, reason="incident 42")

    result = run_build(root, source)

    after = try_read_pointer(root)
    assert (result.outcome, result.current, result.announced) == (Outcome.PINNED, v1, False)
    assert (after.version, after.pin.reason) == (v1, "incident 42")
    assert snapshot_key(result.manifest.version, MANIFEST_NAME) in stored_keys(root)


def test_pin_written_during_a_builds_announce_fails_its_swap_and_ends_it_pinned(
    root: ObjectStore, source: Path, v1: str
) -> None:
    proxy = ProxyStore(root)

    def operator_pins(key: str) -> None:
        # The builder has just read CURRENT to announce (its manifest is written): pin now.
        wrote_manifest = any(k.endswith(MANIFEST_NAME) for k in proxy.puts)
        if key == POINTER_KEY and wrote_manifest and try_read_pointer(root).pin is None:
            pin(root, v1, by="alice", at=T1, reason="incident 42")

    proxy.after_get = operator_pins

    result = run_build(proxy, source)

    after = try_read_pointer(root)
    assert result.outcome is Outcome.PINNED
    assert (after.version, after.pin.by) == (v1, "alice")
    assert POINTER_KEY not in proxy.puts  # the builder's swap never landed


@FILE_ONLY
def test_after_unpin_the_next_build_announces(root: ObjectStore, source: Path, v1: str) -> None:
    pin(root, v1, by="alice", at=T1, reason="incident 42")
    unpin(root)

    result = run_build(root, source)

    assert result.outcome is Outcome.ANNOUNCED
    assert try_read_pointer(root).version == result.manifest.version


# --- build records ----------------------------------------------------------------------------


def test_build_writes_latest_and_a_kept_record_of_its_outcome_and_counts(
    root: ObjectStore, source: Path, v1: str
) -> None:
    result = run_build(root, source)

    record = read_latest(root)
    kept = [k for k in stored_keys(root) if k.startswith("builds/") and k != LATEST_KEY]
    assert (record.outcome, record.version, record.current) == (
        "announced",
        result.manifest.version,
        result.manifest.version,
    )
    assert (record.rows, record.changes) == (41, {"added": 1, "removed": 0, "changed": 40})
    assert {"previous", "query", "validate", "publish", "changes"} <= set(record.seconds)
    assert record.finished_at == T1 and record.started_at <= T1
    assert len(kept) == 1
    assert json.loads(root.read(kept[0])) == json.loads(root.read(LATEST_KEY))


@FILE_ONLY
def test_unchanged_build_writes_only_its_record(root: ObjectStore, source: Path) -> None:
    first = run_build(root, source)
    snapshots = {k for k in stored_keys(root) if not k.startswith("builds/")}

    again = run_build(root, source, now=T1 + timedelta(hours=1))

    record = read_latest(root)
    kept = [k for k in stored_keys(root) if k.startswith("builds/") and k != LATEST_KEY]
    assert again.outcome is Outcome.UNCHANGED
    assert (record.outcome, record.version, record.changes) == (
        "unchanged",
        first.manifest.version,
        {"added": 0, "removed": 0, "changed": 0},
    )
    assert "query" not in record.seconds
    assert len(kept) == 2
    assert {k for k in stored_keys(root) if not k.startswith("builds/")} == snapshots


@FILE_ONLY
def test_build_record_holds_no_customer_key(root: ObjectStore, source: Path, v1: str) -> None:
    run_build(root, source)

    assert b"C0000" not in root.read(LATEST_KEY)


@FILE_ONLY
def test_pinned_build_records_its_outcome(root: ObjectStore, source: Path, v1: str) -> None:
    pin(root, v1, by="alice", at=T1, reason="incident 42")

    result = run_build(root, source)

    record = read_latest(root)
    assert (record.outcome, record.version, record.current) == (
        "pinned",
        result.manifest.version,
        v1,
    )


def test_a_failed_record_write_is_a_warning_not_a_failed_build(
    root: ObjectStore, source: Path, v1: str, caplog: pytest.LogCaptureFixture
) -> None:
    def no_records(key: str) -> None:
        if key.startswith("builds/"):
            raise StoreError("cannot write builds/: AccessDenied")

    with caplog.at_level(logging.WARNING, logger="loaders.records"):
        result = run_build(ProxyStore(root, before_put=no_records), source)

    assert result.outcome is Outcome.ANNOUNCED
    assert [r.getMessage() for r in caplog.records] == [
        f"build record not saved to {root.uri}: StoreError"
    ]


# --- records of builds that raise, written by the Lambda handler --------------------------


@pytest.fixture
def lambda_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileStore:
    store = FileStore(tmp_path / "snapshots")
    for name in ("QUERY_FILE", "CONTRACT_COLUMNS", "MIN_ROWS", "MAX_ROW_CHANGE", "KEY_COLUMN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SNAPSHOT_URI", store.uri)
    monkeypatch.setenv("ENGINE", "duckdb")
    monkeypatch.setattr(loaders.build, "_structured_logging", lambda: None)
    return store


def test_handler_records_a_rejected_build_with_counts_and_no_keys(
    lambda_root: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    duplicated = "SELECT 'C000000777' AS customer_id UNION ALL SELECT 'C000000777'"
    monkeypatch.setenv("QUERY_SQL", duplicated)

    with pytest.raises(BuildRejectedError):
        handler({}, None)

    record = read_latest(lambda_root)
    assert (record.outcome, record.version) == ("rejected", None)
    assert "1 duplicate keys" in record.error
    assert "C000000777" not in lambda_root.read(LATEST_KEY).decode()


def test_handler_records_a_failed_build_by_its_error_type(
    lambda_root: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUERY_SQL", "SELECT * FROM no_such_table")

    with pytest.raises(QueryFailedError):
        handler({}, None)

    record = read_latest(lambda_root)
    assert (record.outcome, record.error) == ("failed", "QueryFailedError")
    assert record.finished_at >= record.started_at


def test_build_record_round_trips_through_json() -> None:
    record = BuildRecord("announced", T0, T1, "20261123T120000Z-0a1b2c3d", rows=3)

    assert BuildRecord.from_json(json.dumps(record.to_dict()).encode()) == record
