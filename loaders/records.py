"""Build records: one small JSON document per builder run, for ``snapshotctl status``.

Each run writes ``builds/<stamp>.json`` (create-only, kept) and overwrites
``builds/latest.json``. A record holds counts and times only: the outcome, the version, the
seconds each phase took, the number of rows added, removed and changed, and for a rejected or
failed build the error's type and its problems without their example keys. Never a key: records
are read by operators and may be copied into tickets.

Writing a record is best effort: a failed write is logged as a warning and never fails a build.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loaders.errors import LoaderError, SnapshotInvalidError
from loaders.manifest import new_version, utc_text

if TYPE_CHECKING:
    from loaders.store import ObjectStore

logger = logging.getLogger(__name__)

BUILDS_PREFIX = "builds"
LATEST_KEY = f"{BUILDS_PREFIX}/latest.json"
ROW_CHANGES = ("added", "removed", "changed")


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """What one build run did, in counts and times.

    Attributes
    ----------
    outcome : str
        A ``loaders.build.Outcome`` value: announced, superseded, unchanged, pinned, rejected or
        failed.
    started_at, finished_at : datetime
        Aware times of the run's start and end.
    version : str or None
        The version the run published; None when it published nothing.
    current : str or None
        The version ``CURRENT`` named when the run ended, when known.
    seconds : dict of str to float
        Seconds per phase (previous, query, validate, publish, changes).
    rows : int or None
        Rows in the published version.
    changes : dict of str to int
        Rows ``added``, ``removed`` and ``changed`` against the version it replaced.
    error : str or None
        A rejected or failed run's error type and problems, without example keys.
    """

    outcome: str
    started_at: datetime
    finished_at: datetime
    version: str | None = None
    current: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    rows: int | None = None
    changes: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "version": self.version,
            "current": self.current,
            "started_at": utc_text(self.started_at),
            "finished_at": utc_text(self.finished_at),
            "seconds": self.seconds,
            "rows": self.rows,
            "changes": self.changes,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, body: bytes) -> BuildRecord:
        """Parse a record document.

        Raises
        ------
        SnapshotInvalidError
            If it is not a record.
        """
        try:
            doc = json.loads(body)
            return cls(
                outcome=str(doc["outcome"]),
                started_at=_parse_time(doc["started_at"]),
                finished_at=_parse_time(doc["finished_at"]),
                version=doc.get("version"),
                current=doc.get("current"),
                seconds={str(k): float(v) for k, v in (doc.get("seconds") or {}).items()},
                rows=doc.get("rows"),
                changes={k: int(v) for k, v in (doc.get("changes") or {}).items()},
                error=doc.get("error"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotInvalidError(f"bad build record: {exc}") from exc


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment.astimezone(UTC)


def counts_only(changes: dict[str, Any]) -> dict[str, int]:
    """The row counts of a change report, without its example keys."""
    return {name: int(changes[name]) for name in ROW_CHANGES if name in changes}


def write_record(store: ObjectStore, record: BuildRecord) -> str | None:
    """Save ``record`` as ``builds/<stamp>.json`` and ``builds/latest.json``; best effort.

    Returns
    -------
    str or None
        The key of the kept record, or None when it could not be written (logged as a warning).
    """
    key = f"{BUILDS_PREFIX}/{new_version(record.started_at)}.json"
    body = json.dumps(record.to_dict(), indent=2).encode()
    try:
        store.put(key, body, if_none_match="*")
        store.put(LATEST_KEY, body)
    except (LoaderError, OSError, ValueError) as exc:
        # The build's own work is done (or has failed for its own reason): a record is a report.
        logger.warning("build record not saved to %s: %s", store.uri, type(exc).__name__)
        return None
    return key


def read_latest(store: ObjectStore) -> BuildRecord:
    """The last build's record.

    Raises
    ------
    ObjectNotFoundError
        If no build has written one (or, on S3, this role may not read it).
    SnapshotInvalidError
        If ``builds/latest.json`` is not a record.
    """
    return BuildRecord.from_json(store.read(LATEST_KEY))
