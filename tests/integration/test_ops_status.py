"""``status``, ``diff`` and ``verify`` (loaders.ops_status) over ``file://`` and S3 on a moto
server: what an operator reads before deciding to roll back."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from loaders.manifest import snapshot_key
from loaders.ops_pointer import pin
from loaders.ops_status import BadVersionError, NotKeptError, diff, status, verify
from loaders.records import LATEST_KEY, BuildRecord, write_record
from loaders.store import FileStore, S3Store
from tests.conftest import BUCKET, PREFIX, T0, customers, publish
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

if TYPE_CHECKING:
    from pathlib import Path

    from loaders.store import ObjectStore

IDS = [f"C{i:09d}" for i in range(1, 21)]
NOW = T0 + timedelta(hours=5)


# What differs by store is covered on both; the rest runs on file:// only.
FILE_ONLY = pytest.mark.parametrize("root", ["file"], indirect=True)


@pytest.fixture(params=["file", "moto_server"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "snapshots")
    return S3Store(request.getfixturevalue("server_s3"), BUCKET, PREFIX)


@pytest.fixture
def versions(root: ObjectStore) -> list[str]:
    """Three versions an hour apart; the last is current, the others are previous."""
    return [
        publish(root, customers(IDS[:18]), T0),
        publish(root, customers(IDS[:19]), T0 + timedelta(hours=1)),
        publish(root, customers(IDS[:20], segment="ent"), T0 + timedelta(hours=2)),
    ]


# --- status -----------------------------------------------------------------------------------


@FILE_ONLY
def test_status_of_an_empty_root_names_no_current_version(root: ObjectStore) -> None:
    found = status(root, now=NOW)

    assert (found.current, found.versions, found.last_build) == (None, (), None)


def test_status_lists_kept_versions_newest_first_with_pointer_marks(
    root: ObjectStore, versions: list[str]
) -> None:
    found = status(root, now=NOW)

    assert [v.version for v in found.versions] == versions[::-1]
    assert [(v.current, v.previous, v.pinned) for v in found.versions] == [
        (True, False, False),
        (False, True, False),
        (False, True, False),
    ]
    assert [v.rows for v in found.versions] == [20, 19, 18]
    assert all(v.state == "complete" and v.bytes for v in found.versions)
    assert found.versions[0].created_at == T0 + timedelta(hours=2)


@FILE_ONLY
def test_status_gives_the_current_versions_age_at_now(
    root: ObjectStore, versions: list[str]
) -> None:
    assert status(root, now=NOW).age_seconds == 3 * 3600


def test_status_shows_who_pinned_the_current_version_when_and_why(
    root: ObjectStore, versions: list[str]
) -> None:
    pin(root, versions[-1], by="alice", at=NOW, reason="hold for QA")

    found = status(root, now=NOW)

    assert (found.pin.by, found.pin.at, found.pin.reason) == ("alice", NOW, "hold for QA")
    assert found.versions[0].pinned


def test_status_marks_a_version_without_a_manifest_incomplete(
    root: ObjectStore, versions: list[str]
) -> None:
    stray = "20261123T030000Z-0badc0de"
    raw_write(root, snapshot_key(stray, "data.parquet"), b"half a build")

    found = status(root, now=NOW)

    assert {v.version: v.state for v in found.versions}[stray] == "incomplete"


def test_status_reports_the_last_build_record(root: ObjectStore, versions: list[str]) -> None:
    record = BuildRecord("pinned", NOW, NOW, versions[-1], changes={"added": 1})
    write_record(root, record)

    assert status(root, now=NOW).last_build == record


@FILE_ONLY
def test_status_reports_an_unreadable_build_record_as_a_problem(
    root: ObjectStore, versions: list[str]
) -> None:
    raw_write(root, LATEST_KEY, b"{not json")

    found = status(root, now=NOW)

    assert found.last_build is None
    assert [p.split(":")[0] for p in found.problems] == ["bad build record"]


@FILE_ONLY
def test_status_json_is_plain_data(root: ObjectStore, versions: list[str]) -> None:
    doc = json.loads(json.dumps(status(root, now=NOW).to_dict()))

    assert set(doc) == {
        "root", "current", "age_seconds", "pinned", "pin", "previous", "versions",
        "last_build", "problems",
    }  # fmt: skip
    assert doc["previous"] == versions[1::-1]


# --- diff -------------------------------------------------------------------------------------


def test_diff_counts_rows_added_removed_and_changed_between_any_two_kept_versions(
    root: ObjectStore, versions: list[str]
) -> None:
    found = diff(root, versions[0], versions[2])

    assert (found.added, found.removed, found.changed) == (2, 0, 18)
    assert (found.old_rows, found.new_rows) == (18, 20)
    assert found.examples["added"] == IDS[18:20]


@FILE_ONLY
def test_diff_counts_changed_rows_per_column(root: ObjectStore, versions: list[str]) -> None:
    found = diff(root, versions[1], versions[2])

    assert found.changed_by_column == {
        "account_id": 0, "segment": 19, "region": 0, "tier": 0, "updated_at": 0,
    }  # fmt: skip


@FILE_ONLY
def test_diff_backwards_counts_the_other_way(root: ObjectStore, versions: list[str]) -> None:
    found = diff(root, versions[2], versions[0])

    assert (found.added, found.removed, found.changed) == (0, 2, 18)


@FILE_ONLY
def test_diff_names_columns_added_removed_and_retyped(root: ObjectStore) -> None:
    table = customers(IDS)
    old = publish(root, table, T0)
    wider = table.append_column("score", pa.array(range(20), pa.int64()))
    wider = wider.drop_columns(["tier"]).set_column(2, "segment", pa.array([1] * 20, pa.int32()))
    new = publish(root, wider, T0 + timedelta(hours=1))

    found = diff(root, old, new)

    assert [(c.name, c.old_type, c.new_type) for c in found.columns] == [
        ("segment", "string", "int32"),
        ("score", None, "int64"),
        ("tier", "string", None),
    ]


@FILE_ONLY
def test_diff_of_a_version_not_kept_is_refused(root: ObjectStore, versions: list[str]) -> None:
    with pytest.raises(NotKeptError, match="20261124T000000Z-00000000 is not kept"):
        diff(root, versions[0], "20261124T000000Z-00000000")


@FILE_ONLY
def test_diff_of_a_malformed_version_is_refused(root: ObjectStore, versions: list[str]) -> None:
    with pytest.raises(BadVersionError, match=r"bad version '\.\./CURRENT'"):
        diff(root, "../CURRENT", versions[0])


# --- verify -----------------------------------------------------------------------------------


def test_verify_reads_a_good_version_as_a_reader_would(
    root: ObjectStore, versions: list[str]
) -> None:
    checked = verify(root, versions[1])

    assert (checked.ok, checked.rows, checked.key_column, checked.error) == (
        True,
        19,
        "customer_id",
        None,
    )


def test_verify_reports_a_flipped_byte_as_a_sha256_mismatch(
    root: ObjectStore, versions: list[str]
) -> None:
    key = snapshot_key(versions[1], "data.parquet")
    raw_write(root, key, flip_bytes(raw_read(root, key)))

    checked = verify(root, versions[1])

    assert not checked.ok
    assert "sha256 mismatch" in checked.error


def test_verify_checks_every_block_of_the_tiered_layout(
    root: ObjectStore, versions: list[str]
) -> None:
    good = verify(root, versions[1])
    key = snapshot_key(versions[1], "blocks.bin")
    body = bytearray(raw_read(root, key))
    body[-10] ^= 0xFF  # inside the last block only: data.parquet still verifies
    raw_write(root, key, bytes(body))

    checked = verify(root, versions[1])

    assert good.ok and good.blocks == 1
    assert not checked.ok
    assert checked.error == f"snapshot {versions[1]}: block 0: sha256 mismatch"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("data.parquet", "data.parquet is missing"),
        ("blocks.arrow", "a blocks file is missing"),
        ("blocks.bin", "a blocks file is missing"),
    ],
)
def test_verify_reports_a_missing_file(
    root: ObjectStore, versions: list[str], name: str, error: str
) -> None:
    key = snapshot_key(versions[1], name)
    if isinstance(root, FileStore):
        (root.root / key).unlink()
    else:
        root.client.delete_object(Bucket=root.bucket, Key=f"{root.prefix}/{key}")

    checked = verify(root, versions[1])

    assert (checked.ok, checked.error) == (False, f"snapshot {versions[1]}: {error}")


@FILE_ONLY
def test_verify_of_a_version_not_kept_raises(root: ObjectStore, versions: list[str]) -> None:
    with pytest.raises(NotKeptError):
        verify(root, "20261124T000000Z-00000000")
