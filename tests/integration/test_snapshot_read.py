"""Reading snapshots back on every store: verified roundtrip, and each kind of damage refused."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

from loaders.errors import ObjectNotFoundError, SnapshotInvalidError
from loaders.manifest import POINTER_KEY, read_pointer, snapshot_key
from loaders.snapshot import SnapshotReader, encode_table, read_snapshot
from tests.conftest import customers, publish
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

if TYPE_CHECKING:
    from loaders.store import FileStore, ObjectStore

DATA = "data.parquet"
MANIFEST = "manifest.json"
OTHER_VERSION = "20261122T000000Z-0badc0de"


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
