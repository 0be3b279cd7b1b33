"""Athena builds out of core: UNLOAD's files copied to local disk, then checked and written there.

Reuses ``test_athena_engine``'s moto fixtures and :class:`FakeUnload` (DuckDB playing Athena's
part of an UNLOAD, writing several extensionless Parquet files).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loaders import engines
from loaders.build import build
from loaders.snapshot import read_snapshot
from loaders.store import FileStore
from loaders.stream import StreamSettings
from loaders.validate import Rules
from tests.conftest import BUCKET, customers
from tests.integration import test_athena_engine as athena

# The moto fixtures, shared with the engine's own tests.
moto = athena.moto
source = athena.source
unload = athena.unload

SETTINGS = {
    "memory layout": StreamSettings(memory_limit="256MB"),
    "row groups": StreamSettings(memory_limit="256MB", memory_layout_max_rows=0, row_group_rows=8),
}


@pytest.mark.parametrize("layout", list(SETTINGS), ids=list(SETTINGS))
def test_athena_build_publishes_the_rows_of_every_unload_file(
    moto: athena.Moto, unload: athena.FakeUnload, tmp_path: Path, layout: str
) -> None:
    unload.files = 3
    store = FileStore(tmp_path / "root")

    result = build(
        athena.make_engine(moto.athena, moto.s3),
        store,
        athena.SQL,
        Rules("customer_id"),
        progress=lambda _message: None,
        settings=SETTINGS[layout],
    )

    assert result.outcome.value == "announced"
    assert read_snapshot(store, result.manifest.version).table.to_pylist() == (
        customers(athena.IDS).to_pylist()
    )


def test_export_copies_each_unload_file_a_bounded_chunk_at_a_time(
    moto: athena.Moto,
    unload: athena.FakeUnload,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engines, "DOWNLOAD_CHUNK_BYTES", 100)
    unload.files = 2

    files = athena.make_engine(moto.athena, moto.s3).export(athena.SQL, tmp_path / "out")

    (keys,) = unload.outputs.values()
    objects = [moto.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys]
    assert [path.read_bytes() for path in files] == objects
    assert all(path.parent == tmp_path / "out" for path in files)
