"""scripts/bench.py --quick and --soak run end to end, so the benchmark cannot rot. No timing
asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from service.memory import lookup_memory_pool

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {"build_s", "rss_mb", "lookup_p50_us", "lookup_p99_us", "batch100_us"}
OURS_ONLY = {
    "arrow_nbytes_mb",
    "handler_p50_us",
    "minimal_handler_p50_us",
    "handler_ratio",
    "http_rps",
    "http_p50_ms",
    "http_p99_ms",
    "http_errors",
    "refresh_unchanged_requests",
    "refresh_unchanged_body_bytes",
    "load_s3_s",
}
SOAK_FIGURES = {
    "rss_before_load_mb",
    "rss_after_first_load_mb",
    "first_load_s",
    "arrow_nbytes_mb",
    "steady_after_last_mb",
    "steady_ratio",
    "steady_growth_ratio",
    "peak_rss_mb",
    "peak_to_steady",
    "refresh_s_median",
}
REFRESH_FIGURES = {"version", "refresh_s", "peak_rss_mb", "steady_rss_mb", "samples"}
PNG = b"\x89PNG\r\n\x1a\n"


def _bench(out: Path, *args: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "scripts/bench.py", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


def test_quick_bench_writes_results_for_ours_and_every_peer(tmp_path: Path) -> None:
    results = _bench(tmp_path, "--quick")
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
        assert (tmp_path / plot).read_bytes()[:8] == PNG


def test_soak_writes_memory_figures_for_each_store(tmp_path: Path) -> None:
    results = _bench(tmp_path, "--soak", "--rows", "3000", "--refreshes", "2")

    assert set(results) == {"soak"}  # a soak run leaves the comparison out
    soak = results["soak"]
    assert set(soak) == {"file", "s3"}
    for store, figures in soak.items():
        assert set(figures) >= SOAK_FIGURES, store
        assert figures["store"] == store
        assert figures["rows"] == 3000
        # Built the way Lambda builds it: service.handler set the lookup pool.
        assert figures["memory_pool"] == lookup_memory_pool().backend_name
        refreshes = figures["refreshes"]
        assert len(refreshes) == 2
        assert len({r["version"] for r in refreshes}) == 2  # each refresh loaded a new version
        for refresh in refreshes:
            assert set(refresh) >= REFRESH_FIGURES, store
            assert refresh["samples"] >= 2
            assert refresh["peak_rss_mb"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "## Soak: 3,000 customers, 2 refreshes" in text
    assert "| s3 | refresh 2 |" in text
    assert (tmp_path / "soak.png").read_bytes()[:8] == PNG


def test_coldstart_measures_the_lookup_package(tmp_path: Path) -> None:
    package = tmp_path / "lookup"
    build = subprocess.run(
        [sys.executable, "scripts/package.py", "--function", "lookup", "--out", str(package),
         "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]

    args = ("--coldstart", "--package", str(package), "--rows", "2000", "--runs", "2")
    results = _bench(tmp_path / "out", *args, "--ready-runs", "1")

    assert set(results) == {"coldstart"}  # a cold-start run leaves the comparison out
    figures = results["coldstart"]
    assert figures["imports"]["lookup_statement"] == "import service.handler, botocore.session"
    assert figures["imports"]["floor_ms"] > 0
    assert figures["imports"]["ratio"] > 0
    assert figures["client"]["boto3_ms"] > 0
    assert figures["client"]["botocore_ms"] > 0
    assert figures["ready"]["file_s"] > 0
    assert figures["ready"]["s3_s"] > 0
    assert figures["packages"]["given"]["unzipped_mb"] > 0
    assert "## Cold start, from the lookup package" in (tmp_path / "out" / "results.md").read_text()


LOAD_FIGURES = {
    "row_groups",
    "sha256_s",
    "decode_s",
    "index_s",
    "load_s",
    "load_cpu_s",
    "rss_growth_mb",
    "arrow_nbytes_mb",
    "rss_ratio",
    "refresh_s",
    "refresh_cpu_s",
    "steady_ratio",
}


def test_load_writes_decode_and_index_figures_for_each_layout_and_pool(tmp_path: Path) -> None:
    results = _bench(
        tmp_path / "out",
        "--load",
        "--load-sizes",
        "3000",
        "--load-runs",
        "1",
        "--refreshes",
        "2",
        "--pools",
        "handler,system",
        "--load-cache",
        str(tmp_path / "snapshots"),
    )

    assert set(results) == {"load"}  # a load run leaves the comparison out
    variants = results["load"]["3000"]
    layouts = ("old", "new", "rg4096")
    assert set(variants) == {
        f"{layout}/{pool}" for layout in layouts for pool in ("handler", "system")
    }
    for name, figures in variants.items():
        assert set(figures) >= LOAD_FIGURES, name
        assert figures["runs"] == 1
        assert figures["row_groups"] == 1  # 3,000 rows: one group in every layout
        assert figures["load_s"] > 0
    assert variants["new/system"]["memory_pool"] == "system"
    assert variants["new/handler"]["memory_pool"] == lookup_memory_pool().backend_name
    assert "| 3,000 | new/handler |" in (tmp_path / "out" / "results.md").read_text()
