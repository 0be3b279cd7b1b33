"""SharedSource across real processes: several spawned Pythons on one share directory.

Each child builds what the lookup function builds (``SnapshotReader(FileStore)`` wrapped in a
``SharedSource``, then a ``KeyIndex``) and reports what it did. Decodes are counted in a file
each child appends to, since the children share nothing else.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
from typing import TYPE_CHECKING, Any

import pytest

from loaders.index import KeyIndex
from loaders.snapshot import SnapshotReader
from loaders.store import FileStore
from service.shared import SharedSource, data_file_name
from tests.conftest import T0, customers, publish

if TYPE_CHECKING:
    from pathlib import Path

    from loaders.manifest import Manifest
    from loaders.snapshot import Snapshot

PROCESSES = 4
IDS = [f"C{i:09d}" for i in range(1, 2001)]
WAIT_SECONDS = 60


class CountedReader(SnapshotReader):
    """A SnapshotReader that appends a line to ``tally`` for every decode."""

    def __init__(self, store: FileStore, tally: Path) -> None:
        super().__init__(store)
        self.tally = tally

    def read_data(self, manifest: Manifest) -> Snapshot:
        with self.tally.open("a") as out:
            out.write(f"{os.getpid()}\n")
        return super().read_data(manifest)


def _serve(root: str, share_dir: str, tally: str, version: str, start: Any, out: Any) -> None:
    """Child: load ``version`` through a SharedSource once ``start`` lets all go at once."""
    from pathlib import Path

    source = SharedSource(CountedReader(FileStore(root), Path(tally)), share_dir)
    manifest = source.read_manifest(version)
    start.wait(WAIT_SECONDS)
    snapshot = source.read_data(manifest)
    index = KeyIndex(snapshot.table, "customer_id")
    copy = Path(share_dir) / data_file_name(manifest)
    out.put((source.last_load.how, copy.stat().st_ino, index.get(IDS[1234]), len(index)))


def _crash_while_writing(share_dir: str, version: str, name: str) -> None:
    """Child: take the version's lock, start a copy, and die without cleaning up."""
    from pathlib import Path

    fd = os.open(Path(share_dir) / f"{version}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (Path(share_dir) / f"{name}.tmp-crash1").write_bytes(b"ARROW1\x00\x00half a copy")
    os._exit(1)


@pytest.fixture
def spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


@pytest.fixture
def snapshot_root(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "snapshots"
    return root, publish(FileStore(root), customers(IDS), now=T0)


def test_processes_starting_together_decode_once_and_map_one_file(
    spawn: Any, snapshot_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, version = snapshot_root
    share_dir, tally = tmp_path / "share", tmp_path / "decodes"
    start, out = spawn.Barrier(PROCESSES), spawn.Queue()
    children = [
        spawn.Process(
            target=_serve, args=(str(root), str(share_dir), str(tally), version, start, out)
        )
        for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    results = [out.get(timeout=WAIT_SECONDS) for _ in children]
    for child in children:
        child.join(WAIT_SECONDS)

    assert [child.exitcode for child in children] == [0] * PROCESSES
    assert sorted(how for how, *_ in results) == ["mapped"] * (PROCESSES - 1) + ["written"]
    assert len(tally.read_text().splitlines()) == 1
    assert len({inode for _, inode, *_ in results}) == 1
    assert all(row == results[0][2] and rows == len(IDS) for _, _, row, rows in results)
    assert results[0][2]["customer_id"] == IDS[1234]


def test_writer_that_died_holding_the_lock_leaves_nothing_in_the_way(
    spawn: Any, snapshot_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, version = snapshot_root
    share_dir = tmp_path / "share"
    share_dir.mkdir(mode=0o700)
    reader = SnapshotReader(FileStore(root))
    manifest = reader.read_manifest(version)
    name = data_file_name(manifest)
    crashed = spawn.Process(target=_crash_while_writing, args=(str(share_dir), version, name))
    crashed.start()
    crashed.join(WAIT_SECONDS)
    assert crashed.exitcode == 1

    source = SharedSource(reader, share_dir)
    snapshot = source.read_data(manifest)

    assert source.last_load.how == "written"
    assert sorted(p.name for p in share_dir.iterdir()) == sorted([name, f"{version}.lock"])
    assert KeyIndex(snapshot.table, "customer_id").get(IDS[0])["customer_id"] == IDS[0]


def test_process_serving_an_old_version_keeps_it_after_another_sweeps_it(
    spawn: Any, snapshot_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, old_version = snapshot_root
    store, share_dir, tally = FileStore(root), tmp_path / "share", tmp_path / "decodes"
    source = SharedSource(SnapshotReader(store), share_dir)
    serving = KeyIndex(source.read_data(source.read_manifest(old_version)).table, "customer_id")
    new_version = publish(store, customers(IDS[:10], segment="enterprise"), now=T0.replace(hour=13))
    start, out = spawn.Barrier(1), spawn.Queue()

    child = spawn.Process(
        target=_serve, args=(str(root), str(share_dir), str(tally), new_version, start, out)
    )
    child.start()
    how, *_ = out.get(timeout=WAIT_SECONDS)
    child.join(WAIT_SECONDS)

    assert how == "written"
    assert not any(p.name.startswith(old_version) for p in share_dir.iterdir())
    assert serving.get(IDS[1999])["customer_id"] == IDS[1999]  # pages of a removed file
    assert serving.get(IDS[5])["segment"] == "smb"
