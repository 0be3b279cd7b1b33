"""Errors raised while building, storing and reading snapshots.

::

    LoaderError
     ├── StoreError                  transport or permission failure talking to a store
     │    ├── ObjectNotFoundError    the object is not there (S3 404, or 403 without ListBucket)
     │    └── PreconditionFailedError  a conditional write lost (412/409): someone else wrote first
     ├── SnapshotInvalidError        a snapshot, manifest, pointer or table breaks the contract
     │    └── BuildRejectedError     the builder's summary of one: counts, no example keys
     └── QueryFailedError            the query engine failed, was cancelled or ran past its deadline

Callers on the request path never see these unchanged: ``service.cache`` logs them and keeps serving
the last good snapshot.
"""

from __future__ import annotations


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
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message if not problems else f"{message}: {'; '.join(problems)}")
        self.problems = problems


class BuildRejectedError(SnapshotInvalidError):
    """A build failed validation; the message carries counts only, the keys are in a report."""


class QueryFailedError(LoaderError):
    """A query did not produce a result."""
