"""Publish a table as a new snapshot: check, write data, write manifest, then announce.

After Netflix Hollow's producer: the pointer is written last, by compare-and-swap, so a reader
sees either the old snapshot or the complete new one, and a failed publish never moves it.

A version's time is when its query started (the data cutoff), so the pointer only moves to a
version whose data is at least as fresh. Versions are compared with the store's clock, never
trusted blindly: a version stamped more than :data:`~loaders.manifest.MAX_CLOCK_SKEW_SECONDS`
ahead of it is refused, and one already standing in ``CURRENT`` does not block fresher builds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loaders.errors import PreconditionFailedError, SnapshotInvalidError
from loaders.manifest import (
    MAX_CLOCK_SKEW_SECONDS,
    Manifest,
    Pointer,
    announce,
    new_version,
    try_read_pointer,
    utc_text,
)
from loaders.snapshot import check_keys, write_snapshot

if TYPE_CHECKING:
    from collections.abc import Callable

    import pyarrow as pa

    from loaders.store import ObjectStore
    from loaders.stream import StagedResult

logger = logging.getLogger(__name__)

MAX_ANNOUNCE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Announcement:
    """What an announce did.

    Attributes
    ----------
    announced : bool
        Whether ``CURRENT`` now names the version; False when a newer one stands.
    current : str
        The version ``CURRENT`` names afterwards.
    replaced : str or None
        The version the compare-and-swap replaced; None for the first announce of a root, and
        when nothing was announced.
    pinned : bool
        Whether it was not announced because an operator pinned ``CURRENT``.
    """

    announced: bool
    current: str
    replaced: str | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish did: the new manifest, and whether ``CURRENT`` now names it."""

    manifest: Manifest
    announced: bool
    current: str
    replaced: str | None = None
    pinned: bool = False


