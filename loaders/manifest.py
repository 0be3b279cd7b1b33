"""Versions, manifests and the pointer: what names a snapshot and which one is current.

A version is ``YYYYMMDDTHHMMSSZ-<8 hex>``: it sorts by time and is never reused. Every key built
from a version goes through :func:`check_version` first, so no outside string reaches a path.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loaders.errors import ObjectNotFoundError, SnapshotInvalidError

if TYPE_CHECKING:
    from loaders.store import ObjectStore

FORMAT = 1
POINTER_KEY = "CURRENT"
SNAPSHOTS_PREFIX = "snapshots"
DATA_NAME = "data.parquet"
MANIFEST_NAME = "manifest.json"
CHANGES_NAME = "changes.json"
# The tiered layout (issue 11): standalone Parquet blocks end to end, and their index.
BLOCKS_NAME = "blocks.bin"
BLOCK_INDEX_NAME = "blocks.arrow"
VERSION_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
# How many earlier versions CURRENT remembers, newest first: a cold reader that rejects the
# current version falls back to the newest of these that loads.
PREVIOUS_DEPTH = 3
# A version stamped further ahead of the store's clock than this is refused by builders and
# rejected by readers: a skewed clock must not block every later build.
MAX_CLOCK_SKEW_SECONDS = 300.0
# Everything a hostile or corrupt JSON document can raise while we parse and check it.
_PARSE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError)


def check_version(version: object) -> str:
    """Return ``version`` if it is a well-formed version string.

    Raises
    ------
    SnapshotInvalidError
        If it is not a ``str`` matching ``^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$``.
    """
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise SnapshotInvalidError(f"bad snapshot version {version!r} ({type(version).__name__})")
    return version


def new_version(now: datetime, token: str | None = None) -> str:
    """Make a fresh version from an aware UTC time and 8 hex digits (random unless given)."""
    if now.tzinfo is None:
        raise ValueError("new_version needs an aware datetime")
    return check_version(f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{token or secrets.token_hex(4)}")


def snapshot_key(version: str, name: str) -> str:
    """The store key of one file of one snapshot version."""
    if name not in (DATA_NAME, MANIFEST_NAME, CHANGES_NAME, BLOCKS_NAME, BLOCK_INDEX_NAME):
        raise ValueError(f"{name!r} is not a snapshot file name")
    return f"{SNAPSHOTS_PREFIX}/{check_version(version)}/{name}"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a snapshot: its name and Arrow type as text (``str(pa.DataType)``)."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Blocks:
    """Where a tiered reader finds a snapshot's rows without reading them all.

    ``blocks.bin`` holds ``count`` standalone zstd Parquet files of at most ``rows_per_block``
    sorted rows each, end to end (``bytes`` in all); ``blocks.arrow`` (``index_bytes``, sha256
    ``index_sha256``) gives each block's first and last key, offset, length, rows and sha256.
    """

    count: int
    bytes: int
    rows_per_block: int
    index_bytes: int
    index_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "bytes": self.bytes,
            "rows_per_block": self.rows_per_block,
            "index_bytes": self.index_bytes,
            "index_sha256": self.index_sha256,
        }

    @classmethod
    def from_dict(cls, doc: object) -> Blocks:
        if not isinstance(doc, dict):
            raise TypeError(f"blocks must be an object, got {type(doc).__name__}")
        blocks = cls(
            count=_typed(doc, "count", int),
            bytes=_typed(doc, "bytes", int),
            rows_per_block=_typed(doc, "rows_per_block", int),
            index_bytes=_typed(doc, "index_bytes", int),
            index_sha256=_typed(doc, "index_sha256", str),
        )
        if min(blocks.count, blocks.bytes, blocks.rows_per_block, blocks.index_bytes) < 1:
            raise ValueError("blocks: counts and sizes must be positive")
        return blocks


@dataclass(frozen=True, slots=True)
class Manifest:
    """Describes one immutable snapshot; stored as ``snapshots/<version>/manifest.json``."""

    version: str
    created_at: datetime
    key_column: str
    row_count: int
    columns: tuple[Column, ...]
    sha256: str
    bytes: int
    source: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT
    # When the query started (the data cutoff; the version's time) and when the snapshot was
    # written. Manifests from before these fields read back as None.
    query_started_at: datetime | None = None
    published_at: datetime | None = None
    # Arrow bytes of the decoded table, as the builder read it back: what a reader will hold.
    table_bytes: int | None = None
    # The tiered layout, when the builder wrote one (every build since issue 11 does).
    blocks: Blocks | None = None

    def to_json(self) -> bytes:
        """Serialise as the public manifest document."""
        doc = {
            "format": self.format,
            "version": self.version,
            "created_at": utc_text(self.created_at),
            "query_started_at": utc_text(self.query_started_at),
            "published_at": utc_text(self.published_at),
            "key_column": self.key_column,
            "row_count": self.row_count,
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "sha256": self.sha256,
            "bytes": self.bytes,
            "table_bytes": self.table_bytes,
            "blocks": None if self.blocks is None else self.blocks.to_dict(),
            "source": self.source,
        }
        return json.dumps(doc, indent=2, sort_keys=False).encode()

    @classmethod
    def from_json(cls, body: bytes, *, expected_version: str | None = None) -> Manifest:
        """Parse and check a manifest document.

        Raises
        ------
        SnapshotInvalidError
            If it is not JSON, lacks a field, has a wrongly typed field, or names another version.
        """
        try:
            doc = json.loads(body)
            manifest = cls(
                version=check_version(doc["version"]),
                created_at=_parse_utc(doc["created_at"]),
                key_column=_typed(doc, "key_column", str),
                row_count=_typed(doc, "row_count", int),
                columns=tuple(
                    Column(_typed(c, "name", str), _typed(c, "type", str))
                    for c in _typed(doc, "columns", list)
                ),
                sha256=_typed(doc, "sha256", str),
                bytes=_typed(doc, "bytes", int),
                source=_typed(doc, "source", dict),
                format=_typed(doc, "format", int),
                query_started_at=_optional(doc, "query_started_at", _parse_utc),
                published_at=_optional(doc, "published_at", _parse_utc),
                table_bytes=_optional(doc, "table_bytes", lambda v: _typed({"n": v}, "n", int)),
                blocks=_optional(doc, "blocks", Blocks.from_dict),
            )
        except _PARSE_ERRORS as exc:
            raise SnapshotInvalidError(f"bad manifest: {exc}") from exc
        if manifest.format != FORMAT:
            raise SnapshotInvalidError(f"manifest format {manifest.format} is not {FORMAT}")
        if expected_version is not None and manifest.version != expected_version:
            raise SnapshotInvalidError(
                f"manifest names version {manifest.version}, expected {expected_version}"
            )
        return manifest


def _typed(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc[name]
    # bool is an int in Python; a manifest with "row_count": true is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(doc: dict[str, Any], name: str, parse: Any) -> Any:
    value = doc.get(name)
    return None if value is None else parse(value)


def utc_text(moment: datetime | None) -> str | None:
    """``2026-01-01T00:00:00Z`` for an aware time; None stays None."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_utc(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError(f"a time must be str, got {type(text).__name__}")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return parsed.astimezone(UTC)  # OverflowError near year 1 or 9999: a bad manifest


