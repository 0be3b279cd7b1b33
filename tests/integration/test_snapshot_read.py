"""Reading snapshots back on every store: verified roundtrip, and each kind of damage refused."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from loaders.errors import ObjectNotFoundError, SnapshotInvalidError
from loaders.manifest import POINTER_KEY, read_pointer, snapshot_key
from loaders.readback import ReadBackWorker
from loaders.snapshot import (
    SnapshotReader,
    describe,
    encode_table,
    read_snapshot,
    write_snapshot,
)
from tests.conftest import T0, customers, publish
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

if TYPE_CHECKING:
    from collections.abc import Iterator

    from loaders.store import FileStore, ObjectStore

DATA = "data.parquet"
MANIFEST = "manifest.json"
OTHER_VERSION = "20261122T000000Z-0badc0de"
ROOT = Path(__file__).resolve().parents[2]


def _rewrite_manifest(store: ObjectStore, of: str, **changes: object) -> None:
    key = snapshot_key(of, MANIFEST)
    doc = json.loads(raw_read(store, key))
    raw_write(store, key, json.dumps({**doc, **changes}).encode())


# --- roundtrip ------------------------------------------------------------------------------


def test_read_snapshot_returns_the_published_rows(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    snapshot = read_snapshot(any_store, version)

    assert snapshot.table.to_pylist() == small_table.to_pylist()


def test_read_snapshot_returns_the_manifest(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    manifest = read_snapshot(any_store, version).manifest

    assert (manifest.version, manifest.key_column, manifest.row_count) == (
        version,
        "customer_id",
        3,
    )


def test_dictionary_encoded_snapshot_reads_back_equal(any_store: ObjectStore) -> None:
    table = customers([f"C{i:09d}" for i in range(200)])
    version = publish(any_store, table)

    snapshot = read_snapshot(any_store, version)

    assert snapshot.table.to_pylist() == table.to_pylist()


def test_reader_pointer_names_the_published_version(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    pointer = SnapshotReader(any_store).read_pointer()

    assert pointer is not None
    assert pointer.version == version


def test_reader_pointer_if_none_match_unchanged_is_none(
    any_store: ObjectStore, small_table
) -> None:
    publish(any_store, small_table)
    reader = SnapshotReader(any_store)
    pointer = reader.read_pointer()

    assert reader.read_pointer(if_none_match=pointer.etag) is None


def test_reader_pointer_of_empty_root_raises_object_not_found(any_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        SnapshotReader(any_store).read_pointer()


# --- damaged data ---------------------------------------------------------------------------


def test_flipped_bytes_in_data_fail_sha256(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    key = snapshot_key(version, DATA)
    raw_write(any_store, key, flip_bytes(raw_read(any_store, key)))

    with pytest.raises(SnapshotInvalidError, match="sha256 mismatch"):
        read_snapshot(any_store, version)


def test_one_flipped_bit_in_data_fails_sha256(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    key = snapshot_key(version, DATA)
    body = bytearray(raw_read(any_store, key))
    body[len(body) // 3] ^= 0x01
    raw_write(any_store, key, bytes(body))

    with pytest.raises(SnapshotInvalidError, match="sha256 mismatch"):
        read_snapshot(any_store, version)


def test_data_of_wrong_size_is_rejected(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    key = snapshot_key(version, DATA)
    body = raw_read(any_store, key)
    raw_write(any_store, key, body + b"\0")

    with pytest.raises(SnapshotInvalidError, match=f"{len(body) + 1} bytes, manifest says"):
        read_snapshot(any_store, version)


def test_truncated_data_is_rejected(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    key = snapshot_key(version, DATA)
    raw_write(any_store, key, raw_read(any_store, key)[:100])

    with pytest.raises(SnapshotInvalidError, match="100 bytes, manifest says"):
        read_snapshot(any_store, version)


def test_data_swapped_with_its_manifest_updated_fails_row_count(
    any_store: ObjectStore, small_table
) -> None:
    # A consistent-looking forgery: right size and hash, wrong contents.
    version = publish(any_store, small_table)
    forged = encode_table(customers(["C1", "C2", "C3", "C4"]), "customer_id")
    raw_write(any_store, snapshot_key(version, DATA), forged)
    _rewrite_manifest(
        any_store,
        version,
        bytes=len(forged),
        sha256=hashlib.sha256(forged).hexdigest(),
    )

    with pytest.raises(SnapshotInvalidError, match="4 rows, manifest says 3"):
        read_snapshot(any_store, version)


def test_data_with_other_columns_than_the_manifest_is_rejected(
    any_store: ObjectStore, small_table
) -> None:
    version = publish(any_store, small_table)
    manifest_key = snapshot_key(version, MANIFEST)
    doc = json.loads(raw_read(any_store, manifest_key))
    doc["columns"][1]["type"] = "int64"
    raw_write(any_store, manifest_key, json.dumps(doc).encode())

    with pytest.raises(SnapshotInvalidError, match="columns differ"):
        read_snapshot(any_store, version)


def test_missing_data_raises_object_not_found(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    doc = json.loads(raw_read(any_store, snapshot_key(version, MANIFEST)))
    raw_write(
        any_store,
        snapshot_key(OTHER_VERSION, MANIFEST),
        json.dumps({**doc, "version": OTHER_VERSION}).encode(),
    )

    with pytest.raises(ObjectNotFoundError):
        read_snapshot(any_store, OTHER_VERSION)


# --- damaged manifest -----------------------------------------------------------------------
# Parsing does not depend on the store, so the long case lists run on disk only; one case per
# kind of damage runs on every store.


def test_manifest_naming_another_version_is_rejected(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    for name in (DATA, MANIFEST):  # an honest copy of a snapshot, under another version's name
        raw_write(
            any_store,
            snapshot_key(OTHER_VERSION, name),
            raw_read(any_store, snapshot_key(version, name)),
        )

    with pytest.raises(SnapshotInvalidError, match=f"manifest names version {version}"):
        read_snapshot(any_store, OTHER_VERSION)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"[]", b'"manifest"', b"\xff\xfe"],
    ids=["empty", "truncated", "text", "list", "string", "not utf-8"],
)
def test_manifest_that_is_not_a_json_object_is_rejected(
    file_store: FileStore, small_table, body: bytes
) -> None:
    version = publish(file_store, small_table)
    raw_write(file_store, snapshot_key(version, MANIFEST), body)

    with pytest.raises(SnapshotInvalidError, match="bad manifest"):
        read_snapshot(file_store, version)


def test_bad_manifest_json_is_rejected(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    raw_write(any_store, snapshot_key(version, MANIFEST), b'{"format": 1, "version": ')

    with pytest.raises(SnapshotInvalidError, match="bad manifest"):
        read_snapshot(any_store, version)


@pytest.mark.parametrize(
    "changes",
    [
        {"sha256": None},
        {"bytes": "100"},
        {"row_count": True},
        {"created_at": "2026-11-23T12:00:00"},
        {"columns": "customer_id"},
        {"version": "../CURRENT"},
    ],
    ids=["sha256 null", "bytes text", "row_count bool", "naive created_at", "columns", "version"],
)
def test_manifest_with_a_mistyped_field_is_rejected(
    file_store: FileStore, small_table, changes: dict
) -> None:
    version = publish(file_store, small_table)
    _rewrite_manifest(file_store, version, **changes)

    with pytest.raises(SnapshotInvalidError):
        read_snapshot(file_store, version)


def test_manifest_of_unknown_format_is_rejected(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    _rewrite_manifest(any_store, version, format=2)

    with pytest.raises(SnapshotInvalidError, match="format 2"):
        read_snapshot(any_store, version)


# --- damaged pointer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"20261123T120000Z-abcdef01",
        b"[]",
        b"{}",
        b'{"version": null}',
        b'{"version": "../../etc/passwd"}',
        b'{"version": "CURRENT"}',
    ],
    ids=["empty", "truncated", "bare version", "list", "no version", "null", "path", "CURRENT"],
)
def test_bad_pointer_is_rejected(file_store: FileStore, small_table, body: bytes) -> None:
    publish(file_store, small_table)
    raw_write(file_store, POINTER_KEY, body)

    with pytest.raises(SnapshotInvalidError, match="bad"):
        read_pointer(file_store)


def test_bad_pointer_json_is_rejected(any_store: ObjectStore, small_table) -> None:
    publish(any_store, small_table)
    raw_write(any_store, POINTER_KEY, b'{"version": "2026')

    with pytest.raises(SnapshotInvalidError, match="bad pointer"):
        read_pointer(any_store)


def test_pointer_to_a_missing_version_reads_as_object_not_found(
    any_store: ObjectStore, small_table
) -> None:
    publish(any_store, small_table)
    raw_write(any_store, POINTER_KEY, json.dumps({"version": OTHER_VERSION}).encode())
    reader = SnapshotReader(any_store)

    with pytest.raises(ObjectNotFoundError):
        reader.read(reader.read_pointer().version)


# --- read back before announcing -------------------------------------------------------------


def retyped_by_parquet(n: int = 3) -> pa.Table:
    """``customers`` plus one column of each type Parquet hands back as another."""
    table = customers([f"C{i:09d}" for i in range(n)])
    return (
        table.append_column("seen_at", pa.array(range(n), pa.timestamp("s", tz="UTC")))
        .append_column("since", pa.array([date(2024, 1, 1) + timedelta(days=i) for i in range(n)],
                                         pa.date64()))
        .append_column("opens", pa.array(range(n), pa.int32()).view(pa.time32("s")))
        .append_column("scores", pa.array([[float(i)] for i in range(n)]))
        .append_column("labels", pa.array([[("k", str(i))] for i in range(n)],
                                          pa.map_(pa.string(), pa.string())))
    )  # fmt: skip


READ_BACK_TYPES = {
    "seen_at": "timestamp[ms, tz=UTC]",
    "since": "date32[day]",
    "opens": "time32[ms]",
    "scores": "list<element: double>",
    "labels": "map<string, string ('labels')>",
}


def test_manifest_gives_the_types_a_reader_reads_back(any_store: ObjectStore) -> None:
    version = publish(any_store, retyped_by_parquet())

    snapshot = read_snapshot(any_store, version)  # a reader checks the columns against these

    types = {c.name: c.type for c in snapshot.manifest.columns}
    assert {name: types[name] for name in READ_BACK_TYPES} == READ_BACK_TYPES


def test_manifest_gives_the_bytes_of_the_decoded_table(any_store: ObjectStore) -> None:
    version = publish(any_store, retyped_by_parquet())

    snapshot = read_snapshot(any_store, version)

    assert snapshot.manifest.table_bytes == snapshot.table.nbytes


def test_manifest_carries_query_start_and_publish_times(file_store: FileStore) -> None:
    started, published = T0.replace(hour=11), T0.replace(minute=5)

    manifest = write_snapshot(
        file_store, customers(["C1"]), version="20261123T110000Z-00000001",
        key_column="customer_id", created_at=T0, query_started_at=started,
        published_at=published,
    )  # fmt: skip

    stored = read_snapshot(file_store, manifest.version).manifest
    assert (stored.query_started_at, stored.published_at) == (started, published)


def test_describe_without_a_read_back_takes_the_types_from_the_parquet_footer() -> None:
    table = retyped_by_parquet()

    manifest = describe(
        table, encode_table(table, "customer_id"), version=OTHER_VERSION,
        key_column="customer_id", created_at=T0,
    )  # fmt: skip

    types = {c.name: c.type for c in manifest.columns}
    assert {name: types[name] for name in READ_BACK_TYPES} == READ_BACK_TYPES
    assert manifest.table_bytes is None


def _data_file(store: FileStore, version: str) -> Path:
    return store.root / snapshot_key(version, DATA)


def test_readback_by_hand_reports_what_a_reader_gets_without_pandas(
    file_store: FileStore,
) -> None:
    version = publish(file_store, retyped_by_parquet(200))
    command = [sys.executable, "-m", "loaders.readback", str(_data_file(file_store, version))]

    done = subprocess.run(
        [*command, "customer_id"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    manifest = read_snapshot(file_store, version).manifest
    assert report["columns"] == [[c.name, c.type] for c in manifest.columns]
    assert (report["row_count"], report["table_bytes"]) == (200, manifest.table_bytes)
    assert (report["rows_checked"], report["pandas_imported"]) == (101, False)


def test_readback_by_hand_of_a_file_that_is_not_parquet_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 but not really")

    done = subprocess.run(
        [sys.executable, "-m", "loaders.readback", str(path), "customer_id"], cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert (done.returncode, done.stdout) == (1, "")
    assert "read-back: unreadable Parquet" in done.stderr


@pytest.fixture(scope="module")
def worker() -> Iterator[ReadBackWorker]:
    """One worker for the module (a child costs most of a second); each test leaves it working."""
    worker = ReadBackWorker(timeout_seconds=60)
    yield worker
    worker.close()


def test_worker_answers_many_checks_with_one_child(worker: ReadBackWorker) -> None:
    body = encode_table(customers(["C1", "C2"]), "customer_id")
    worker.check(body, "customer_id")
    pid = worker.pid

    reads = [worker.check(body, "customer_id").row_count for _ in range(3)]

    assert (reads, worker.pid) == ([2, 2, 2], pid)


def test_worker_keeps_its_child_after_a_rejected_snapshot(worker: ReadBackWorker) -> None:
    worker.check(encode_table(customers(["C1"]), "customer_id"), "customer_id")
    pid = worker.pid

    with pytest.raises(SnapshotInvalidError, match="key column 'nope' is missing"):
        worker.check(encode_table(customers(["C1"]), "customer_id"), "nope")

    assert worker.pid == pid


def test_worker_rejects_bytes_that_are_not_parquet(worker: ReadBackWorker) -> None:
    with pytest.raises(SnapshotInvalidError, match="read-back: unreadable Parquet"):
        worker.check(b"not parquet", "customer_id")


def test_worker_replaces_a_child_that_died(worker: ReadBackWorker) -> None:
    body = encode_table(customers(["C1"]), "customer_id")
    worker.check(body, "customer_id")
    dead = worker.pid
    os.kill(dead, signal.SIGKILL)

    assert worker.check(body, "customer_id").row_count == 1
    assert worker.pid not in (None, dead)


def test_worker_past_its_deadline_is_stopped_and_replaced() -> None:
    late = ReadBackWorker(timeout_seconds=0)  # no child answers before the first poll
    body = encode_table(customers(["C1"]), "customer_id")
    try:
        with pytest.raises(SnapshotInvalidError, match="did not finish within 0s"):
            late.check(body, "customer_id")

        assert late.pid is None
        late.timeout_seconds = 60
        assert late.check(body, "customer_id").row_count == 1
    finally:
        late.close()
