"""Object stores that hold snapshots: a local directory (``file://``) and S3 (``s3://``).

Both speak the same small contract, modelled on S3: whole-object reads, ranged reads (a tiered
reader's blocks), conditional reads by ETag, and conditional writes (``if_none_match="*"`` to
create, ``if_match=etag`` to compare-and-swap).
Keys are relative, ``/``-separated, and built only from constants and validated versions.
Each store also tells its own time (:meth:`FileStore.now`, :meth:`S3Store.now`), so a builder
can refuse to stamp a version far ahead of the clock its readers will compare it with.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError

from loaders.errors import ObjectNotFoundError, PreconditionFailedError, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

# S3 answers a missing key with 403 when the role lacks s3:ListBucket, which the lookup role does.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "AccessDenied", "403"})
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_NOT_MODIFIED_CODES = frozenset({"304", "NotModified"})
# S3's Date header has whole seconds and drifts only with the local monotonic clock, so one
# answer serves as the store's clock for a while; past this, ask S3 again.
DATE_REUSE_SECONDS = 60.0
# Any answer carries a Date, a 403 or 404 too; the builder role may read the pointer.
_CLOCK_PROBE_KEY = "CURRENT"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes and the ETag they were read at."""

    body: bytes
    etag: str


class ObjectStore(Protocol):
    """What the snapshot code needs from a store."""

    uri: str

    def read(self, key: str) -> bytes: ...

    def read_range(self, key: str, start: int, length: int) -> bytes: ...

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None: ...

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> str: ...

    def list_prefixes(self, prefix: str) -> list[str]: ...


class ClockedStore(ObjectStore, Protocol):
    """A store that also tells its own time: what a builder checks its clock against."""

    def now(self) -> datetime: ...


class S3Client(Protocol):
    """The boto3 S3 client methods we call."""

    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...

    def head_object(self, **kwargs: Any) -> dict[str, Any]: ...

    def put_object(self, **kwargs: Any) -> dict[str, Any]: ...

    def get_paginator(self, operation_name: str) -> Any: ...

    def delete_object(self, **kwargs: Any) -> dict[str, Any]: ...


def _file_etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()}"'