@dataclass(frozen=True, slots=True)
class Pin:
    """An operator's hold on the pointer's version: builds publish but do not announce."""

    by: str
    at: datetime
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"by": self.by, "at": utc_text(self.at) or "", "reason": self.reason}

    @classmethod
    def from_dict(cls, doc: object) -> Pin:
        if not isinstance(doc, dict):
            raise TypeError(f"pin must be an object, got {type(doc).__name__}")
        return cls(
            by=_typed(doc, "by", str), at=_parse_utc(doc["at"]), reason=_typed(doc, "reason", str)
        )


@dataclass(frozen=True, slots=True)
class Pointer:
    """The current version as read from ``CURRENT``, with the ETag it was read at.

    ``previous`` lists up to :data:`PREVIOUS_DEPTH` earlier announced versions, newest first.
    ``pin``, when set, holds ``version`` in place (``snapshotctl pin``/``rollback``). Readers
    that know only ``{"version"}`` ignore both.
    """

    version: str
    etag: str
    previous: tuple[str, ...] = ()
    pin: Pin | None = None

    def to_json(self) -> bytes:
        """The pointer document (the ETag is the store's, not part of it)."""
        doc: dict[str, Any] = {"version": self.version, "previous": list(self.previous)}
        if self.pin is not None:
            doc["pin"] = self.pin.to_dict()
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, body: bytes, etag: str) -> Pointer:
        """Parse a pointer document.

        Raises
        ------
        SnapshotInvalidError
            If it is not ``{"version": <version>, "previous": [<version>, ...]}``.
        """
        try:
            doc = json.loads(body)
            previous = doc.get("previous", [])
            if not isinstance(previous, list):
                raise TypeError(f"previous must be a list, got {type(previous).__name__}")
            pin = doc.get("pin")
            return cls(
                check_version(doc["version"]),
                etag,
                tuple(check_version(v) for v in previous[:PREVIOUS_DEPTH]),
                None if pin is None else Pin.from_dict(pin),
            )
        except _PARSE_ERRORS as exc:
            raise SnapshotInvalidError(f"bad pointer: {exc}") from exc

    def succeeded_by(self, version: str) -> tuple[str, ...]:
        """The ``previous`` list of a pointer that replaces this one with ``version``."""
        chain = (self.version, *self.previous)
        return tuple(v for v in chain if v != version)[:PREVIOUS_DEPTH]


