"""Time from `make run` to the first answered lookup, on a fresh or an existing sample.

    python scripts/first_answer.py [--fresh] [--port 3000] [--timeout 300]

Starts `make run` in its own process group, polls GET /health until it answers (the server
loads its snapshot before it accepts requests), reports the seconds elapsed and the server's
RSS, then stops the server. Nothing else may listen on the port.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb(pid: int) -> float:
    """Largest RSS among the process group's python processes, in MB (from /proc)."""
    best = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                best = max(best, int(line.split()[1]) / 1024)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="delete .data first (regenerate)")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(ROOT / ".data", ignore_errors=True)
    base = f"http://127.0.0.1:{args.port}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["make", "run", f"PORT={args.port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = started + args.timeout
        while time.perf_counter() < deadline:
            try:
                health = json.load(urlopen(f"{base}/health", timeout=2))
                break
            except (URLError, ConnectionError, OSError):
                if proc.poll() is not None:
                    print("make run exited early", file=sys.stderr)
                    return 1
                time.sleep(0.05)  # polling a child process, not a test
        else:
            print("no answer before the timeout", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "seconds_to_first_answer": round(elapsed, 2),
                    "server_rss_mb": round(_rss_mb(proc.pid), 1),
                    "snapshot": health["snapshot"]["version"],
                    "fresh": args.fresh,
                }
            )
        )
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
