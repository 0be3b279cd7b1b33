"""Tiered mode against a misbehaving S3: a block that cannot be read, or does not verify,
fails only the request that needed it, within the request's wait, and the version stays.

The reader's client goes through the fault proxy in front of moto, as in the rest of the
suite; blocks are read by ranged GETs of ``blocks.bin``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ReadTimeoutError

from loaders.manifest import BLOCKS_NAME
from tests.faults.conftest import (
    CACHE_LOGGER,
    FAST_REFRESH_WAIT_SECONDS,
    PATIENT_STORAGE,
    SLACK_SECONDS,
    Answer,
    FaultProxy,
    Mode,
    error_response,
    fast_settings,
    raises,
)
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from tests.faults.conftest import Lookup, Versions

# Tiered only: these are the tiered reader's own failure paths.
pytestmark = pytest.mark.parametrize("serve_mode", ["tiered"], indirect=True)

# Two blocks: 4,096 rows, then 104. Block 0 is read at load; a key in block 1 is cold.
IDS = [f"C{2 * i:09d}" for i in range(1, 4096 + 105)]
HOT, COLD = IDS[0], IDS[-1]


def blocks_key(version: str) -> str:
    return f"snapshots/{version}/{BLOCKS_NAME}"


def serving(
    make_lookup: Callable[..., Lookup], versions: Versions, **settings: Any
) -> tuple[Lookup, str]:
    """A tiered lookup serving a two-block version."""
    lookup = make_lookup(fast_settings(**settings))
    version = versions.publish(IDS)
    answer = lookup.ask(HOT)
    assert (answer.status, answer.body["snapshot"]["mode"]) == (200, "tiered")
    return lookup, version


def assert_rows_unavailable(answer: Answer, version: str) -> None:
    """A 503 JSON for this request, with Retry-After and the snapshot it was served from."""
    assert answer.status == 503
    assert answer.body["error"]["code"] == "rows_unavailable"
    assert answer.headers["Retry-After"] == "1"
    assert answer.body["snapshot"]["version"] == version
    assert answer.body["snapshot"]["mode"] == "tiered"


def test_black_holed_block_read_answers_503_within_the_refresh_wait(
    make_lookup: Callable[..., Lookup], versions: Versions, proxy: FaultProxy
) -> None:
    """S3 accepts the ranged GET and never answers: the request gets its 503 at the wait."""
    lookup, version = serving(make_lookup, versions, storage=PATIENT_STORAGE)
    proxy.set_mode(Mode.BLACK_HOLE, only=BLOCKS_NAME.encode())

    answer = lookup.ask(COLD)
    hot = lookup.ask(HOT)

    assert_rows_unavailable(answer, version)
    assert answer.seconds < FAST_REFRESH_WAIT_SECONDS + SLACK_SECONDS
    assert proxy.swallowed >= 1
    assert (hot.status, hot.version) == (200, version)  # the version stays and serves
    assert hot.seconds < SLACK_SECONDS
    assert lookup.cache.version == version


@pytest.mark.parametrize(
    "fault",
    [
        error_response(403, "AccessDenied"),
        error_response(404, "NoSuchKey"),
        error_response(500, "InternalError"),
        raises(lambda r: ReadTimeoutError(endpoint_url=r.url)),
    ],
    ids=["403", "404", "500", "read timeout"],
)
def test_failed_block_read_is_a_503_for_that_request_only(
    make_lookup: Callable[..., Lookup], versions: Versions, fault: Callable[[Any], Any]
) -> None:
    lookup, version = serving(make_lookup, versions)
    lookup.faults.add(fault, key_suffix=BLOCKS_NAME)

    failed = lookup.ask(COLD)
    hot = lookup.ask(HOT)
    lookup.faults.clear()
    retried = lookup.ask(COLD)

    assert_rows_unavailable(failed, version)
    assert (hot.status, hot.version) == (200, version)
    assert (retried.status, retried.version) == (200, version)
    assert retried.body["item"]["customer_id"] == COLD


def test_corrupt_block_is_a_503_logged_as_bad_without_the_key_and_never_cached(
    make_lookup: Callable[..., Lookup],
    versions: Versions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lookup, version = serving(make_lookup, versions)
    store, key = versions.publisher, blocks_key(version)
    body = raw_read(store, key)
    raw_write(store, key, flip_bytes(body, at=len(body) - 64))  # inside the last block
    reads = lookup.calls.count(key)

    with caplog.at_level(logging.INFO):
        answers = [lookup.ask(COLD) for _ in range(2)]
    hot = lookup.ask(HOT)

    for answer in answers:
        assert_rows_unavailable(answer, version)
    assert lookup.calls.count(key) == reads + 2  # read again: a bad block is never cached
    assert (hot.status, hot.version) == (200, version)
    bad = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert bad == [f"block 1 of snapshot {version} is bad: snapshot {version}: block 1: "
                   "sha256 mismatch"] * 2  # fmt: skip
    logged = " ".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert COLD not in logged
    assert not [r for r in caplog.records if r.name == CACHE_LOGGER and r.levelno >= 30]
