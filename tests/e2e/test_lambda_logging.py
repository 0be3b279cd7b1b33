"""Log lines of the lookup function as Lambda emits them: every module's lines are Powertools
JSON, INFO included, and none carries a customer key.

Runs the handler module in a child process with the Lambda environment variables set, so that
``start_in_lambda`` loads the snapshot at import, exactly as in an execution environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import customers, publish

if TYPE_CHECKING:
    from loaders.store import FileStore

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "C000000042"
CHILD = f"""
import json
from service.handler import handler
from service.local_server import LocalContext
handler({{"customer_id": "{SECRET_KEY}"}}, LocalContext())
handler({{"customer_id": "NOT_THERE"}}, LocalContext())
"""


def run_lambda_child(snapshot_uri: str) -> list[str]:
    env = {
        **os.environ,
        "AWS_LAMBDA_FUNCTION_NAME": "customer-lookup",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "SNAPSHOT_URI": snapshot_uri,
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "SERVE_MODE": "auto",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def test_cache_log_lines_are_powertools_json_with_info_kept(file_store: FileStore) -> None:
    version = publish(file_store, customers([SECRET_KEY, "C000000043"]))

    lines = run_lambda_child(file_store.uri)

    records = [json.loads(line) for line in lines]  # a plain-text line fails here
    serving = [r for r in records if r.get("message", "").startswith("serving snapshot")]
    assert serving and serving[0]["level"] == "INFO"
    # auto: a 2-row table fits the 1,024 MB function's budget.
    assert serving[0]["message"] == f"serving snapshot {version} (2 rows, memory)"
    assert serving[0]["service"] == "customer-lookup"


def test_rejection_is_logged_as_json_without_customer_keys(file_store: FileStore) -> None:
    version = publish(file_store, customers([SECRET_KEY, "C000000043"]))
    data = file_store.root / "snapshots" / version / "data.parquet"
    body = bytearray(data.read_bytes())
    body[len(body) // 2] ^= 0xFF
    data.write_bytes(bytes(body))

    lines = run_lambda_child(file_store.uri)

    records = [json.loads(line) for line in lines]
    rejected = [r for r in records if "rejected" in r.get("message", "")]
    assert rejected and rejected[0]["level"] == "ERROR"
    assert not any(SECRET_KEY in line for line in lines)
