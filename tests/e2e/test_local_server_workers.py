"""``python -m service.local_server --workers N``: N processes on one port map one shared copy.

The processes stand in for Lambda Managed Instances' several Python processes per environment:
the first to load a version writes it once to ``SHARE_DIR``, the others map that file. Every
worker answers, only one copy is written, and SIGTERM to the supervisor stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import TYPE_CHECKING
from urllib.request import urlopen

from tests.conftest import customers, publish
from tests.e2e.test_local_server_refresh import WAIT_SECONDS, _lines, _wait_for, start_server

if TYPE_CHECKING:
    from pathlib import Path

    from loaders.store import FileStore

WORKERS = 3


def test_workers_share_one_port_and_one_mapped_copy(file_store: FileStore, tmp_path: Path) -> None:
    version = publish(file_store, customers(["C000000001", "C000000002"]))
    share = tmp_path / "share"
    env = {
        **os.environ,
        "SNAPSHOT_URI": file_store.uri,
        "SHARE_DIR": str(share),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("SHARE_SNAPSHOTS", None)  # the supervisor turns sharing on for its workers
    process = start_server(env, "--workers", str(WORKERS))
    try:
        lines = _lines(process)
        url = _wait_for(lines, " workers on ").split()[-1]
        for _ in range(WORKERS):
            _wait_for(lines, "serving on ")

        answers = []
        for _ in range(2 * WORKERS):
            with urlopen(f"{url}/customers/C000000002", timeout=WAIT_SECONDS) as answer:
                answers.append(json.loads(answer.read()))

        assert {a["item"]["customer_id"] for a in answers} == {"C000000002"}
        assert {a["snapshot"]["version"] for a in answers} == {version}
        assert {a["snapshot"]["mode"] for a in answers} == {"memory"}
        copies = sorted(p.name for p in share.iterdir() if p.name.endswith(".arrow"))
        assert len(copies) == 1 and copies[0].startswith(version)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_SECONDS) == 0
    workers = subprocess.run(
        ["pgrep", "-f", f"service.local_server --port {url.rsplit(':', 1)[1]} --worker"],
        capture_output=True,
        check=False,
    )
    assert workers.stdout == b""  # every worker stopped with the supervisor
