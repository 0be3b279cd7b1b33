"""Errors raised while building, storing and reading snapshots.

::

    LoaderError
     ├── StoreError                  transport or permission failure talking to a store
     │    ├── ObjectNotFoundError    the object is not there (S3 404, or 403 without ListBucket)
     │    └── PreconditionFailedError  a conditional write lost (412/409): someone else wrote first
     ├── SnapshotInvalidError        a snapshot, manifest, pointer or table breaks the contract
     │    ├── BuildRejectedError     the builder's summary of one: counts, no example keys
     │    └── SnapshotTooLargeError  it cannot fit in this reader's memory budget
     └── QueryFailedError            the query engine failed, was cancelled or ran past its deadline

Callers on the request path never see these unchanged: ``service.cache`` logs them and keeps serving
the last good snapshot. What a failure means for the cache is decided once, by :func:`classify`.
"""

from __future__ import annotations

import enum


class LoaderError(Exception):
    """Base class of every loader failure."""


class StoreError(LoaderError):
    """A store could not be read or written."""


class ObjectNotFoundError(StoreError):
    """The requested object does not exist (or is not visible to this role)."""


class PreconditionFailedError(StoreError):
    """A conditional write lost a race (S3 412 PreconditionFailed or 409 Conflict)."""


class SnapshotInvalidError(LoaderError):
    """A snapshot or table breaks the contract.

    Parameters
    ----------
    message : str
        One line saying what is wrong.
    problems : tuple of str, default ()
        One line per failed check, each naming counts and example keys.
    etag : str, optional
        The ETag of the rejected object when it is the pointer itself, so a reader can
        remember it without a parsed pointer.
    """

    def __init__(
        self, message: str, problems: tuple[str, ...] = (), *, etag: str | None = None
    ) -> None:
        super().__init__(message if not problems else f"{message}: {'; '.join(problems)}")
        self.problems = problems
        self.etag = etag


class SnapshotTooLargeError(SnapshotInvalidError):
    """A snapshot's projected memory does not fit the reader's budget beside the current one."""


class BuildRejectedError(SnapshotInvalidError):
    """A build failed validation; the message carries counts only, the keys are in a report."""


class QueryFailedError(LoaderError):
    """A query did not produce a result."""


class Failure(enum.Enum):
    """What a failure says about the snapshot, and so what a reader does next."""

    PERMANENT = "permanent"
    """The snapshot itself is bad: remember it against the pointer's ETag; do not fetch again
    until the pointer moves."""
    TRANSIENT = "transient"
    """Storage, time or memory ran out: try again after the TTL."""
    BUG = "bug"
    """Anything else: log the stack; the request still gets an answer."""


# Timeouts (TimeoutError, socket.timeout) and OS-level I/O failures are OSError subclasses.
_TRANSIENT = (StoreError, QueryFailedError, MemoryError, OSError)


def classify(exc: BaseException) -> Failure:
    """The one place that decides a failure's class.

    Examples
    --------
    >>> classify(SnapshotInvalidError("sha256 mismatch"))
    <Failure.PERMANENT: 'permanent'>
    >>> classify(TimeoutError())
    <Failure.TRANSIENT: 'transient'>
    >>> classify(ZeroDivisionError())
    <Failure.BUG: 'bug'>
    """
    if isinstance(exc, SnapshotInvalidError):
        return Failure.PERMANENT
    if isinstance(exc, _TRANSIENT):
        return Failure.TRANSIENT
    return Failure.BUG