class FileStore:
    """A directory on local disk, written atomically (temp file, then link or rename).

    Parameters
    ----------
    root : str or Path
        The snapshot root directory; created on first write.
    clock : callable, default the local UTC time
        The store's clock: for a local directory, the local clock is the one readers share.
    """

    def __init__(
        self, root: str | Path, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()
        self.clock = clock

    def now(self) -> datetime:
        """The store's time: the local clock."""
        return self.clock()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"key {key!r} escapes the store root")
        return path

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{self.uri}/{key} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {self.uri}/{key}: {exc.strerror}") from exc

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of one object from offset ``start``: fewer only at its end."""
        _check_range(key, start, length)
        try:
            with self._path(key).open("rb") as handle:
                if start and start >= os.fstat(handle.fileno()).st_size:
                    # As S3 answers (416 InvalidRange): nothing of the object is in the range.
                    raise StoreError(f"cannot read {self.uri}/{key}: InvalidRange")
                handle.seek(start)
                return handle.read(length)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{self.uri}/{key} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {self.uri}/{key}: {exc.strerror}") from exc

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        body = self.read(key)
        etag = _file_etag(body)
        return None if etag == if_none_match else StoredObject(body, etag)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(), self._temp_file(path.parent, body) as tmp:
            self._place(tmp, key, if_none_match=if_none_match, if_match=if_match)
        return _file_etag(body)

    def _place(
        self, tmp: Path, key: str, *, if_none_match: str | None, if_match: str | None = None
    ) -> None:
        """Move a written temp file to ``key`` under the conditions given (lock held)."""
        path = self._path(key)
        if if_none_match == "*":
            try:
                # link() fails if the target exists: an atomic create-only write.
                os.link(tmp, path)
            except FileExistsError as exc:
                raise PreconditionFailedError(f"{self.uri}/{key} already exists") from exc
            return
        if if_match is not None:
            try:
                current = _file_etag(path.read_bytes())
            except FileNotFoundError as exc:
                raise ObjectNotFoundError(f"{self.uri}/{key} does not exist") from exc
            if current != if_match:
                raise PreconditionFailedError(f"{self.uri}/{key} changed since it was read")
        tmp.replace(path)

    def put_file(self, key: str, path: str | Path, *, if_none_match: str | None = None) -> str:
        """Write a local file's bytes as one object without holding them in memory.

        Only create-only (``if_none_match="*"``) or unconditional writes; the ETag returned is
        not the content hash :meth:`put` gives (large artifacts are never compared by ETag).
        """
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, Path(path).open("rb") as src:
                size = _copy(src, out)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o644)
            with self._locked():
                self._place(tmp, key, if_none_match=if_none_match)
        finally:
            tmp.unlink(missing_ok=True)
        return f'"{size}-{target.stat().st_mtime_ns}"'

    def list_prefixes(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(child.name for child in base.iterdir() if child.is_dir())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One writer at a time per root, so compare-and-swap is a real compare-and-swap here.
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    @contextlib.contextmanager
    def _temp_file(directory: Path, body: bytes) -> Iterator[Path]:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        tmp = Path(name)
        tmp.chmod(0o644)  # mkstemp makes 0600; snapshots are read by other local users too
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` (a folder), sorted; leftover temp files included."""
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix() for path in base.rglob("*") if path.is_file()
        )

    def delete(self, key: str) -> None:
        """Delete one object (a missing one is no error), then any folders it leaves empty."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {self.uri}/{key}: {exc.strerror}") from exc
        # An empty snapshot folder would still be listed as a version by list_prefixes. Top
        # folders (snapshots/) stay: a writer may be about to create a file in one.
        for folder in path.parents:
            if folder.parent == self.root or not folder.is_relative_to(self.root):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): the rest stays
                break


class S3Store:
    """A prefix in an S3 bucket, through an injected boto3 client.

    Parameters
    ----------
    client : S3Client
        A boto3 S3 client; its endpoint comes from the environment (``AWS_ENDPOINT_URL_S3``).
    bucket : str
        The bucket name.
    prefix : str, default ""
        The snapshot root inside the bucket, without leading or trailing ``/``.
    monotonic : callable, default time.monotonic
        Seconds on a local clock that only moves forward; advances the last S3 ``Date`` seen.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.monotonic = monotonic
        # (S3's Date, local monotonic seconds when it arrived) of the latest answer.
        self._date: tuple[datetime, float] | None = None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def now(self) -> datetime:
        """S3's time: the ``Date`` of its latest answer, advanced by the local monotonic clock.

        Reuses the answer to a request already made (the pointer read) when it is at most
        :data:`DATE_REUSE_SECONDS` old; otherwise asks with one ``HEAD``, whose 403 or 404
        carries a ``Date`` as well. An endpoint that sends no ``Date`` (moto in-process) leaves
        only the local clock, with a warning: clock skew then goes unnoticed.
        """
        if self._date is None or self.monotonic() - self._date[1] > DATE_REUSE_SECONDS:
            self._probe_date()
        if self._date is None:
            logger.warning("%s answered without a Date header; using the local clock", self.uri)
            return datetime.now(UTC)
        date, seen = self._date
        return date + timedelta(seconds=self.monotonic() - seen)

    def _probe_date(self) -> None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(_CLOCK_PROBE_KEY))
        except ClientError as exc:
            response = exc.response
        except BotoCoreError as exc:
            raise StoreError(f"cannot read the time of {self.uri}: {type(exc).__name__}") from exc
        self._note_date(response)

    def _note_date(self, response: dict[str, Any]) -> None:
        text = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            date = parsedate_to_datetime(text) if text else None
        except (TypeError, ValueError):
            date = None
        if date is not None and date.tzinfo is not None:
            self._date = (date.astimezone(UTC), self.monotonic())

    def read(self, key: str) -> bytes:
        obj = self.get(key)
        if obj is None:  # only a conditional read answers "not modified"
            raise StoreError(f"{self.uri}/{key}: unexpected 304")
        return obj.body

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of one object from offset ``start`` (one ranged GET)."""
        _check_range(key, start, length)
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{start + length - 1}"
            )
            self._note_date(response)
            return response["Body"].read()
        except ClientError as exc:
            self._note_date(exc.response)
            code = _error_code(exc)
            if code in _MISSING_CODES:
                raise ObjectNotFoundError(f"{self.uri}/{key} does not exist ({code})") from exc
            raise StoreError(f"cannot read {self.uri}/{key}: {code}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot read {self.uri}/{key}: {type(exc).__name__}") from exc

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        try:
            response = self.client.get_object(**kwargs)
            self._note_date(response)
            return StoredObject(response["Body"].read(), response["ETag"])
        except ClientError as exc:
            self._note_date(exc.response)
            code = _error_code(exc)
            if code in _NOT_MODIFIED_CODES:
                return None
            if code in _MISSING_CODES:
                raise ObjectNotFoundError(f"{self.uri}/{key} does not exist ({code})") from exc
            raise StoreError(f"cannot read {self.uri}/{key}: {code}") from exc
        except BotoCoreError as exc:  # timeouts, connection errors: no response at all
            raise StoreError(f"cannot read {self.uri}/{key}: {type(exc).__name__}") from exc

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": body}
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            response = self.client.put_object(**kwargs)
        except ClientError as exc:
            self._note_date(exc.response)
            code = _error_code(exc)
            if code in _CONFLICT_CODES:
                raise PreconditionFailedError(
                    f"{self.uri}/{key}: conditional write lost ({code})"
                ) from exc
            if code in _MISSING_CODES and if_match is not None:
                raise ObjectNotFoundError(f"{self.uri}/{key} does not exist ({code})") from exc
            raise StoreError(f"cannot write {self.uri}/{key}: {code}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot write {self.uri}/{key}: {type(exc).__name__}") from exc
        self._note_date(response)
        return response["ETag"]

    def put_file(self, key: str, path: str | Path, *, if_none_match: str | None = None) -> str:
        """Write a local file as one object (one PUT, up to 5 GB), streamed from disk."""
        with Path(path).open("rb") as body:
            return self.put(key, body, if_none_match=if_none_match)  # type: ignore[arg-type]

    def list_prefixes(self, prefix: str) -> list[str]:
        base = self._key(prefix.rstrip("/") + "/")
        names: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                names.extend(
                    p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                )
        except ClientError as exc:
            raise StoreError(f"cannot list {self.uri}/{prefix}: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot list {self.uri}/{prefix}: {type(exc).__name__}") from exc
        return sorted(names)

    def list_keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` (a folder), sorted, relative to the root."""
        base = self._key(prefix.rstrip("/") + "/")
        start = len(self._key(""))
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            keys = [obj["Key"][start:] for page in pages for obj in page.get("Contents", [])]
        except ClientError as exc:
            raise StoreError(f"cannot list {self.uri}/{prefix}: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot list {self.uri}/{prefix}: {type(exc).__name__}") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Delete one object; S3 answers a missing one as deleted too."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise StoreError(f"cannot delete {self.uri}/{key}: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot delete {self.uri}/{key}: {type(exc).__name__}") from exc


