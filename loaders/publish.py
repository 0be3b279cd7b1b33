"""Publish a table as a new snapshot: check, write data, write manifest, then announce.

After Netflix Hollow's producer: the pointer is written last, by compare-and-swap, so a reader
sees either the old snapshot or the complete new one, and a failed publish never moves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loaders.errors import PreconditionFailedError
from loaders.manifest import Manifest, Pointer, announce, new_version, try_read_pointer
from loaders.snapshot import check_keys, write_snapshot

if TYPE_CHECKING:
    from datetime import datetime

    import pyarrow as pa

    from loaders.store import ObjectStore

logger = logging.getLogger(__name__)

MAX_ANNOUNCE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish did: the new manifest, and whether ``CURRENT`` now names it."""

    manifest: Manifest
    announced: bool
    current: str


def publish_table(
    store: ObjectStore,
    table: pa.Table,
    *,
    key_column: str,
    now: datetime,
    source: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Published:
    """Check ``table``, write it as a new version, and point ``CURRENT`` at it.

    Parameters
    ----------
    store : ObjectStore
        The snapshot root.
    table : pa.Table
        Rows sorted by ``key_column``, keys unique and non-empty.
    key_column : str
        The column lookups use.
    now : datetime
        Aware UTC time of the build; it becomes the version's time and ``created_at``.
    source : dict, optional
        Free-form provenance stored in the manifest.
    extra_files : dict of str to bytes, optional
        More files of the snapshot (``changes.json``), written before the manifest.

    Returns
    -------
    Published
        ``announced`` is False when a newer version was announced by another builder meanwhile.

    Raises
    ------
    SnapshotInvalidError
        If the table fails a check; nothing is written.
    """
    check_keys(table, key_column)
    version = new_version(now)
    manifest = write_snapshot(
        store,
        table,
        version=version,
        key_column=key_column,
        created_at=now,
        source=source,
        extra_files=extra_files,
    )
    return Published(manifest, *announce_latest(store, version))


def _moment(version: str) -> str:
    """The time part of a version. Two versions of the same second are equals: the random
    suffix says nothing about order, so the later announcement wins."""
    return version.partition("-")[0]


def announce_latest(store: ObjectStore, version: str) -> tuple[bool, str]:
    """Move ``CURRENT`` to ``version`` unless a newer version holds it; never move it back.

    Returns whether it moved, and the version ``CURRENT`` names afterwards.
    """
    for _ in range(MAX_ANNOUNCE_ATTEMPTS):
        previous: Pointer | None = try_read_pointer(store)
        if previous is not None and _moment(previous.version) > _moment(version):
            logger.warning("not announcing %s: %s is newer", version, previous.version)
            return False, previous.version
        try:
            announce(store, version, previous=previous)
        except PreconditionFailedError:
            logger.info("pointer moved while announcing %s; re-reading", version)
            continue
        return True, version
    raise PreconditionFailedError(f"pointer kept moving; gave up announcing {version}")
