"""Test-side access to a store: see its objects and plant faults around its own API.

``FileStore`` objects are files under ``store.root``; ``S3Store`` objects are keys under
``store.prefix`` in ``store.bucket``, reached with ``store.client`` and no condition, as a bad
actor or a bit flip would. ``RecordingStore`` forwards every call and keeps a log of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loaders.store import FileStore, ObjectStore, S3Store, StoredObject


def _s3_key(store: S3Store, key: str) -> str:
    return f"{store.prefix}/{key}" if store.prefix else key


def stored_keys(store: ObjectStore) -> set[str]:
    """Every object key in ``store`` (the file store's lock file is not an object)."""
    if isinstance(store, FileStore):
        if not store.root.exists():
            return set()
        return {
            path.relative_to(store.root).as_posix()
            for path in store.root.rglob("*")
            if path.is_file() and path.name != ".lock"
        }
    assert isinstance(store, S3Store)
    base = f"{store.prefix}/" if store.prefix else ""
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=base)
    return {obj["Key"][len(base) :] for page in pages for obj in page.get("Contents", [])}


def raw_read(store: ObjectStore, key: str) -> bytes:
    """The bytes of one object, read around the store."""
    if isinstance(store, FileStore):
        return (store.root / key).read_bytes()
    assert isinstance(store, S3Store)
    return store.client.get_object(Bucket=store.bucket, Key=_s3_key(store, key))["Body"].read()


def raw_write(store: ObjectStore, key: str, body: bytes) -> None:
    """Overwrite (or create) one object unconditionally, around the store."""
    if isinstance(store, FileStore):
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return
    assert isinstance(store, S3Store)
    store.client.put_object(Bucket=store.bucket, Key=_s3_key(store, key), Body=body)


def flip_bytes(body: bytes, *, at: int | None = None, count: int = 4) -> bytes:
    """``body`` with ``count`` bytes inverted from ``at`` (default: the middle); same size."""
    start = len(body) // 2 if at is None else at
    flipped = bytes(b ^ 0xFF for b in body[start : start + count])
    return body[:start] + flipped + body[start + count :]


@dataclass
class RecordingStore:
    """An ``ObjectStore`` that forwards to ``inner`` and logs ``(method, key, kwargs)``."""

    inner: ObjectStore
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return self.inner.uri

    @property
    def puts(self) -> list[tuple[str, dict[str, Any]]]:
        return [(key, kwargs) for method, key, kwargs in self.calls if method == "put"]

    def read(self, key: str) -> bytes:
        self.calls.append(("read", key, {}))
        return self.inner.read(key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        self.calls.append(("read_range", key, {"start": start, "length": length}))
        return self.inner.read_range(key, start, length)

    @property
    def ranged_reads(self) -> list[tuple[str, int, int]]:
        """``(key, start, length)`` of every ``read_range`` call, in order."""
        return [(k, kw["start"], kw["length"]) for m, k, kw in self.calls if m == "read_range"]

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        self.calls.append(("get", key, {"if_none_match": if_none_match}))
        return self.inner.get(key, if_none_match=if_none_match)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> str:
        self.calls.append(("put", key, {"if_none_match": if_none_match, "if_match": if_match}))
        return self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)

    def list_prefixes(self, prefix: str) -> list[str]:
        self.calls.append(("list_prefixes", prefix, {}))
        return self.inner.list_prefixes(prefix)
