"""scripts/bench.py --sizes ... --modes memory,tiered runs end to end, so the serving-mode
benchmark cannot rot. Behaviour only (what was read, and how often): no timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "load_s",
    "rss_imports_mb",
    "rss_load_mb",
    "peak_load_mb",
    "rss_end_mb",
    "hot_p50_us",
    "hot_p99_us",
    "cold_p50_us",
    "cold_p99_us",
    "batch_cold_p50_us",
    "batch_warm_p50_us",
    "cold_requests_mean",
    "cold_kb_mean",
    "batch_requests_mean",
    "batch_kb_mean",
    "load_requests",
    "load_mb",
}
TIERED_ONLY = {"read_p50_ms", "decode_p50_ms", "blocks", "cached_mb", "rss_full_mb"}


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/bench.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_modes_run_reports_both_modes_on_both_stores(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = _bench(
        tmp_path,
        *("--sizes", "20000", "--modes", "memory,tiered", "--runs", "1"),
        *("--cache", str(tmp_path / "snapshots"), "--out", str(out)),
    )
    assert run.returncode == 0, run.stderr[-2000:]

    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    stores = results["sizes"]["20000"]
    assert set(stores) == {"file", "s3"}
    for store, modes in stores.items():
        assert set(modes) == {"memory", "tiered"}, store
        memory, tiered = modes["memory"], modes["tiered"]
        for figures in (memory, tiered):
            assert set(figures) >= FIGURES, store
            assert figures["rows"] == 20000
        assert set(tiered) >= TIERED_ONLY
        # Memory reads the data once at load, then nothing per lookup.
        assert memory["cold_requests_mean"] == 0
        assert memory["batch_requests_mean"] == 0
        # Memory loads the pointer, manifest and data; tiered the pointer, manifest and block
        # index (and at most one block, should the load check one). Then tiered reads one block
        # of at most 128 KiB per cold key, and one read per distinct block of a batch.
        assert memory["load_requests"] == 3
        assert 3 <= tiered["load_requests"] <= 4
        assert tiered["load_mb"] < memory["load_mb"]
        assert tiered["cold_requests_mean"] == tiered["cold_requests_max"] == 1
        assert 0 < tiered["cold_kb_max"] <= 128
        assert tiered["batch_requests_mean"] == tiered["batch_blocks_mean"]
    text = (out / "results.md").read_text()
    assert "## 20,000 rows" in text
    assert "| s3 | tiered |" in text


def test_separate_runs_cannot_be_combined(tmp_path: Path) -> None:
    run = _bench(tmp_path, "--build", "--shared")

    assert run.returncode != 0
    assert "--build and --shared are separate runs" in run.stderr


def test_a_run_whose_script_is_missing_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    from scripts import bench

    monkeypatch.setitem(bench.DISPATCH, "--build", "bench_not_written_yet")

    with pytest.raises(SystemExit, match=r"runs scripts/bench_not_written_yet\.py, which this"):
        bench._dispatch(["--build", "--sizes", "1000"])
