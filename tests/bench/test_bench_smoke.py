"""scripts/bench.py --quick runs end to end, so the benchmark cannot rot. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {"build_s", "rss_mb", "lookup_p50_us", "lookup_p99_us", "batch100_us"}
OURS_ONLY = {
    "arrow_nbytes_mb",
    "handler_p50_us",
    "http_rps",
    "http_p50_ms",
    "http_p99_ms",
    "http_errors",
    "refresh_unchanged_requests",
    "refresh_unchanged_body_bytes",
    "load_s3_s",
}


def test_quick_bench_writes_results_for_ours_and_every_peer(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]

    results = json.loads((tmp_path / "results.json").read_text())
    systems = results["10000"]
    assert set(systems) == {"ours", "dict", "pandas", "arrow_filter", "duckdb_query"}
    for name, figures in systems.items():
        assert set(figures) >= FIGURES, name
        assert figures["lookup_p50_us"] > 0
    ours = systems["ours"]
    assert set(ours) >= OURS_ONLY
    # Behaviour, not speed: the loopback run answered, without errors, and an unchanged
    # pointer cost one conditional request and no body bytes.
    assert ours["http_errors"] == 0
    assert ours["http_rps"] > 0
    assert ours["refresh_unchanged_requests"] == 1
    assert ours["refresh_unchanged_body_bytes"] == 0
    assert "| ours |" in (tmp_path / "results.md").read_text()
    for plot in ("lookup_p50.png", "memory.png", "build.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