def _check_range(key: str, start: int, length: int) -> None:
    if start < 0 or length < 1:
        raise ValueError(f"bad range of {key!r}: start {start}, length {length}")


def _copy(src: Any, out: Any, chunk: int = 1 << 20) -> int:
    size = 0
    while block := src.read(chunk):
        out.write(block)
        size += len(block)
    return size


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def parse_uri(uri: str) -> tuple[str, str, str]:
    """Split a snapshot root URI into ``(scheme, bucket_or_empty, path_or_prefix)``.

    Raises
    ------
    ValueError
        If the URI is not ``file:///absolute/path`` or ``s3://bucket[/prefix]``.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError(f"expected file:///absolute/path, got {uri!r}")
        return "file", "", unquote(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"expected s3://bucket/prefix, got {uri!r}")
        return "s3", parsed.netloc, parsed.path.strip("/")
    raise ValueError(f"expected a file:// or s3:// URI, got {uri!r}")


def open_store(uri: str, *, s3_client: S3Client | None = None) -> ClockedStore:
    """Open the store a root URI names; an ``s3://`` root needs an ``s3_client``."""
    scheme, bucket, path = parse_uri(uri)
    if scheme == "file":
        return FileStore(path)
    if s3_client is None:
        raise ValueError("an s3:// root needs an S3 client")
    return S3Store(s3_client, bucket, path)


@dataclass(frozen=True, slots=True)
class StorageBudget:
    """How long one call to S3 may take: botocore's timeouts and attempts, never its defaults.

    botocore's defaults (60 s to connect, 60 s per read, retries) would hold a request far past
    a Lambda timeout, and a timed-out Lambda loses its last good snapshot with the runtime.
    ``max_attempts`` counts the first try (botocore's ``total_max_attempts``).
    """

    connect_timeout_seconds: float
    read_timeout_seconds: float
    max_attempts: int


def make_s3_client(budget: StorageBudget) -> S3Client:
    """An S3 client bound by ``budget``, in standard retry mode (jittered backoff).

    A botocore client on a new session: region, credentials and the endpoint (from
    ``AWS_ENDPOINT_URL_S3`` when one is set) are resolved afresh, as a SnapStart restore needs.
    Not boto3's: its resource and transfer layers are imports and set-up no caller here uses
    (about a quarter of a second of a reader's cold start). Sessions share one model loader, so
    only the first client reads the service models.
    """
    from botocore.config import Config
    from botocore.session import get_session

    session = get_session()
    loader = _model_loader(session.get_config_variable("data_path"))
    session.register_component("data_loader", loader)
    config = Config(
        connect_timeout=budget.connect_timeout_seconds,
        read_timeout=budget.read_timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": budget.max_attempts},
    )
    return session.create_client("s3", config=config)


@functools.cache
def _model_loader(data_path: str | None) -> Any:
    """botocore's loader of service models (it caches what it reads), one per data path."""
    from botocore.loaders import create_loader

    return create_loader(data_path)
