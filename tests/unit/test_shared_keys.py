"""Keys of several widths: the shared copy carries them padded once, and KeyIndex uses that.

Without it each process pads its own copy of the key column (about 100 MB at 10M rows).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pytest

from loaders.errors import SnapshotInvalidError
from loaders.index import KeyIndex, padded_keys
from service.shared import SharedSnapshot, SharedSource
from tests.conftest import customers
from tests.unit.conftest import InMemorySource

if TYPE_CHECKING:
    from pathlib import Path

    from loaders.manifest import Manifest
    from loaders.snapshot import Snapshot

VARYING = ["C1", "C22", "C333", "C4444", "C55555", "C9"]
FIXED = ["C000000001", "C000000002", "C000000003"]


def load_twice(source: InMemorySource, table: pa.Table, share_dir: Path) -> SharedSnapshot:
    """Write the copy with one SharedSource, map it with another; the mapped snapshot."""
    manifest = source.read_manifest(source.put(table))
    log = logging.getLogger("tests.unit.shared")
    SharedSource(source, share_dir, logger=log).read_data(manifest)
    snapshot = SharedSource(source, share_dir, logger=log).read_data(manifest)
    assert isinstance(snapshot, SharedSnapshot)
    return snapshot


def test_keys_of_several_widths_are_searched_in_the_shared_copy(tmp_path: Path) -> None:
    source = InMemorySource()
    snapshot = load_twice(source, customers(VARYING), tmp_path / "share")
    private = KeyIndex(customers(VARYING), "customer_id")

    index = KeyIndex(snapshot.table, "customer_id", padded_keys=snapshot.padded_keys)

    assert snapshot.table.column_names == customers(VARYING).column_names
    assert snapshot.padded_keys.type == pa.binary(6)
    # The index's keys are the mapped bytes themselves, not a copy.
    assert index._keys.ctypes.data == snapshot.padded_keys.buffers()[1].address
    for key in [*VARYING, "C", "C3", "C33", "C333 ", "C55555x", "D"]:
        assert index.get(key) == private.get(key)
    assert index.get_many(["C9", "C1", "C0"]) == private.get_many(["C9", "C1", "C0"])


def test_keys_of_one_width_need_no_padded_copy(tmp_path: Path) -> None:
    snapshot = load_twice(InMemorySource(), customers(FIXED), tmp_path / "share")

    assert snapshot.padded_keys is None


@pytest.mark.parametrize(
    ("padded", "message"),
    [
        (pa.array([b"C1", b"C2"], pa.binary(2)), "must be 6 non-null"),
        (pa.array(["C1"] * 6), "must be 6 non-null"),
        (pa.array([b"C1\0"] * 6, pa.binary(3)), "narrower than the keys"),
        (padded_keys(pa.array(["C0", "C22", "C333", "C4444", "C55555", "C9"])), "differ"),
    ],
)
def test_padded_keys_that_do_not_fit_the_keys_are_refused(padded: pa.Array, message: str) -> None:
    with pytest.raises(SnapshotInvalidError, match=message):
        KeyIndex(customers(VARYING), "customer_id", padded_keys=padded)


def test_padded_keys_out_of_order_are_refused() -> None:
    # Past 1,024 rows values are compared at sampled rows only; the order is checked in full.
    ids = sorted(f"C{n}" for n in range(1, 3001))
    keys = padded_keys(pa.array(ids)).to_pylist()
    sampled = set(np.linspace(0, len(ids) - 1, 1024, dtype=np.int64).tolist())
    i = next(i for i in range(len(ids) - 1) if not {i, i + 1} & sampled)
    keys[i], keys[i + 1] = keys[i + 1], keys[i]

    with pytest.raises(SnapshotInvalidError, match="not unique and sorted"):
        KeyIndex(customers(ids), "customer_id", padded_keys=pa.array(keys, pa.binary(5)))


class ChunkedSource(InMemorySource):
    """Decodes into a chunk per row, as snapshots in many row groups decode into several."""

    def read_data(self, manifest: Manifest) -> Snapshot:
        snapshot = super().read_data(manifest)
        chunked = pa.Table.from_batches(snapshot.table.to_batches(max_chunksize=1))
        return dataclasses.replace(snapshot, table=chunked)


@pytest.mark.parametrize("ids", [VARYING, FIXED], ids=["varying", "fixed"])
def test_copy_holds_one_chunk_per_column(tmp_path: Path, ids: list[str]) -> None:
    snapshot = load_twice(ChunkedSource(), customers(ids), tmp_path / "share")

    assert [column.num_chunks for column in snapshot.table.columns] == [1] * 6
    index = KeyIndex(snapshot.table, "customer_id", padded_keys=snapshot.padded_keys)
    assert index.get(ids[-1])["customer_id"] == ids[-1]