def read_pointer(store: ObjectStore, *, if_none_match: str | None = None) -> Pointer | None:
    """Read ``CURRENT``; ``None`` means it still has ETag ``if_none_match``.

    Raises
    ------
    ObjectNotFoundError
        If nothing has been announced yet.
    SnapshotInvalidError
        If the pointer is not ``{"version": "<version>", "previous": [...]}``; it carries the
        pointer's ETag.
    """
    obj = store.get(POINTER_KEY, if_none_match=if_none_match)
    if obj is None:
        return None
    try:
        return Pointer.from_json(obj.body, obj.etag)
    except SnapshotInvalidError as exc:
        raise SnapshotInvalidError(f"{store.uri}/{POINTER_KEY}: {exc}", etag=obj.etag) from exc


def read_manifest(store: ObjectStore, version: str) -> Manifest:
    """Read and check the manifest of one version."""
    return Manifest.from_json(
        store.read(snapshot_key(version, MANIFEST_NAME)), expected_version=version
    )


def announce(
    store: ObjectStore, version: str, *, previous: Pointer | None, pin: Pin | None = None
) -> Pointer:
    """Point ``CURRENT`` at ``version`` by compare-and-swap; this is always the last write.

    Parameters
    ----------
    previous : Pointer or None
        The pointer as read before publishing; ``None`` for the first publish.
    pin : Pin, optional
        Hold ``version`` in place; without one, any pin on ``previous`` is cleared.

    Raises
    ------
    PreconditionFailedError
        If another writer moved the pointer since ``previous`` was read.
    """
    check_version(version)
    chain = () if previous is None else previous.succeeded_by(version)
    body = Pointer(version, "", chain, pin).to_json()
    if previous is None:
        etag = store.put(POINTER_KEY, body, if_none_match="*")
    else:
        etag = store.put(POINTER_KEY, body, if_match=previous.etag)
    return Pointer(version, etag, chain, pin)


def try_read_pointer(store: ObjectStore) -> Pointer | None:
    """Read ``CURRENT``, or ``None`` when nothing has been announced yet."""
    try:
        return read_pointer(store)
    except ObjectNotFoundError:
        return None