def publish_table(
    store: ObjectStore,
    table: pa.Table,
    *,
    key_column: str,
    now: datetime,
    published_at: datetime | None = None,
    store_clock: Callable[[], datetime] | None = None,
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
        Aware time the rows were read (the query's start): the data cutoff. It becomes the
        version's time, ``created_at`` and ``query_started_at``.
    published_at : datetime, optional
        Aware time of the publish, recorded in the manifest; ``now`` when not given.
    store_clock : callable, optional
        The store's clock (``store.now``). When given, a version more than
        ``MAX_CLOCK_SKEW_SECONDS`` ahead of it is not announced, and a version that far ahead
        standing in ``CURRENT`` is replaced instead of blocking: see :func:`announce_latest`.
    source : dict, optional
        Free-form provenance stored in the manifest.
    extra_files : dict of str to bytes, optional
        More files of the snapshot, written before the manifest.

    Returns
    -------
    Published
        ``announced`` is False when a version whose query started later stands in ``CURRENT``,
        or when ``CURRENT`` is pinned (then ``pinned`` is True).

    Raises
    ------
    SnapshotInvalidError
        If the table fails a check (nothing is written), or the version is stamped too far
        ahead of ``store_clock`` (the snapshot is written but not announced).
    """
    check_keys(table, key_column)
    version = new_version(now)
    manifest = write_snapshot(
        store,
        table,
        version=version,
        key_column=key_column,
        created_at=now,
        query_started_at=now,
        published_at=published_at or now,
        source=source,
        extra_files=extra_files,
    )
    return _announced(store, manifest, store_clock)


def publish_staged(
    store: ObjectStore,
    staged: StagedResult,
    schema: pa.Schema,
    *,
    key_column: str,
    now: datetime,
    published_at: datetime | None = None,
    store_clock: Callable[[], datetime] | None = None,
    source: dict[str, Any] | None = None,
) -> Published:
    """:func:`publish_table` for a checked result too large to hold: written from its files,
    sorted and streamed (:func:`loaders.stream.write_staged_snapshot`), then announced."""
    from loaders.stream import write_staged_snapshot

    version = new_version(now)
    manifest = write_staged_snapshot(
        store,
        staged,
        schema,
        version=version,
        key_column=key_column,
        created_at=now,
        query_started_at=now,
        published_at=published_at or now,
        source=source,
    )
    return _announced(store, manifest, store_clock)


def _announced(
    store: ObjectStore, manifest: Manifest, store_clock: Callable[[], datetime] | None
) -> Published:
    """Announce a written snapshot (:func:`announce_latest`) and say what came of it."""
    announcement = announce_latest(store, manifest.version, store_clock=store_clock)
    return Published(
        manifest,
        announcement.announced,
        announcement.current,
        announcement.replaced,
        announcement.pinned,
    )


def _moment(version: str) -> str:
    """The time part of a version. Two versions of the same second are equals: the random
    suffix says nothing about order, so the later announcement wins."""
    return version.partition("-")[0]


def version_time(version: str) -> datetime:
    """The aware UTC time a version is stamped with (whole seconds)."""
    return datetime.strptime(_moment(version) + "+0000", "%Y%m%dT%H%M%SZ%z")


def seconds_ahead(moment: datetime, store_now: datetime) -> float:
    """How far ``moment`` is ahead of the store's clock; negative when it is behind."""
    return (moment - store_now).total_seconds()


def check_clock(moment: datetime, store_now: datetime) -> None:
    """Refuse to stamp a version at ``moment`` when it is too far ahead of the store's clock.

    Readers reject such a version, and until the store's clock caught up it would stand in
    ``CURRENT`` against every correctly stamped build.

    Raises
    ------
    SnapshotInvalidError
        If ``moment`` is more than ``MAX_CLOCK_SKEW_SECONDS`` ahead of ``store_now``.
    """
    ahead = seconds_ahead(moment, store_now)
    if ahead > MAX_CLOCK_SKEW_SECONDS:
        raise SnapshotInvalidError(
            f"version time {utc_text(moment)} is {ahead:.0f}s ahead of the store's clock "
            f"({utc_text(store_now)}), more than MAX_CLOCK_SKEW_SECONDS="
            f"{MAX_CLOCK_SKEW_SECONDS:.0f}; check this builder's clock"
        )


def _stands_in_the_way(current: Pointer, version: str, store_now: datetime | None) -> bool:
    """Whether ``current`` is newer than ``version`` and must be kept.

    A current version stamped more than ``MAX_CLOCK_SKEW_SECONDS`` ahead of the store's clock
    came from a skewed clock: keeping it would block every build until the clock caught up,
    so a correctly stamped version replaces it.
    """
    if _moment(current.version) <= _moment(version):
        return False
    if store_now is None:
        return True
    ahead = seconds_ahead(version_time(current.version), store_now)
    if ahead <= MAX_CLOCK_SKEW_SECONDS:
        return True
    logger.warning(
        "replacing %s: it is stamped %.0fs ahead of the store's clock (%s), more than "
        "MAX_CLOCK_SKEW_SECONDS=%.0f; the builder that announced it has a skewed clock",
        current.version,
        ahead,
        utc_text(store_now),
        MAX_CLOCK_SKEW_SECONDS,
    )
    return False


def announce_latest(
    store: ObjectStore, version: str, *, store_clock: Callable[[], datetime] | None = None
) -> Announcement:
    """Move ``CURRENT`` to ``version`` unless a newer version or an operator's pin holds it;
    never move it back.

    A pin is checked on every read of the pointer, and the write is a compare-and-swap on the
    ETag of that read: a pin written in between fails the swap, and the re-read sees it.

    Parameters
    ----------
    store_clock : callable, optional
        The store's clock, read after each pointer read. With it, ``version`` is refused when
        stamped more than ``MAX_CLOCK_SKEW_SECONDS`` ahead, and a standing version that far
        ahead is replaced (with a warning) rather than kept.

    Raises
    ------
    SnapshotInvalidError
        If ``version`` is stamped too far ahead of ``store_clock``.
    PreconditionFailedError
        If the pointer moved under every one of ``MAX_ANNOUNCE_ATTEMPTS`` tries.
    """
    for _ in range(MAX_ANNOUNCE_ATTEMPTS):
        current = try_read_pointer(store)
        store_now = None if store_clock is None else store_clock()
        if store_now is not None:
            check_clock(version_time(version), store_now)
        if current is not None and current.pin is not None:
            logger.warning(
                "not announcing %s: CURRENT is pinned to %s by %s",
                version,
                current.version,
                current.pin.by,
            )
            return Announcement(False, current.version, pinned=True)
        if current is not None and _stands_in_the_way(current, version, store_now):
            logger.warning("not announcing %s: %s is newer", version, current.version)
            return Announcement(False, current.version)
        try:
            announce(store, version, previous=current)
        except PreconditionFailedError:
            logger.info("pointer moved while announcing %s; re-reading", version)
            continue
        return Announcement(True, version, None if current is None else current.version)
    raise PreconditionFailedError(f"pointer kept moving; gave up announcing {version}")
