"""The builder Lambda entry, ``loaders.build.handler``, over DuckDB and a ``file://`` root.

Its return value and its log line carry the build's outcome; a superseded build is never
reported as a plain success. The handler reads the real clock, so the standing version that
supersedes it is stamped a little ahead of that clock (within the allowed skew).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

import loaders.build
from loaders.build import handler
from loaders.manifest import try_read_pointer
from loaders.publish import publish_table
from loaders.store import FileStore

if TYPE_CHECKING:
    from pathlib import Path

SQL = "SELECT 'C000000002' AS customer_id, 'gold' AS tier UNION ALL SELECT 'C000000001', 'silver'"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileStore:
    """A ``file://`` root the handler builds into, configured through the environment."""
    store = FileStore(tmp_path / "snapshots")
    for name in ("QUERY_FILE", "CONTRACT_COLUMNS", "MIN_ROWS", "MAX_ROW_CHANGE", "KEY_COLUMN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SNAPSHOT_URI", store.uri)
    monkeypatch.setenv("QUERY_SQL", SQL)
    monkeypatch.setenv("ENGINE", "duckdb")
    # Powertools would stop loaders' records from reaching caplog for the rest of the session.
    monkeypatch.setattr(loaders.build, "_structured_logging", lambda: None)
    return store


def test_announced_build_returns_and_logs_its_outcome(
    root: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="loaders.build"):
        summary = handler({}, None)

    [record] = [r for r in caplog.records if r.getMessage().startswith("build ")]
    assert (summary["outcome"], summary["announced"]) == ("announced", True)
    assert summary["current"] == summary["version"] == try_read_pointer(root).version
    assert (record.levelno, record.build["outcome"]) == (logging.INFO, "announced")


def test_superseded_build_returns_and_warns_its_outcome(
    root: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    table = pa.table({"customer_id": ["C000000001", "C000000002"], "tier": ["silver", "gold"]})
    ahead = datetime.now(UTC) + timedelta(seconds=120)
    standing = publish_table(root, table, key_column="customer_id", now=ahead).manifest.version

    with caplog.at_level(logging.INFO, logger="loaders.build"):
        summary = handler({}, None)

    [record] = [r for r in caplog.records if r.getMessage().startswith("build ")]
    assert (summary["outcome"], summary["announced"]) == ("superseded", False)
    assert summary["current"] == standing == try_read_pointer(root).version
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"build superseded: {summary['version']}; CURRENT names {standing}"
    )
