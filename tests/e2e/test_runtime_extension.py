"""The lookup function in a stand-in execution environment: the real runtime client
(``python -m awslambdaric service.handler.handler``) against tests/lambda_runtime_fake.py,
which freezes the process between invocations as Lambda does.

A slow reload is made by a data file that is a named pipe: reading it blocks until the test
writes the real bytes into it, so the test decides when the reload may finish.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

import pytest

from loaders.manifest import DATA_NAME, snapshot_key
from loaders.store import FileStore
from tests.conftest import customers, publish
from tests.lambda_runtime_fake import lambda_environment

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.lambda_runtime_fake import LambdaRuntimeFake

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

KEY = "C000000001"
V1_IDS = [KEY, "C000000002"]
V2_IDS = [KEY, "C000000002", "C000000003"]
WAIT_SECONDS = 30


class HeldData:
    """Turns what loading one version reads after its manifest (``name``: the data file, or
    the block index in tiered mode) into a named pipe; :meth:`release` feeds it."""

    def __init__(self, store: FileStore, version: str, name: str = DATA_NAME) -> None:
        self.path = store.root / snapshot_key(version, name)
        self.body = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)
        self.reader_waiting = threading.Event()  # a reader has opened the pipe: a load started
        self._release = threading.Event()
        self._writer = threading.Thread(target=self._feed, daemon=True)
        self._writer.start()

    def _feed(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # returns once a reader has opened the pipe
        self.reader_waiting.set()
        self._release.wait(WAIT_SECONDS)
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(self.body)

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "snapshots")


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "runtime.log"
    yield path
    if path.exists():  # shown when a test fails
        print(path.read_text()[-4000:])  # noqa: T201


def _env(store: FileStore, **extra: str) -> dict[str, str]:
    return {"SNAPSHOT_URI": store.uri, "POWERTOOLS_LOG_LEVEL": "INFO", **extra}


def _version(answer: dict[str, Any]) -> str:
    return answer["snapshot"]["version"]


def _messages(log_path: Path) -> list[str]:
    messages = []
    for line in log_path.read_text().splitlines():
        try:
            messages.append(json.loads(line).get("message", ""))
        except ValueError:
            continue
    return messages


def _initialized(fake: LambdaRuntimeFake) -> LambdaRuntimeFake:
    assert fake.wait_initialized(WAIT_SECONDS), "init did not end"
    assert fake.init_error is None, fake.init_error
    return fake


# --- standard Lambda: the internal extension -----------------------------------------------


def test_extension_registers_at_init_and_the_environment_freezes_between_invocations(
    store: FileStore, log_path: Path, serve_mode: str
) -> None:
    v1 = publish(store, customers(V1_IDS))

    with lambda_environment(_env(store), log_path=log_path) as fake:
        _initialized(fake)
        answers = []
        for _ in range(3):
            invocation = fake.submit({"customer_id": KEY})
            answers.append(invocation.result(WAIT_SECONDS))
            assert invocation.released.wait(WAIT_SECONDS)  # idle, with nothing queued

        assert fake.extensions == ["snapshot-refresh"]
        assert [_version(a) for a in answers] == [v1] * 3
        assert {a["snapshot"]["mode"] for a in answers} == {serve_mode}  # SERVE_MODE reached it
        assert fake.frozen_count == 4  # after init and after each invocation
    assert "pointer checks run after each response (internal extension)" in _messages(log_path)


def test_reload_runs_after_the_response_and_the_next_invocation_serves_the_new_version(
    store: FileStore, log_path: Path, loaded_name: str
) -> None:
    v1 = publish(store, customers(V1_IDS))
    # TTL 0: every invocation makes a check due; the extension runs it after the response.
    with lambda_environment(_env(store, REFRESH_TTL_SECONDS="0"), log_path=log_path) as fake:
        _initialized(fake)
        assert _version(fake.invoke({"customer_id": KEY}, WAIT_SECONDS)) == v1
        v2 = publish(store, customers(V2_IDS))  # the environment is frozen meanwhile
        held = HeldData(store, v2, loaded_name)

        made_due = fake.submit({"customer_id": KEY})
        answer = made_due.result(WAIT_SECONDS)
        assert held.reader_waiting.wait(WAIT_SECONDS)  # the reload started, and is held
        following = fake.submit({"customer_id": KEY})

        # Answered from v1 while the reload of v2 cannot finish; the environment stays busy.
        assert _version(answer) == v1
        assert not made_due.released.is_set()
        assert following.dispatched_at is None
        held.release()
        assert _version(following.result(WAIT_SECONDS)) == v2
        assert made_due.responded_at is not None and made_due.released_at is not None
        assert made_due.responded_at < made_due.released_at
        assert following.dispatched_at >= made_due.released_at


def test_a_held_reload_never_holds_a_response(
    store: FileStore, log_path: Path, loaded_name: str
) -> None:
    v1 = publish(store, customers(V1_IDS))
    # A check started by the request would hold it up to REFRESH_WAIT_SECONDS: 60 s here, far
    # past the 10 s this test gives each response while the reload is held.
    env = _env(store, REFRESH_TTL_SECONDS="0", REFRESH_WAIT_SECONDS="60")
    with lambda_environment(env, log_path=log_path) as fake:
        _initialized(fake)
        fake.invoke({"customer_id": KEY}, WAIT_SECONDS)
        v2 = publish(store, customers(V2_IDS))
        held = HeldData(store, v2, loaded_name)

        answered = [fake.submit({"customer_id": KEY}).result(10)]
        assert held.reader_waiting.wait(WAIT_SECONDS)
        later = fake.submit({"customer_id": KEY})
        held.release()
        answered.append(later.result(WAIT_SECONDS))

        assert [_version(a) for a in answered] == [v1, v2]


# --- fallbacks: no extension ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "env"),
    [
        pytest.param({"register_status": 500}, {}, id="registration-fails"),
        pytest.param({}, {"REFRESH_MODE": "request"}, id="refresh-mode-request"),
    ],
)
def test_without_the_extension_requests_refresh_themselves(
    store: FileStore, log_path: Path, options: dict[str, Any], env: dict[str, str]
) -> None:
    v1 = publish(store, customers(V1_IDS))
    with lambda_environment(
        _env(store, REFRESH_TTL_SECONDS="0", **env), log_path=log_path, **options
    ) as fake:
        _initialized(fake)
        assert _version(fake.invoke({"customer_id": KEY}, WAIT_SECONDS)) == v1
        v2 = publish(store, customers(V2_IDS))

        answer = fake.invoke({"customer_id": KEY}, WAIT_SECONDS)

        assert fake.extensions == []
        assert _version(answer) == v2  # the request itself checked and loaded it


def test_a_failed_registration_says_so_in_the_log(store: FileStore, log_path: Path) -> None:
    publish(store, customers(V1_IDS))
    with lambda_environment(_env(store), log_path=log_path, register_status=500) as fake:
        _initialized(fake)
        fake.invoke({"customer_id": KEY}, WAIT_SECONDS)

    assert any(m.startswith("no refresh extension (register answered 500") for m in
               _messages(log_path))  # fmt: skip


# --- SnapStart: the runtime client runs the after-restore hook -----------------------------


def test_after_restore_the_pointer_is_checked_before_the_first_invocation(
    store: FileStore, log_path: Path
) -> None:
    v1 = publish(store, customers(V1_IDS))
    env = _env(store, AWS_LAMBDA_INITIALIZATION_TYPE="snap-start")
    with lambda_environment(env, log_path=log_path, snap_start=True) as fake:
        assert fake.restore_requested.wait(WAIT_SECONDS)  # init done: the image is taken here
        v2 = publish(store, customers(V2_IDS))  # announced while the image sat in the cache
        fake.restore()
        _initialized(fake)

        answer = fake.invoke({"customer_id": KEY}, WAIT_SECONDS)

        assert fake.restore_error is None
        assert _version(answer) == v2
    messages = _messages(log_path)
    # loaded during init, in the image
    assert f"serving snapshot {v1} (2 rows, {os.environ['SERVE_MODE']})" in messages
    assert f"after restore: pointer check loaded; serving {v2}" in messages
