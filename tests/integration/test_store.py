"""The object store contract on a directory, in-process moto and the moto server, plus S3 faults."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from loaders.errors import ObjectNotFoundError, PreconditionFailedError, StoreError
from loaders.store import DATE_REUSE_SECONDS, FileStore, S3Store, StoredObject
from tests.conftest import BUCKET, PREFIX, FakeClock
from tests.integration.rawstore import raw_read

if TYPE_CHECKING:
    from collections.abc import Callable

    from loaders.store import ObjectStore


# --- the contract, on every store -----------------------------------------------------------


def test_read_of_missing_key_raises_object_not_found(any_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        any_store.read("snapshots/nothing/here.json")


def test_get_of_missing_key_raises_object_not_found(any_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        any_store.get("CURRENT")


def test_put_then_get_returns_body_and_the_etag_put_returned(any_store: ObjectStore) -> None:
    etag = any_store.put("a/b.json", b'{"x": 1}')

    obj = any_store.get("a/b.json")

    assert obj is not None
    assert (obj.body, obj.etag) == (b'{"x": 1}', etag)


def test_read_returns_the_bytes_put(any_store: ObjectStore) -> None:
    any_store.put("a/b.bin", bytes(range(256)))

    assert any_store.read("a/b.bin") == bytes(range(256))


def test_get_if_none_match_current_etag_returns_none(any_store: ObjectStore) -> None:
    etag = any_store.put("CURRENT", b"one")

    assert any_store.get("CURRENT", if_none_match=etag) is None


def test_get_if_none_match_old_etag_returns_new_body(any_store: ObjectStore) -> None:
    old = any_store.put("CURRENT", b"one")
    new = any_store.put("CURRENT", b"two")

    obj = any_store.get("CURRENT", if_none_match=old)

    assert obj is not None
    assert (obj.body, obj.etag) == (b"two", new)


def test_overwrite_changes_the_etag(any_store: ObjectStore) -> None:
    assert any_store.put("CURRENT", b"one") != any_store.put("CURRENT", b"two")


def test_create_only_put_on_new_key_writes(any_store: ObjectStore) -> None:
    any_store.put("k", b"first", if_none_match="*")

    assert any_store.read("k") == b"first"


def test_create_only_put_on_existing_key_fails_precondition(any_store: ObjectStore) -> None:
    any_store.put("k", b"first")

    with pytest.raises(PreconditionFailedError):
        any_store.put("k", b"second", if_none_match="*")


def test_failed_create_only_put_keeps_existing_body(any_store: ObjectStore) -> None:
    any_store.put("k", b"first")

    with pytest.raises(PreconditionFailedError):
        any_store.put("k", b"second", if_none_match="*")

    assert raw_read(any_store, "k") == b"first"


def test_put_if_match_current_etag_replaces(any_store: ObjectStore) -> None:
    etag = any_store.put("CURRENT", b"one")

    new = any_store.put("CURRENT", b"two", if_match=etag)

    assert any_store.get("CURRENT") == StoredObject(b"two", new)


def test_put_if_match_stale_etag_fails_precondition(any_store: ObjectStore) -> None:
    stale = any_store.put("CURRENT", b"one")
    any_store.put("CURRENT", b"two")

    with pytest.raises(PreconditionFailedError):
        any_store.put("CURRENT", b"three", if_match=stale)


def test_failed_compare_and_swap_keeps_current_body(any_store: ObjectStore) -> None:
    stale = any_store.put("CURRENT", b"one")
    any_store.put("CURRENT", b"two")

    with pytest.raises(PreconditionFailedError):
        any_store.put("CURRENT", b"three", if_match=stale)

    assert raw_read(any_store, "CURRENT") == b"two"


def test_put_if_match_on_missing_key_raises_object_not_found(any_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        any_store.put("CURRENT", b"one", if_match='"0123456789abcdef"')


def test_list_prefixes_names_child_folders_sorted(any_store: ObjectStore) -> None:
    for version in ("20261123T120000Z-bbbbbbbb", "20261122T120000Z-aaaaaaaa"):
        any_store.put(f"snapshots/{version}/data.parquet", b"d")
        any_store.put(f"snapshots/{version}/manifest.json", b"m")
    any_store.put("CURRENT", b"c")

    assert any_store.list_prefixes("snapshots") == [
        "20261122T120000Z-aaaaaaaa",
        "20261123T120000Z-bbbbbbbb",
    ]


def test_list_prefixes_of_missing_prefix_is_empty(any_store: ObjectStore) -> None:
    assert any_store.list_prefixes("snapshots") == []


# --- FileStore: keys stay under the root ----------------------------------------------------


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd", "", "."])
def test_file_store_refuses_keys_escaping_the_root(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path / "root")

    with pytest.raises(ValueError, match="escapes the store root"):
        store.read(key)


def test_file_store_refuses_to_write_outside_the_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")

    with pytest.raises(ValueError, match="escapes the store root"):
        store.put("../outside", b"x")

    assert not (tmp_path / "outside").exists()


def test_file_store_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.pem").write_bytes(b"private")
    store = FileStore(tmp_path / "root")
    store.root.mkdir()
    (store.root / "link").symlink_to(tmp_path / "secret")

    with pytest.raises(ValueError, match="escapes the store root"):
        store.read("link/key.pem")


# --- S3Store: faults moto does not produce, injected with a before-send hook ----------------


@pytest.fixture(params=["mock_aws", "moto_server"])
def s3_store(request: pytest.FixtureRequest) -> S3Store:
    """An S3Store on in-process moto or on the moto server (never both in one test)."""
    client = request.getfixturevalue("mock_s3" if request.param == "mock_aws" else "server_s3")
    return S3Store(client, BUCKET, PREFIX)


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Any:
        yield self._data


def _s3_error(status: int, code: str, message: str) -> AWSResponse:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>TESTREQUEST</RequestId><HostId>TESTHOST</HostId></Error>"
    ).encode()
    headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
    return AWSResponse("https://s3.test", status, headers, _Body(body))


def _inject(store: S3Store, operation: str, fault: Callable[[], AWSResponse]) -> list[str]:
    """Answer every ``operation`` call with ``fault()``; returns the list of attempted URLs.

    ``register_first`` puts the hook ahead of moto's in-process stubber, so the first response
    botocore sees is the fault; botocore's own retry logic still runs on it.
    """
    attempts: list[str] = []

    def hook(request: Any, **_: Any) -> AWSResponse:
        attempts.append(request.url)
        return fault()

    store.client.meta.events.register_first(f"before-send.s3.{operation}", hook)
    return attempts


def _timeout(store: S3Store, operation: str) -> list[str]:
    attempts: list[str] = []

    def hook(request: Any, **_: Any) -> None:
        attempts.append(request.url)
        raise ReadTimeoutError(endpoint_url=request.url)

    store.client.meta.events.register_first(f"before-send.s3.{operation}", hook)
    return attempts


def test_s3_access_denied_on_get_reads_as_missing(s3_store: S3Store) -> None:
    # Without s3:ListBucket, real S3 answers a missing key with 403, not 404.
    _inject(s3_store, "GetObject", lambda: _s3_error(403, "AccessDenied", "Access Denied"))

    with pytest.raises(ObjectNotFoundError, match="AccessDenied"):
        s3_store.get("CURRENT")


def test_s3_service_unavailable_after_retries_raises_store_error(s3_store: S3Store) -> None:
    s3_store.put("CURRENT", b"one")
    attempts = _inject(
        s3_store, "GetObject", lambda: _s3_error(503, "ServiceUnavailable", "Please reduce")
    )

    with pytest.raises(StoreError, match="ServiceUnavailable") as raised:
        s3_store.get("CURRENT")

    assert type(raised.value) is StoreError  # not "missing", not "lost a race"
    assert len(attempts) > 1  # botocore retried before giving up


def test_s3_conditional_request_conflict_on_put_fails_precondition(s3_store: S3Store) -> None:
    # Real S3 may answer 409 to racing conditional writes; moto never does.
    _inject(
        s3_store,
        "PutObject",
        lambda: _s3_error(409, "ConditionalRequestConflict", "A conflicting operation occurred"),
    )

    with pytest.raises(PreconditionFailedError, match="ConditionalRequestConflict"):
        s3_store.put("CURRENT", b"one", if_none_match="*")


def test_s3_read_timeout_on_get_raises_store_error(s3_store: S3Store) -> None:
    s3_store.put("CURRENT", b"one")
    attempts = _timeout(s3_store, "GetObject")

    with pytest.raises(StoreError, match="ReadTimeoutError") as raised:
        s3_store.get("CURRENT")

    assert type(raised.value) is StoreError
    assert len(attempts) > 1


def test_s3_read_timeout_on_put_raises_store_error(s3_store: S3Store) -> None:
    _timeout(s3_store, "PutObject")

    with pytest.raises(StoreError, match="ReadTimeoutError"):
        s3_store.put("CURRENT", b"one")


def test_s3_read_timeout_on_list_raises_store_error(s3_store: S3Store) -> None:
    _timeout(s3_store, "ListObjectsV2")

    with pytest.raises(StoreError):
        s3_store.list_prefixes("snapshots")


def test_s3_internal_error_on_list_raises_store_error(s3_store: S3Store) -> None:
    _inject(s3_store, "ListObjectsV2", lambda: _s3_error(500, "InternalError", "Try again"))

    with pytest.raises(StoreError, match="InternalError"):
        s3_store.list_prefixes("snapshots")


def test_s3_keys_live_under_the_prefix(s3_store: S3Store) -> None:
    s3_store.put("CURRENT", b"one")

    body = s3_store.client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/CURRENT")["Body"].read()

    assert body == b"one"


# --- the store's clock ------------------------------------------------------------------------

S3_DATE = "Wed, 01 Jan 2031 00:00:00 GMT"
S3_TIME = datetime(2031, 1, 1, tzinfo=UTC)


def test_file_store_clock_is_the_local_clock_it_was_given(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root", clock=lambda: S3_TIME)

    assert store.now() == S3_TIME


def _answers_dated(store: S3Store, operation: str, date: str | None) -> list[str]:
    """Give every ``operation`` answer this ``Date`` header (None: no Date at all); returns
    the list of answers so edited."""
    answers: list[str] = []

    def hook(parsed: dict[str, Any], **_: Any) -> None:
        answers.append(operation)
        headers = parsed.setdefault("ResponseMetadata", {}).setdefault("HTTPHeaders", {})
        if date is None:
            headers.pop("date", None)
        else:
            headers["date"] = date

    store.client.meta.events.register(f"after-call.s3.{operation}", hook)
    return answers


@pytest.fixture
def dated_store(s3_store: S3Store) -> S3Store:
    """``s3_store`` with a hand-moved monotonic clock."""
    return S3Store(s3_store.client, s3_store.bucket, s3_store.prefix, monotonic=FakeClock())


def test_s3_clock_is_the_date_of_the_last_answer_with_no_extra_request(
    dated_store: S3Store,
) -> None:
    dated_store.put("CURRENT", b"one")
    _answers_dated(dated_store, "GetObject", S3_DATE)
    heads = _answers_dated(dated_store, "HeadObject", "Thu, 01 Jan 2032 00:00:00 GMT")

    dated_store.get("CURRENT")

    assert dated_store.now() == S3_TIME
    assert heads == []


def test_s3_clock_reads_the_date_of_an_error_answer(dated_store: S3Store) -> None:
    _answers_dated(dated_store, "GetObject", S3_DATE)

    with pytest.raises(ObjectNotFoundError):
        dated_store.get("CURRENT")

    assert dated_store.now() == S3_TIME


def test_s3_clock_advances_with_the_local_monotonic_clock(dated_store: S3Store) -> None:
    _answers_dated(dated_store, "PutObject", S3_DATE)
    dated_store.put("CURRENT", b"one")

    dated_store.monotonic.advance(DATE_REUSE_SECONDS)

    assert dated_store.now() == S3_TIME + timedelta(seconds=DATE_REUSE_SECONDS)


def test_s3_clock_asks_again_once_the_last_answer_is_too_old(dated_store: S3Store) -> None:
    _answers_dated(dated_store, "PutObject", S3_DATE)
    heads = _answers_dated(dated_store, "HeadObject", "Thu, 01 Jan 2032 00:00:00 GMT")
    dated_store.put("CURRENT", b"one")

    dated_store.monotonic.advance(DATE_REUSE_SECONDS + 1)

    assert dated_store.now() == datetime(2032, 1, 1, tzinfo=UTC)
    assert heads == ["HeadObject"]


def test_s3_clock_with_no_answer_yet_asks_with_a_head_even_of_a_missing_key(
    dated_store: S3Store,
) -> None:
    heads = _answers_dated(dated_store, "HeadObject", S3_DATE)

    assert dated_store.now() == S3_TIME
    assert heads == ["HeadObject"]


def test_s3_clock_without_a_date_header_falls_back_to_the_local_clock(
    dated_store: S3Store, caplog: pytest.LogCaptureFixture
) -> None:
    _answers_dated(dated_store, "HeadObject", None)
    before = datetime.now(UTC)

    with caplog.at_level(logging.WARNING, logger="loaders.store"):
        now = dated_store.now()

    assert before <= now <= datetime.now(UTC)
    assert "without a Date header" in caplog.text


def test_s3_clock_timeout_raises_store_error(dated_store: S3Store) -> None:
    _timeout(dated_store, "HeadObject")

    with pytest.raises(StoreError, match="cannot read the time"):
        dated_store.now()
