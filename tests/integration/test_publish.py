"""Publishing on every store: layout, manifest, Parquet, write order, rejections, announcing."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loaders.errors import PreconditionFailedError, SnapshotInvalidError
from loaders.manifest import (
    MAX_CLOCK_SKEW_SECONDS,
    POINTER_KEY,
    announce,
    check_version,
    new_version,
    snapshot_key,
    try_read_pointer,
)
from loaders.publish import MAX_ANNOUNCE_ATTEMPTS, publish_table
from loaders.snapshot import MAX_EXAMPLES, read_snapshot, write_snapshot
from tests.conftest import T0, customers, publish
from tests.integration.rawstore import RecordingStore, raw_read, raw_write, stored_keys

if TYPE_CHECKING:
    from collections.abc import Callable

    from loaders.store import FileStore, ObjectStore

VERSION_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
LATER = T0 + timedelta(hours=1)


def _data(store: ObjectStore, version: str) -> bytes:
    return raw_read(store, snapshot_key(version, "data.parquet"))


def _manifest_doc(store: ObjectStore, version: str) -> dict:
    return json.loads(raw_read(store, snapshot_key(version, "manifest.json")))


def _pointer_doc(store: ObjectStore) -> dict:
    return json.loads(raw_read(store, POINTER_KEY))


# --- what a publish writes ------------------------------------------------------------------


def test_publish_writes_data_manifest_and_pointer(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    assert stored_keys(any_store) == {
        f"snapshots/{version}/data.parquet",
        f"snapshots/{version}/blocks.bin",
        f"snapshots/{version}/blocks.arrow",
        f"snapshots/{version}/manifest.json",
        "CURRENT",
    }


def test_pointer_names_the_published_version(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    assert _pointer_doc(any_store) == {"version": version, "previous": []}


def test_publish_reports_the_announced_version(any_store: ObjectStore, small_table) -> None:
    published = publish_table(any_store, small_table, key_column="customer_id", now=T0)

    assert (published.announced, published.current) == (True, published.manifest.version)


def test_version_is_the_data_cutoff_time_plus_eight_hex(
    any_store: ObjectStore, small_table
) -> None:
    version = publish(any_store, small_table)

    assert VERSION_RE.fullmatch(version)
    assert version.startswith("20261123T120000Z-")


def test_manifest_has_exactly_the_documented_fields(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    assert set(_manifest_doc(any_store, version)) == {
        "format",
        "version",
        "created_at",
        "query_started_at",
        "published_at",
        "key_column",
        "row_count",
        "columns",
        "sha256",
        "bytes",
        "table_bytes",
        "blocks",
        "source",
    }


def test_manifest_records_query_start_and_publish_times(
    any_store: ObjectStore, small_table
) -> None:
    published = publish_table(
        any_store, small_table, key_column="customer_id", now=T0, published_at=LATER
    )

    doc = _manifest_doc(any_store, published.manifest.version)

    assert (doc["created_at"], doc["query_started_at"], doc["published_at"]) == (
        "2026-11-23T12:00:00Z",
        "2026-11-23T12:00:00Z",
        "2026-11-23T13:00:00Z",
    )
    assert published.manifest.version.startswith("20261123T120000Z-")


def test_manifest_describes_the_snapshot(any_store: ObjectStore, small_table) -> None:
    source = {"query": "SELECT * FROM customers", "engine": "duckdb"}
    version = publish_table(
        any_store, small_table, key_column="customer_id", now=T0, source=source
    ).manifest.version

    doc = _manifest_doc(any_store, version)

    assert doc["format"] == 1
    assert doc["version"] == version
    assert doc["key_column"] == "customer_id"
    assert doc["row_count"] == 3
    assert doc["source"] == source


def test_manifest_created_at_is_iso_8601_utc(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    created_at = _manifest_doc(any_store, version)["created_at"]

    assert created_at == "2026-11-23T12:00:00Z"
    assert datetime.fromisoformat(created_at) == T0
    assert datetime.fromisoformat(created_at).utcoffset() == timedelta(0)


def test_manifest_created_at_of_non_utc_time_is_written_in_utc(any_store: ObjectStore) -> None:
    paris = T0.astimezone(ZoneInfo("Europe/Paris"))
    version = publish(any_store, customers(["C1"]), now=paris)

    assert _manifest_doc(any_store, version)["created_at"] == "2026-11-23T12:00:00Z"
    assert version.startswith("20261123T120000Z-")


def test_manifest_lists_columns_with_arrow_types(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    assert _manifest_doc(any_store, version)["columns"] == [
        {"name": "customer_id", "type": "string"},
        {"name": "account_id", "type": "string"},
        {"name": "segment", "type": "string"},
        {"name": "region", "type": "string"},
        {"name": "tier", "type": "string"},
        {"name": "updated_at", "type": "timestamp[us, tz=UTC]"},
    ]


def test_manifest_names_dictionary_columns_by_value_type(any_store: ObjectStore) -> None:
    # 100 rows with one segment: stored dictionary-encoded, still described as "string".
    table = customers([f"C{i:09d}" for i in range(100)])
    version = publish(any_store, table)

    stored = pq.read_schema(pa.BufferReader(_data(any_store, version)))
    columns = {c["name"]: c["type"] for c in _manifest_doc(any_store, version)["columns"]}

    assert pa.types.is_dictionary(stored.field("segment").type)
    assert columns["segment"] == "string"


def test_manifest_sha256_and_bytes_match_data(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)
    data = _data(any_store, version)

    doc = _manifest_doc(any_store, version)

    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["bytes"] == len(data)


def test_data_is_zstd_compressed(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    metadata = pq.ParquetFile(pa.BufferReader(_data(any_store, version))).metadata

    compressions = {
        metadata.row_group(g).column(c).compression
        for g in range(metadata.num_row_groups)
        for c in range(metadata.num_columns)
    }
    assert compressions == {"ZSTD"}


def test_data_rows_are_sorted_by_key(any_store: ObjectStore) -> None:
    ids = [f"K{i:04d}" for i in range(0, 2000, 7)]
    version = publish(any_store, customers(ids))

    table = pq.read_table(pa.BufferReader(_data(any_store, version)))

    assert table.column("customer_id").to_pylist() == sorted(ids)


def test_data_holds_the_published_rows(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    table = pq.read_table(pa.BufferReader(_data(any_store, version)))

    assert table.to_pylist() == small_table.to_pylist()


def test_published_snapshot_reads_back_verified(any_store: ObjectStore, small_table) -> None:
    version = publish(any_store, small_table)

    snapshot = read_snapshot(any_store, version)

    assert snapshot.table.to_pylist() == small_table.to_pylist()


# --- write order ----------------------------------------------------------------------------


def test_publish_writes_data_then_manifest_then_pointer(
    any_store: ObjectStore, small_table
) -> None:
    recording = RecordingStore(any_store)

    version = publish(recording, small_table)

    assert [key for key, _ in recording.puts] == [
        f"snapshots/{version}/data.parquet",
        f"snapshots/{version}/blocks.bin",
        f"snapshots/{version}/blocks.arrow",
        f"snapshots/{version}/manifest.json",
        "CURRENT",
    ]


def test_snapshot_files_are_written_create_only(any_store: ObjectStore, small_table) -> None:
    recording = RecordingStore(any_store)

    publish(recording, small_table)

    snapshot_puts = [kwargs for key, kwargs in recording.puts if key.startswith("snapshots/")]
    assert snapshot_puts == [{"if_none_match": "*", "if_match": None}] * 4


def test_first_pointer_is_written_create_only(any_store: ObjectStore, small_table) -> None:
    recording = RecordingStore(any_store)

    publish(recording, small_table)

    assert recording.puts[-1] == ("CURRENT", {"if_none_match": "*", "if_match": None})


def test_later_pointer_is_swapped_against_the_etag_read(
    any_store: ObjectStore, small_table
) -> None:
    publish(any_store, small_table)
    etag = any_store.get("CURRENT").etag
    recording = RecordingStore(any_store)

    publish(recording, small_table, now=LATER)

    assert recording.puts[-1] == ("CURRENT", {"if_none_match": None, "if_match": etag})


# --- rejections write nothing ---------------------------------------------------------------


def _dupes(n: int) -> pa.Table:
    ids = sorted([f"D{i:03d}" for i in range(n)] * 2)
    return pa.table({"customer_id": ids, "n": list(range(len(ids)))})


REJECTED = {
    "missing key column": (
        customers(["C1", "C2"]).drop_columns(["customer_id"]),
        "key column 'customer_id' is missing",
    ),
    "null keys": (pa.table({"customer_id": [None, "C1", "C2"]}), "1 null keys"),
    "empty keys": (pa.table({"customer_id": ["", "C1", "C2"]}), "1 empty keys"),
    "duplicate keys": (_dupes(3), "3 duplicate keys"),
    "unsorted keys": (pa.table({"customer_id": ["C3", "C1", "C2"]}), "out of order"),
    "zero rows": (customers([]), "no rows"),
    "integer keys": (pa.table({"customer_id": pa.array([1, 2, 3], pa.int64())}), "string"),
    "binary keys": (pa.table({"customer_id": pa.array([b"1", b"2"], pa.binary())}), "string"),
}


@pytest.mark.parametrize(("table", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected_table_raises_snapshot_invalid(
    file_store: FileStore, table: pa.Table, message: str
) -> None:
    with pytest.raises(SnapshotInvalidError, match=message):
        publish(file_store, table)


@pytest.mark.parametrize(("table", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected_table_writes_nothing(
    any_store: ObjectStore, table: pa.Table, message: str
) -> None:
    with pytest.raises(SnapshotInvalidError):
        publish(any_store, table)

    assert stored_keys(any_store) == set()


@pytest.mark.parametrize(("table", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected_table_leaves_current_snapshot_alone(
    any_store: ObjectStore, small_table, table: pa.Table, message: str
) -> None:
    publish(any_store, small_table)
    before = {key: raw_read(any_store, key) for key in stored_keys(any_store)}

    with pytest.raises(SnapshotInvalidError):
        publish(any_store, table, now=LATER)

    assert {key: raw_read(any_store, key) for key in stored_keys(any_store)} == before


def test_rejection_reports_every_failed_check(file_store: FileStore) -> None:
    table = pa.table({"customer_id": [None, "", "C1", "C1"]})

    with pytest.raises(SnapshotInvalidError) as raised:
        publish(file_store, table)

    assert raised.value.problems == ("1 null keys", "1 empty keys", "1 duplicate keys, e.g. 'C1'")


def test_duplicate_keys_message_names_at_most_20_examples(file_store: FileStore) -> None:
    with pytest.raises(SnapshotInvalidError, match="25 duplicate keys") as raised:
        publish(file_store, _dupes(25))

    named = re.findall(r"'(D\d{3})'", str(raised.value))
    assert MAX_EXAMPLES == 20
    assert named == [f"D{i:03d}" for i in range(20)]


def test_unsorted_keys_message_names_the_out_of_order_keys(file_store: FileStore) -> None:
    table = pa.table({"customer_id": ["C1", "C3", "C2", "C4", "C0"]})

    with pytest.raises(SnapshotInvalidError, match=r"2 keys out of order, e\.g\. 'C2', 'C0'"):
        publish(file_store, table)


def test_write_snapshot_rejects_a_bad_table_and_writes_nothing(any_store: ObjectStore) -> None:
    table = pa.table({"customer_id": ["C2", "C1"]})

    with pytest.raises(SnapshotInvalidError):
        write_snapshot(
            any_store,
            table,
            version=new_version(T0, "00000000"),
            key_column="customer_id",
            created_at=T0,
        )

    assert stored_keys(any_store) == set()


# --- announcing: forward only, by compare-and-swap ------------------------------------------


def test_second_publish_moves_the_pointer(any_store: ObjectStore, small_table) -> None:
    first = publish(any_store, small_table)

    second = publish(any_store, customers(["C000000009"]), now=LATER)

    assert _pointer_doc(any_store) == {"version": second, "previous": [first]}


def test_publish_reports_the_version_it_replaced(any_store: ObjectStore, small_table) -> None:
    first = publish_table(any_store, small_table, key_column="customer_id", now=T0)

    second = publish_table(
        any_store, customers(["C000000009"]), key_column="customer_id", now=LATER
    )

    assert (first.replaced, second.replaced) == (None, first.manifest.version)


def test_pointer_keeps_the_last_three_versions_newest_first(
    any_store: ObjectStore, small_table
) -> None:
    versions = [publish(any_store, small_table, now=T0 + timedelta(minutes=m)) for m in range(5)]

    assert _pointer_doc(any_store) == {
        "version": versions[4],
        "previous": [versions[3], versions[2], versions[1]],
    }
    assert try_read_pointer(any_store).previous == (versions[3], versions[2], versions[1])


def test_old_style_pointer_reads_and_is_replaced(any_store: ObjectStore, small_table) -> None:
    old = publish(any_store, small_table)
    raw_write(any_store, POINTER_KEY, json.dumps({"version": old}).encode())

    pointer = try_read_pointer(any_store)
    newer = publish(any_store, customers(["C000000009"]), now=LATER)

    assert (pointer.version, pointer.previous) == (old, ())
    assert _pointer_doc(any_store) == {"version": newer, "previous": [old]}


def test_second_publish_keeps_the_first_snapshot(any_store: ObjectStore, small_table) -> None:
    first = publish(any_store, small_table)

    publish(any_store, customers(["C000000009"]), now=LATER)

    assert read_snapshot(any_store, first).table.to_pylist() == small_table.to_pylist()


def test_older_publish_does_not_move_the_pointer_back(any_store: ObjectStore, small_table) -> None:
    newer = publish(any_store, small_table, now=LATER)

    older = publish_table(any_store, customers(["C000000009"]), key_column="customer_id", now=T0)

    assert (older.announced, older.current, older.replaced) == (False, newer, None)
    assert _pointer_doc(any_store) == {"version": newer, "previous": []}


# --- the store's clock: no version from the future ------------------------------------------


def _store_clock_at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def test_version_stamped_too_far_ahead_of_the_store_clock_is_not_announced(
    any_store: ObjectStore, small_table
) -> None:
    first = publish(any_store, small_table)
    ahead = LATER + timedelta(seconds=MAX_CLOCK_SKEW_SECONDS + 1)

    with pytest.raises(SnapshotInvalidError, match="301s ahead of the store's clock"):
        publish_table(
            any_store,
            customers(["C000000009"]),
            key_column="customer_id",
            now=ahead,
            store_clock=_store_clock_at(LATER),
        )

    assert _pointer_doc(any_store) == {"version": first, "previous": []}


def test_version_ahead_of_the_store_clock_within_the_skew_is_announced(
    any_store: ObjectStore, small_table
) -> None:
    ahead = T0 + timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)

    published = publish_table(
        any_store, small_table, key_column="customer_id", now=ahead, store_clock=_store_clock_at(T0)
    )

    assert published.announced


def test_standing_version_far_ahead_of_the_store_clock_is_replaced_with_a_warning(
    any_store: ObjectStore, small_table, caplog: pytest.LogCaptureFixture
) -> None:
    # Announced by a builder whose clock ran an hour fast, before builders checked their clock.
    future = publish(any_store, small_table, now=T0 + timedelta(hours=1))

    with caplog.at_level(logging.WARNING, logger="loaders.publish"):
        fresh = publish_table(
            any_store,
            customers(["C000000009"]),
            key_column="customer_id",
            now=T0,
            store_clock=_store_clock_at(T0),
        )

    assert (fresh.announced, fresh.replaced) == (True, future)
    assert _pointer_doc(any_store) == {"version": fresh.manifest.version, "previous": [future]}
    assert f"replacing {future}: it is stamped 3600s ahead" in caplog.text


def test_standing_version_ahead_within_the_skew_still_wins(
    any_store: ObjectStore, small_table
) -> None:
    newer = publish(any_store, small_table, now=T0 + timedelta(seconds=MAX_CLOCK_SKEW_SECONDS))

    older = publish_table(
        any_store,
        customers(["C000000009"]),
        key_column="customer_id",
        now=T0,
        store_clock=_store_clock_at(T0),
    )

    assert (older.announced, older.current) == (False, newer)


def test_without_a_store_clock_a_future_version_stands(any_store: ObjectStore, small_table) -> None:
    future = publish(any_store, small_table, now=T0 + timedelta(hours=1))

    older = publish_table(any_store, customers(["C000000009"]), key_column="customer_id", now=T0)

    assert (older.announced, older.current) == (False, future)


@pytest.mark.parametrize("repeat", range(5))
def test_publish_in_the_same_second_moves_the_pointer(
    any_store: ObjectStore, small_table, repeat: int
) -> None:
    # Same-second versions differ only in random hex, which says nothing about order.
    first = publish(any_store, small_table)

    second = publish_table(any_store, customers(["C000000009"]), key_column="customer_id", now=T0)

    assert second.announced
    assert _pointer_doc(any_store) == {"version": second.manifest.version, "previous": [first]}


@dataclass
class RacingStore(RecordingStore):
    """Before the publisher's first pointer write lands, another builder announces ``rival``.

    The publisher's write then reaches the real store with a stale condition, so the store
    itself refuses it (412), as it would under a real race.
    """

    rival: str = ""
    raced: int = 0
    times: int = 1

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> str:
        if key == POINTER_KEY and self.raced < self.times:
            self.raced += 1
            announce(self.inner, self.rival, previous=try_read_pointer(self.inner))
        return super().put(key, body, if_none_match=if_none_match, if_match=if_match)

    @property
    def pointer_reads(self) -> int:
        return sum(1 for method, key, _ in self.calls if method == "get" and key == POINTER_KEY)


def _rival_snapshot(store: ObjectStore, now: datetime) -> str:
    version = new_version(now, "0000beef")
    write_snapshot(
        store, customers(["R000000001"]), version=version, key_column="customer_id", created_at=now
    )
    return version


def test_racing_newer_writer_makes_publisher_reread_and_yield(
    any_store: ObjectStore, small_table
) -> None:
    first = publish(any_store, small_table)
    rival = _rival_snapshot(any_store, T0 + timedelta(hours=2))
    racing = RacingStore(any_store, rival=rival)

    published = publish_table(
        racing, customers(["C000000009"]), key_column="customer_id", now=LATER
    )

    assert racing.pointer_reads == 2
    assert (published.announced, published.current) == (False, rival)
    assert _pointer_doc(any_store) == {"version": rival, "previous": [first]}


def test_racing_older_writer_makes_publisher_reread_and_win(
    any_store: ObjectStore, small_table
) -> None:
    first = publish(any_store, small_table)
    rival = _rival_snapshot(any_store, T0 + timedelta(minutes=30))
    racing = RacingStore(any_store, rival=rival)

    published = publish_table(
        racing, customers(["C000000009"]), key_column="customer_id", now=LATER
    )

    assert racing.pointer_reads == 2
    assert (published.announced, published.current) == (True, published.manifest.version)
    assert published.replaced == rival  # the version the compare-and-swap replaced
    assert _pointer_doc(any_store) == {
        "version": published.manifest.version,
        "previous": [rival, first],
    }


def test_race_for_the_first_pointer_makes_publisher_reread(any_store: ObjectStore) -> None:
    rival = _rival_snapshot(any_store, T0 - timedelta(minutes=30))
    racing = RacingStore(any_store, rival=rival)

    published = publish_table(racing, customers(["C1"]), key_column="customer_id", now=T0)

    assert racing.pointer_reads == 2
    assert _pointer_doc(any_store) == {"version": published.manifest.version, "previous": [rival]}


def test_pointer_that_keeps_moving_makes_publisher_give_up(
    any_store: ObjectStore, small_table
) -> None:
    publish(any_store, small_table)
    rivals = [_rival_snapshot(any_store, T0 + timedelta(seconds=s)) for s in range(1, 9)]

    class EverRacing(RacingStore):
        def put(self, key: str, body: bytes, **conditions: Any) -> str:
            if key == POINTER_KEY:
                self.rival = rivals[self.raced]
            return super().put(key, body, **conditions)

    racing = EverRacing(any_store, times=len(rivals))

    with pytest.raises(PreconditionFailedError, match="gave up"):
        publish(racing, customers(["C000000009"]), now=LATER)

    assert racing.pointer_reads == MAX_ANNOUNCE_ATTEMPTS


# --- versions are checked before any key is built -------------------------------------------

BAD_VERSIONS = [
    "../x",
    "../../CURRENT",
    "CURRENT",
    "",
    "20261123T000000Z-ABCDEFGH",
    "20261123T000000Z-ABCDEF01",
    "20261123T000000Z-abcdef0",
    "20261123T000000Z-abcdef012",
    "20261123T000000-abcdef01",
    "20261123t000000z-abcdef01",
    "20261123T000000Z-abcdef01\n",
    " 20261123T000000Z-abcdef01",
    "20261123T000000Z-abcdef01/../x",
    "\uff120261123T000000Z-abcdef01",  # a full-width digit two
    None,
    20261123,
    b"20261123T000000Z-abcdef01",
]


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_check_version_rejects_malformed_versions(version: object) -> None:
    with pytest.raises(SnapshotInvalidError, match="bad snapshot version"):
        check_version(version)


def test_check_version_accepts_a_well_formed_version() -> None:
    assert check_version("20261123T000000Z-abcdef01") == "20261123T000000Z-abcdef01"


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_snapshot_key_refuses_malformed_versions(version: object) -> None:
    with pytest.raises(SnapshotInvalidError):
        snapshot_key(version, "data.parquet")  # type: ignore[arg-type]


def test_read_snapshot_of_malformed_version_touches_no_key(any_store: ObjectStore) -> None:
    recording = RecordingStore(any_store)

    with pytest.raises(SnapshotInvalidError):
        read_snapshot(recording, "../CURRENT")

    assert recording.calls == []


def test_write_snapshot_of_malformed_version_writes_nothing(
    any_store: ObjectStore, small_table
) -> None:
    with pytest.raises(SnapshotInvalidError):
        write_snapshot(
            any_store, small_table, version="../x", key_column="customer_id", created_at=T0
        )

    assert stored_keys(any_store) == set()


def test_announce_of_malformed_version_writes_nothing(any_store: ObjectStore) -> None:
    with pytest.raises(SnapshotInvalidError):
        announce(any_store, "../x", previous=None)

    assert stored_keys(any_store) == set()


def test_new_version_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        new_version(datetime(2026, 11, 23, 12, 0), "abcdef01")  # noqa: DTZ001


def test_new_version_is_in_utc() -> None:
    local = datetime(2026, 11, 23, 13, 0, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))

    assert new_version(local, "abcdef01") == "20261123T130000Z-abcdef01"
