"""``python -m service.local_server``: a timer thread picks up a new version with no request at
all (the process is never frozen), and the next request is answered from it.

The server's log lines are read as they come (unbuffered), so the test waits on the line that
says the new version is served, not on a clock.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import urlopen

import pytest

from tests.conftest import customers, publish

if TYPE_CHECKING:
    from loaders.store import FileStore

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 30


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def start_server(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``python -m service.local_server --port 0 [args]``, its output merged into one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.local_server", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(lines: queue.Queue[str], text: str) -> str:
    while True:
        line = lines.get(timeout=WAIT_SECONDS)
        if text in line:
            return line


def test_timer_serves_a_new_version_without_any_request(
    file_store: FileStore, serve_mode: str
) -> None:
    publish(file_store, customers(["C000000001", "C000000002"]))
    env = {
        **os.environ,
        "SNAPSHOT_URI": file_store.uri,
        "REFRESH_TTL_SECONDS": "0",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    process = start_server(env)
    try:
        lines = _lines(process)
        url = _wait_for(lines, "serving on ").split()[2]
        v2 = publish(file_store, customers(["C000000001", "C000000003"]))

        _wait_for(lines, f"serving snapshot {v2}")
        with urlopen(f"{url}/health", timeout=WAIT_SECONDS) as answer:
            body = json.loads(answer.read())

        assert body["snapshot"]["version"] == v2
        assert body["snapshot"]["mode"] == serve_mode  # SERVE_MODE reached the server process
    finally:
        process.kill()
        process.wait(10)
