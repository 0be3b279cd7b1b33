"""SharedSource: one mapped copy per version in a shared directory, and every way out of it.

Each test builds real SharedSources over the in-memory source (which decodes with the real
``decode_snapshot``) and one ``tmp_path`` directory; two instances over one directory stand for
two processes. Locks are real flock(2) locks, which exclude each other between separately
opened files even inside one process.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest

from loaders.errors import SnapshotInvalidError
from loaders.index import KeyIndex
from service.shared import SharedSource, data_file_name
from tests.conftest import T0, FakeClock, customers
from tests.unit.conftest import TTL_SECONDS, InMemorySource, make_cache

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from loaders.manifest import Manifest
    from loaders.snapshot import Snapshot

IDS = ["C000000001", "C000000002", "C000000003"]
LOG = "tests.unit.shared"


class CountingSource(InMemorySource):
    """The in-memory source, recording the version of every ``read_data`` (every decode)."""

    def __init__(self) -> None:
        super().__init__()
        self.data_reads: list[str] = []

    def read_data(self, manifest: Manifest) -> Snapshot:
        self.data_reads.append(manifest.version)
        return super().read_data(manifest)


@pytest.fixture
def source() -> CountingSource:
    return CountingSource()


@pytest.fixture
def share_dir(tmp_path: Path) -> Path:
    return tmp_path / "share"


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger(LOG)


def shared(source: CountingSource, share_dir: Path, **options: Any) -> SharedSource:
    """One "process": a SharedSource over ``share_dir`` that never really waits."""
    clock = options.pop("clock", FakeClock())
    options.setdefault("sleep", clock.advance)
    options.setdefault("logger", logging.getLogger(LOG))
    return SharedSource(source, share_dir, clock=clock, **options)


def manifest_of(source: InMemorySource, table: pa.Table) -> Manifest:
    return source.read_manifest(source.put(table))


def files(share_dir: Path) -> list[str]:
    return sorted(path.name for path in share_dir.iterdir())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG and r.levelname == "WARNING"]


@pytest.fixture
def held_lock(share_dir: Path) -> Iterator[Any]:
    """Take ``<version>.lock`` as another live process would; released at the end."""
    fds: list[int] = []

    def hold(version: str) -> None:
        share_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(share_dir / f"{version}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds.append(fd)

    yield hold
    for fd in fds:
        os.close(fd)


# --- the protocol -----------------------------------------------------------------------------


def test_first_reader_writes_and_the_next_maps_without_decoding(
    source: CountingSource, share_dir: Path
) -> None:
    manifest = manifest_of(source, customers(IDS))
    first, second = shared(source, share_dir), shared(source, share_dir)

    written = first.read_data(manifest)
    copy = share_dir / data_file_name(manifest)
    inode = copy.stat().st_ino
    mapped = second.read_data(manifest)

    assert source.data_reads == [manifest.version]
    assert (first.last_load.how, second.last_load.how) == ("written", "mapped")
    assert copy.stat().st_ino == inode
    assert mapped.table.equals(written.table)
    assert mapped.manifest == manifest


def test_mapped_table_is_the_decoded_table(source: CountingSource, share_dir: Path) -> None:
    table = customers(IDS)
    manifest = manifest_of(source, table)
    private = source.read_data(manifest).table

    mapped = shared(source, share_dir).read_data(manifest).table

    assert mapped.equals(private)
    assert mapped.schema.metadata == private.schema.metadata  # the copy's header is not shown
    index = KeyIndex(mapped, "customer_id")
    assert index.get("C000000002") == KeyIndex(private, "customer_id").get("C000000002")


def test_pointer_manifest_and_other_reads_go_to_the_wrapped_source(
    source: CountingSource, share_dir: Path
) -> None:
    version = source.publish(customers(IDS))
    share = shared(source, share_dir)

    assert share.read_pointer().version == version
    assert share.read_manifest(version).version == version
    assert share.blobs is source.blobs  # e.g. the tiered reads: whatever the source offers
    assert not share_dir.exists()  # nothing is written before data is read


def test_two_threads_at_once_decode_and_write_once(source: CountingSource, share_dir: Path) -> None:
    manifest = manifest_of(source, customers(IDS))
    inside, go_on = threading.Event(), threading.Event()
    decode = source.read_data

    def slow_decode(m: Manifest) -> Snapshot:
        inside.set()  # the writer holds the lock now
        assert go_on.wait(timeout=30)
        return decode(m)

    source.read_data = slow_decode  # type: ignore[method-assign]
    # The waiter's pause lets the writer go on; its clock never moves, so it waits to the end.
    writer = shared(source, share_dir)
    waiter = shared(source, share_dir, sleep=lambda _: go_on.set())
    results: dict[str, Snapshot] = {}
    first = threading.Thread(target=lambda: results.setdefault("w", writer.read_data(manifest)))
    first.start()
    assert inside.wait(timeout=30)
    results["m"] = waiter.read_data(manifest)
    first.join(timeout=30)

    assert source.data_reads == [manifest.version]
    assert (writer.last_load.how, waiter.last_load.how) == ("written", "mapped")
    assert results["m"].table.equals(results["w"].table)


def test_crashed_writers_temp_file_and_lock_are_cleaned(
    source: CountingSource, share_dir: Path
) -> None:
    manifest = manifest_of(source, customers(IDS))
    share_dir.mkdir(mode=0o700)
    name = data_file_name(manifest)
    # What a writer that died mid-write leaves: its lock file (flock died with it) and a
    # half-written temp file. Neither may be mapped.
    (share_dir / f"{manifest.version}.lock").touch()
    (share_dir / f"{name}.tmp-k3x9_a").write_bytes(b"ARROW1\x00\x00half")

    share = shared(source, share_dir)
    snapshot = share.read_data(manifest)

    assert share.last_load.how == "written"
    assert files(share_dir) == sorted([name, f"{manifest.version}.lock"])
    assert snapshot.table.num_rows == len(IDS)


def test_cut_short_copy_is_deleted_and_written_again(
    source: CountingSource, share_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(source, customers(IDS))
    shared(source, share_dir).read_data(manifest)
    copy = share_dir / data_file_name(manifest)
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])

    share = shared(source, share_dir)
    snapshot = share.read_data(manifest)

    assert share.last_load.how == "written"
    assert source.data_reads == [manifest.version] * 2
    assert snapshot.table.equals(source.read_data(manifest).table)
    assert any("unusable" in line for line in warnings(caplog))


def test_copy_naming_another_snapshot_is_never_mapped(
    source: CountingSource, share_dir: Path
) -> None:
    # Two snapshots with one version (two stores, one clock): their copies differ by sha256.
    other = CountingSource()
    manifest = manifest_of(source, customers(IDS))
    impostor = manifest_of(other, customers(["C000000009"]))
    assert impostor.version == manifest.version
    assert impostor.sha256 != manifest.sha256
    shared(other, share_dir).read_data(impostor)

    share = shared(source, share_dir)
    snapshot = share.read_data(manifest)

    assert share.last_load.how == "written"
    assert snapshot.table.column("customer_id").to_pylist() == IDS
    assert files(share_dir) == sorted([data_file_name(manifest), f"{manifest.version}.lock"])


def test_copy_whose_header_names_another_snapshot_is_rewritten(
    source: CountingSource, share_dir: Path
) -> None:
    other = CountingSource()
    manifest = manifest_of(source, customers(IDS))
    impostor = manifest_of(other, customers(["C000000009"]))
    shared(other, share_dir).read_data(impostor)
    # The other snapshot's copy, renamed to this one's name: only its header tells.
    (share_dir / data_file_name(impostor)).rename(share_dir / data_file_name(manifest))

    share = shared(source, share_dir)
    snapshot = share.read_data(manifest)

    assert share.last_load.how == "written"
    assert snapshot.table.column("customer_id").to_pylist() == IDS


def test_copy_that_disagrees_with_the_manifest_is_not_mapped(
    source: CountingSource, share_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(source, customers(IDS))
    shared(source, share_dir).read_data(manifest)
    # Same name and header, one row more in the manifest (this source decodes by its own).
    lying = dataclasses.replace(manifest, row_count=manifest.row_count + 1)
    share = shared(source, share_dir)

    share.read_data(lying)

    assert share.last_load.how == "private"
    assert share.last_load.reason == "3 rows, the manifest says 4"
    assert not (share_dir / data_file_name(manifest)).exists()
    assert len(warnings(caplog)) == 2  # the bad copy, then the private copy


# --- falling back to a private copy -----------------------------------------------------------


def test_lock_held_past_the_wait_falls_back_to_a_private_copy(
    source: CountingSource, share_dir: Path, held_lock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(source, customers(IDS))
    held_lock(manifest.version)
    clock = FakeClock()
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock.advance(seconds)

    share = shared(source, share_dir, clock=clock, sleep=pause, lock_wait_seconds=2.0)
    snapshot = share.read_data(manifest)

    assert share.last_load.how == "private"
    assert snapshot.table.num_rows == len(IDS)
    assert 2.0 <= sum(pauses) < 2.2
    assert max(pauses) <= 0.1
    assert warnings(caplog) == [
        f"snapshot {manifest.version}: not shared, serving a private copy: "
        "another process held the lock for over 2 s"
    ]
    assert not (share_dir / data_file_name(manifest)).exists()


def test_not_enough_free_space_falls_back_with_one_log_line(
    source: CountingSource, share_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(source, customers(IDS))
    full = type("Usage", (), {"total": 1 << 40, "free": 4096})()
    share = shared(source, share_dir, disk_usage=lambda _: full)

    snapshot = share.read_data(manifest)

    assert share.last_load.how == "private"
    assert KeyIndex(snapshot.table, "customer_id").get("C000000001") is not None
    [line] = warnings(caplog)
    assert "MB free" in line
    assert "C000000001" not in caplog.text
    assert files(share_dir) == [f"{manifest.version}.lock"]


def test_over_budget_falls_back_with_one_log_line(
    source: CountingSource, share_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(source, customers(IDS))
    share = shared(source, share_dir, max_bytes=1024)

    share.read_data(manifest)

    assert share.last_load.how == "private"
    [line] = warnings(caplog)
    assert "SHARE_MAX_MB" in line


def test_over_budget_removes_other_versions_first(source: CountingSource, share_dir: Path) -> None:
    old = manifest_of(source, customers(IDS))
    new = manifest_of(source, customers(["C000000004", "C000000005"]))
    share = shared(source, share_dir)
    share.read_data(old)
    # Room for one copy (each is the table's bytes plus 1 MB of slack), not two.
    share.max_bytes = (share_dir / data_file_name(old)).stat().st_size + (1 << 20) + 4096

    share.read_data(new)

    assert share.last_load.how == "written"
    assert files(share_dir) == sorted([data_file_name(new), f"{new.version}.lock"])


def test_full_file_system_while_writing_falls_back_and_leaves_no_temp_file(
    source: CountingSource,
    share_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = manifest_of(source, customers(IDS))

    def no_space(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pa.ipc, "new_file", no_space)
    share = shared(source, share_dir)
    snapshot = share.read_data(manifest)

    assert share.last_load.how == "private"
    assert snapshot.table.num_rows == len(IDS)
    assert warnings(caplog) == [
        f"snapshot {manifest.version}: not shared, serving a private copy: "
        "the file system is full (No space left on device)"
    ]
    assert files(share_dir) == [f"{manifest.version}.lock"]
    assert source.data_reads == [manifest.version]  # the one decode serves privately


def test_directory_others_can_write_is_not_used(
    source: CountingSource, share_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(source, customers(IDS))
    share_dir.mkdir()
    share_dir.chmod(0o777)

    share = shared(source, share_dir)
    share.read_data(manifest)

    assert share.last_load.how == "private"
    assert "only this user can write" in warnings(caplog)[0]
    assert files(share_dir) == []


def test_any_other_os_error_falls_back(
    source: CountingSource, share_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(source, customers(IDS))
    share_dir.write_text("a file where the directory should be")

    share = shared(source, share_dir)
    snapshot = share.read_data(manifest)

    assert share.last_load.how == "private"
    assert snapshot.table.num_rows == len(IDS)
    assert len(warnings(caplog)) == 1


def test_source_errors_reach_the_caller_and_release_the_lock(
    source: CountingSource, share_dir: Path
) -> None:
    manifest = manifest_of(source, customers(IDS))
    source.corrupt(manifest.version)
    share = shared(source, share_dir)

    with pytest.raises(SnapshotInvalidError, match="sha256"):
        share.read_data(manifest)

    fd = os.open(share_dir / f"{manifest.version}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if it were still held
    finally:
        os.close(fd)


# --- clean-up ---------------------------------------------------------------------------------


def test_other_versions_are_removed_once_a_new_one_maps(
    source: CountingSource, share_dir: Path
) -> None:
    old = manifest_of(source, customers(IDS))
    new = manifest_of(source, customers(["C000000004", "C000000005"]))
    serving_old = shared(source, share_dir).read_data(old)

    shared(source, share_dir).read_data(new)

    assert files(share_dir) == sorted([data_file_name(new), f"{new.version}.lock"])
    # A process still serving the old version keeps its mapping.
    assert serving_old.table.column("customer_id").to_pylist() == IDS


def test_a_reader_that_maps_also_cleans_up(source: CountingSource, share_dir: Path) -> None:
    old = manifest_of(source, customers(IDS))
    new = manifest_of(source, customers(["C000000004"]))
    shared(source, share_dir).read_data(new)
    (share_dir / f"{old.version}.lock").touch()
    (share_dir / f"{data_file_name(old)}.tmp-zz9").write_bytes(b"left over")

    share = shared(source, share_dir)
    share.read_data(new)

    assert share.last_load.how == "mapped"
    assert files(share_dir) == sorted([data_file_name(new), f"{new.version}.lock"])


def test_version_another_process_is_writing_is_not_swept(
    source: CountingSource, share_dir: Path, held_lock: Any
) -> None:
    busy = manifest_of(source, customers(IDS))
    new = manifest_of(source, customers(["C000000004"]))
    held_lock(busy.version)
    temp = share_dir / f"{data_file_name(busy)}.tmp-busy1"
    temp.write_bytes(b"being written")

    shared(source, share_dir).read_data(new)

    assert temp.exists()
    assert (share_dir / f"{busy.version}.lock").exists()


def test_files_this_module_did_not_write_are_left_alone(
    source: CountingSource, share_dir: Path
) -> None:
    manifest = manifest_of(source, customers(IDS))
    share_dir.mkdir(mode=0o700)
    for name in ("notes.txt", "20260101T000000Z-0000000a.parquet", "x.lock"):
        (share_dir / name).write_text("keep")

    shared(source, share_dir).read_data(manifest)

    assert {"notes.txt", "20260101T000000Z-0000000a.parquet", "x.lock"} <= set(files(share_dir))


# --- no outside string reaches a path ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", "../../etc/passwd"),
        ("version", "20261123T120000Z-00000001/../../x"),
        ("version", None),
        ("sha256", "../" * 21 + "a"),
        ("sha256", "A" * 64),
    ],
)
def test_bad_version_or_sha_never_reaches_a_path(
    source: CountingSource, share_dir: Path, field: str, value: object
) -> None:
    manifest = dataclasses.replace(manifest_of(source, customers(IDS)), **{field: value})

    with pytest.raises(SnapshotInvalidError, match="bad"):
        shared(source, share_dir).read_data(manifest)

    assert not share_dir.exists()
    assert source.data_reads == []


def test_negative_budget_is_refused(source: CountingSource, share_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        SharedSource(source, share_dir, max_bytes=-1)


def test_lock_file_swept_between_open_and_flock_is_not_trusted(
    source: CountingSource, share_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = manifest_of(source, customers(IDS))
    lock = share_dir / f"{manifest.version}.lock"
    real_flock = fcntl.flock
    swept: list[int] = []

    def flock_after_a_sweep(fd: int, operation: int) -> None:
        # The first time: another process removes the lock file (a sweep) and a third makes
        # a new one, after this process opened the old one and before it locks it.
        if not swept and lock.exists():
            swept.append(os.fstat(fd).st_ino)
            lock.unlink()
            lock.touch()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_sweep)
    share = shared(source, share_dir)
    share_dir.mkdir(mode=0o700)
    with share._locked(manifest.version):
        # What this process holds is the file at the path, not the removed one.
        other = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    assert swept
    assert lock.stat().st_ino != swept[0]


def test_caches_in_two_processes_share_one_copy_and_follow_the_pointer(
    source: CountingSource, share_dir: Path, clock: FakeClock, wall_clock: FakeClock
) -> None:
    first = source.publish(customers(IDS))
    caches = [make_cache(shared(source, share_dir), clock, wall_clock) for _ in range(2)]
    assert [c.get().index.get("C000000002")["customer_id"] for c in caches] == ["C000000002"] * 2

    second = source.publish(customers(["C000000007"]), created_at=T0 + timedelta(seconds=60))
    clock.advance(TTL_SECONDS + 1)
    wall_clock.advance(120)
    answers = [c.get().index.get("C000000007") for c in caches]

    assert [c.version for c in caches] == [second, second]
    assert all(answer["customer_id"] == "C000000007" for answer in answers)
    assert source.data_reads == [first, second]
    assert not any(name.startswith(first) for name in files(share_dir))
