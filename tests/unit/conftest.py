"""Unit-test parts: an in-memory snapshot source and a real SnapshotCache over it.

After Hollow's ``InMemoryBlobStore``: the source keeps manifests and Parquet bytes in dicts and
verifies them with the real ``decode_snapshot`` on every read, so a corrupted blob fails the way a
corrupted S3 object would. It counts every call, which is how tests see what the cache did.
Each version is also kept in the tiered layout (``blocks.bin`` and ``blocks.arrow``, written by
the real :func:`loaders.blocks.write_blocks`), so the same tests serve in either mode.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from loaders.blocks import write_blocks
from loaders.errors import ObjectNotFoundError
from loaders.manifest import Manifest, Pointer, new_version
from loaders.snapshot import Snapshot, decode_snapshot, describe, encode_table, prepare_table
from service.cache import SnapshotCache
from tests.conftest import T0

if TYPE_CHECKING:
    from datetime import datetime

    import pyarrow as pa

    from loaders.blocks import BlockIndex
    from tests.conftest import FakeClock

TTL_SECONDS = 300.0
MAX_STALENESS_SECONDS = 3_600.0
KEY_COLUMN = "customer_id"


class InMemorySource:
    """A ``SnapshotSource`` over dicts: publish tables, move the pointer, inject failures.

    Attributes
    ----------
    pointer_reads : list of str or None
        The ``if_none_match`` of every ``read_pointer`` call, in order.
    reads : list of str
        The version of every ``read_manifest`` call (the start of every download), in order.
    block_reads : list of tuple
        ``(version, block number)`` of every ``read_block`` call (one ranged read each).
    pointer_error, read_error : Exception or None
        Raised by the next calls of ``read_pointer`` / ``read_manifest`` while set.
    """

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[Manifest, bytes]] = {}
        # version -> (blocks.arrow, blocks.bin): the tiered layout of the same rows
        self.block_blobs: dict[str, tuple[bytes, bytes]] = {}
        self.block_reads: list[tuple[str, int]] = []
        self.pointer: Pointer | None = None
        self.pointer_reads: list[str | None] = []
        self.reads: list[str] = []
        self.pointer_error: Exception | None = None
        self.read_error: Exception | None = None
        self._writes = 0

    def read_pointer(self, *, if_none_match: str | None = None) -> Pointer | None:
        self.pointer_reads.append(if_none_match)
        if self.pointer_error is not None:
            raise self.pointer_error
        if self.pointer is None:
            raise ObjectNotFoundError("memory://CURRENT does not exist")
        return None if self.pointer.etag == if_none_match else self.pointer

    def read_manifest(self, version: str) -> Manifest:
        self.reads.append(version)
        if self.read_error is not None:
            raise self.read_error
        if version not in self.blobs:
            raise ObjectNotFoundError(f"memory://snapshots/{version} does not exist")
        return self.blobs[version][0]

    def read_data(self, manifest: Manifest) -> Snapshot:
        stored, body = self.blobs[manifest.version]
        return decode_snapshot(stored, body)

    def read_block_index(self, manifest: Manifest) -> BlockIndex:
        from loaders.blocks import parse_block_index

        return parse_block_index(manifest, self.block_blobs[manifest.version][0])

    def read_block(self, manifest: Manifest, blocks: BlockIndex, number: int) -> bytes:
        self.block_reads.append((manifest.version, number))
        start = blocks.offsets[number]
        return self.block_blobs[manifest.version][1][start : start + blocks.lengths[number]]

    def put(
        self,
        table: pa.Table,
        *,
        key_column: str = KEY_COLUMN,
        created_at: datetime = T0,
    ) -> str:
        """Store ``table`` as a new version (not announced) and return the version."""
        self._writes += 1
        version = new_version(created_at, f"{self._writes:08x}")
        body = encode_table(table, key_column)
        blocks = None
        if key_column in table.column_names:  # tests also store tables no builder would
            prepared = prepare_table(table, key_column)
            sink = io.BytesIO()
            blocks, index_body = write_blocks(prepared, key_column, sink)
            self.block_blobs[version] = (index_body, sink.getvalue())
        manifest = describe(
            table,
            body,
            version=version,
            key_column=key_column,
            created_at=created_at,
            blocks=blocks,
        )
        self.blobs[version] = (manifest, body)
        return version

    def announce(self, version: str) -> Pointer:
        """Point ``CURRENT`` at ``version`` with a fresh ETag (as every S3 write gets)."""
        self._writes += 1
        chain = () if self.pointer is None else self.pointer.succeeded_by(version)
        self.pointer = Pointer(version, f'"etag-{self._writes}"', chain)
        return self.pointer

    def publish(
        self,
        table: pa.Table,
        *,
        key_column: str = KEY_COLUMN,
        created_at: datetime = T0,
    ) -> str:
        """Store ``table`` and announce it; returns the new version."""
        version = self.put(table, key_column=key_column, created_at=created_at)
        self.announce(version)
        return version

    def replace_data(self, version: str, body: bytes) -> None:
        """Store ``body`` as the data of ``version``, with a manifest matching its size and hash."""
        manifest, _ = self.blobs[version]
        digest = hashlib.sha256(body).hexdigest()
        self.blobs[version] = (replace(manifest, sha256=digest, bytes=len(body)), body)

    def corrupt(self, version: str) -> None:
        """Flip one byte in the middle of a stored snapshot, keeping its size: in its data and
        in its block index, so that either mode finds it bad when it loads the version."""
        manifest, body = self.blobs[version]
        self.blobs[version] = (manifest, _flip(body))
        if version in self.block_blobs:
            index_body, blocks_body = self.block_blobs[version]
            self.block_blobs[version] = (_flip(index_body), blocks_body)

    def corrupt_block(self, version: str, number: int = 0) -> None:
        """Flip one byte in the middle of one block of ``blocks.bin`` (found when it is read)."""
        from loaders.blocks import parse_block_index

        index_body, blocks_body = self.block_blobs[version]
        index = parse_block_index(self.blobs[version][0], index_body)
        start, length = index.offsets[number], index.lengths[number]
        block = _flip(blocks_body[start : start + length])
        self.block_blobs[version] = (
            index_body,
            blocks_body[:start] + block + blocks_body[start + length :],
        )


def _flip(body: bytes) -> bytes:
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]


@pytest.fixture
def source() -> InMemorySource:
    """An empty source: nothing announced yet."""
    return InMemorySource()


@pytest.fixture
def cache_log() -> logging.Logger:
    """The logger handed to the cache; it propagates to the root, where caplog listens."""
    return logging.getLogger("tests.unit.cache")


@pytest.fixture
def cache(
    source: InMemorySource, clock: FakeClock, wall_clock: FakeClock, cache_log: logging.Logger
) -> SnapshotCache:
    """A real SnapshotCache over ``source``, driven by fake clocks."""
    return make_cache(source, clock, wall_clock, logger=cache_log)


def make_cache(
    source: InMemorySource,
    clock: FakeClock,
    wall_clock: FakeClock,
    logger: logging.Logger | None = None,
    **options: Any,
) -> SnapshotCache:
    """A SnapshotCache with the unit tests' TTL and staleness settings, plus ``options``."""
    return SnapshotCache(
        source,
        key_column=KEY_COLUMN,
        ttl_seconds=TTL_SECONDS,
        max_staleness_seconds=MAX_STALENESS_SECONDS,
        clock=clock,
        wall_clock=wall_clock,
        logger=logger,
        **options,
    )


@pytest.fixture
def published(source: InMemorySource, small_table: pa.Table) -> str:
    """``small_table`` published and announced in ``source``; yields its version."""
    return source.publish(small_table)
