"""scripts/bench.py --refresh-latency runs end to end on a small table, so it cannot rot. No
timing asserts: only that both modes ran, and which of them had the extension."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WINDOW = {"invocations", "response", "caller", "after_response_max_ms"}
LATENCY = {"p50_ms", "p99_ms", "p999_ms", "max_ms"}


def test_refresh_latency_writes_both_modes_before_and_after_the_announcement(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, "scripts/bench.py", "--refresh-latency", "--rows", "10000",
         "--invocations", "200", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads((tmp_path / "results.json").read_text())["refresh_latency"]

    assert (figures["rows"], figures["invocations"]) == (10_000, 200)
    assert {m: f["extension_registered"] for m, f in figures["modes"].items()} == {
        "extension": True,
        "in_request": False,
    }
    for mode in figures["modes"].values():
        assert set(mode["steady"]) == set(mode["change"]) == WINDOW
        assert set(mode["change"]["response"]) == LATENCY
        assert mode["invocations_until_new_version"] >= 0
    assert "## Refresh latency" in (tmp_path / "results.md").read_text()
