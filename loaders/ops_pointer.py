"""Operator moves of ``CURRENT``: ``rollback``, ``pin``, ``unpin`` and ``announce``.

Every move reads the pointer, verifies the target as a reader would (download, sha256, decode,
key index) and then writes the pointer by compare-and-swap on the ETag of that first read. A
builder or another operator that moved it meanwhile makes the swap fail with
:class:`~loaders.errors.PreconditionFailedError`: nothing is retried, since the operator decided
on a state that is gone. Readers follow the new pointer on their next check, as after a build.

What each move leaves in the pointer:

=============  ==============================  ===================================  =========
command        version                         previous list                        pin
=============  ==============================  ===================================  =========
rollback       newest previous, or the one     the old list without the target;    set
               given (older than current)      the version rolled back from leaves
pin            the one given (or current)      current joins it, when it moves      set
unpin          unchanged                       unchanged                            cleared
announce       the one given, back or forth    current joins it, when it moves      cleared
=============  ==============================  ===================================  =========

``announce`` refuses while ``CURRENT`` is pinned unless forced: a pin is an operator's hold,
and only ``unpin`` or ``announce --force`` (which drops it) lets go of it. The version a
rollback leaves is dropped from the previous list so that a cold reader never falls back to it
and a second rollback steps further back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loaders.manifest import Pin, Pointer, announce, utc_text
from loaders.ops_status import (
    OperatorError,
    Progress,
    Verification,
    check_version_text,
    require_current,
    verify,
)

if TYPE_CHECKING:
    from datetime import datetime

    from loaders.store import ObjectStore


class PinnedError(OperatorError):
    """``CURRENT`` is pinned, and the move would drop the pin without being asked to."""


@dataclass(frozen=True, slots=True)
class PointerChange:
    """What an operator command did to ``CURRENT``.

    Attributes
    ----------
    action : str
        ``rollback``, ``pin``, ``unpin`` or ``announce``.
    before, after : str
        The version ``CURRENT`` named before and after.
    previous : tuple of str
        The pointer's previous list afterwards.
    pin : Pin or None
        The pin afterwards.
    written : bool
        False when the pointer already said this and was left alone.
    verification : Verification or None
        The target's verification, when the version moved.
    """

    action: str
    before: str
    after: str
    previous: tuple[str, ...]
    pin: Pin | None
    written: bool = True
    verification: Verification | None = None

    @property
    def moved(self) -> bool:
        return self.before != self.after

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "before": self.before,
            "after": self.after,
            "moved": self.moved,
            "written": self.written,
            "previous": list(self.previous),
            "pinned": self.pin is not None,
            "pin": None if self.pin is None else self.pin.to_dict(),
            "verification": None if self.verification is None else self.verification.to_dict(),
        }


def _verified(store: ObjectStore, version: str, progress: Progress | None) -> Verification:
    checked = verify(store, version, progress=progress)
    if not checked.ok:
        raise OperatorError(f"version {version} failed verification: {checked.error}")
    return checked


def _swap(
    store: ObjectStore, read: Pointer, version: str, previous: tuple[str, ...], pin: Pin | None
) -> Pointer:
    """Write ``CURRENT`` = ``version`` with ``previous`` and ``pin``, if it still is ``read``.

    ``announce`` keeps ``base.succeeded_by(version)`` as the new list and swaps on
    ``base.etag``: a base naming ``version`` itself, with ``previous``, gives exactly that list.
    """
    base = dataclasses.replace(read, version=version, previous=previous)
    return announce(store, version, previous=base, pin=pin)


def rollback(
    store: ObjectStore,
    version: str | None = None,
    *,
    by: str,
    at: datetime,
    reason: str | None = None,
    progress: Progress | None = None,
) -> PointerChange:
    """Move ``CURRENT`` back to a kept, verified version and pin it there.

    Parameters
    ----------
    version : str, optional
        The target; by default the newest version in the pointer's previous list.
    by, at : str, datetime
        Who rolls back, and when (aware): the pin's who and when.
    reason : str, optional
        The pin's why; ``rollback from <current>`` by default.

    Raises
    ------
    OperatorError
        If nothing is announced, there is no previous version, the target is not older than
        the current one, or it fails verification (also BadVersionError, NotKeptError).
    PreconditionFailedError
        If ``CURRENT`` moved since it was read.
    """
    read = require_current(store)
    if version is None:
        if not read.previous:
            raise OperatorError(
                f"CURRENT ({read.version}) lists no previous version; name one to roll back to"
            )
        version = read.previous[0]
    check_version_text(version)
    if version == read.version:
        raise OperatorError(f"{version} is already current; `pin` holds it there")
    if version.partition("-")[0] > read.version.partition("-")[0]:
        raise OperatorError(
            f"{version} is newer than the current {read.version}; `announce` or `pin` moves forward"
        )
    checked = _verified(store, version, progress)
    hold = Pin(by=by, at=at, reason=reason or f"rollback from {read.version}")
    previous = tuple(v for v in read.previous if v != version)
    written = _swap(store, read, version, previous, hold)
    return PointerChange("rollback", read.version, version, written.previous, hold, True, checked)


def pin(
    store: ObjectStore,
    version: str,
    *,
    by: str,
    at: datetime,
    reason: str,
    progress: Progress | None = None,
) -> PointerChange:
    """Pin ``version`` in ``CURRENT``: builds keep publishing but do not announce.

    A version other than the current one is verified first, and ``CURRENT`` moves to it. A
    pin already there is replaced (new who, when and why).

    Raises
    ------
    OperatorError
        If nothing is announced, or the version fails verification (also BadVersionError,
        NotKeptError).
    PreconditionFailedError
        If ``CURRENT`` moved since it was read.
    """
    check_version_text(version)
    if not reason.strip():
        raise OperatorError("a pin needs a reason (--reason TEXT)")
    read = require_current(store)
    checked = None if version == read.version else _verified(store, version, progress)
    hold = Pin(by=by, at=at, reason=reason)
    written = _swap(store, read, version, read.succeeded_by(version), hold)
    return PointerChange("pin", read.version, version, written.previous, hold, True, checked)


def unpin(store: ObjectStore) -> PointerChange:
    """Clear the pin: same version, same previous list; the next build announces again.

    Raises
    ------
    OperatorError
        If nothing is announced.
    PreconditionFailedError
        If ``CURRENT`` moved since it was read.
    """
    read = require_current(store)
    if read.pin is None:
        return PointerChange("unpin", read.version, read.version, read.previous, None, False)
    written = _swap(store, read, read.version, read.previous, None)
    return PointerChange("unpin", read.version, read.version, written.previous, None)


def announce_version(
    store: ObjectStore, version: str, *, force: bool = False, progress: Progress | None = None
) -> PointerChange:
    """Move ``CURRENT`` to any kept, verified version, newer or older, without a pin.

    Parameters
    ----------
    force : bool, default False
        Announce even though ``CURRENT`` is pinned, dropping the pin.

    Raises
    ------
    PinnedError
        If ``CURRENT`` is pinned and ``force`` is False.
    OperatorError
        If the version fails verification (also BadVersionError, NotKeptError).
    PreconditionFailedError
        If ``CURRENT`` moved since it was read.
    """
    check_version_text(version)
    read = require_current(store)
    if read.pin is not None and not force:
        raise PinnedError(
            f"CURRENT is pinned to {read.version} by {read.pin.by} since "
            f"{utc_text(read.pin.at)} ({read.pin.reason}); `unpin` first, or pass --force to "
            "announce and drop the pin"
        )
    if version == read.version and read.pin is None:
        return PointerChange("announce", read.version, version, read.previous, None, False)
    checked = None if version == read.version else _verified(store, version, progress)
    written = _swap(store, read, version, read.succeeded_by(version), None)
    return PointerChange("announce", read.version, version, written.previous, None, True, checked)
