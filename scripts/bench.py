"""Benchmark the lookup path: cold load, memory, core and handler latency.

    python scripts/bench.py [--sizes 100000,1000000] [--quick] [--out bench]

Writes ``<out>/results.json`` keyed by size, then by system. Quote medians and ratios: the
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loaders.publish import publish_table
from loaders.snapshot import SnapshotReader
from loaders.store import FileStore
from scripts.sample_data import make_customers
from service.cache import SnapshotCache
from service.handler import LookupFunction, Service
from service.local_server import LocalContext, to_event
from service.settings import Settings

KEY = "customer_id"


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


def _probe_keys(table: pa.Table, count: int, miss_ratio: float, seed: int) -> list[str]:
    """``count`` keys drawn from the table, with ``miss_ratio`` of them absent."""
    rng = np.random.default_rng(seed)
    keys = table.column(KEY).to_numpy(zero_copy_only=False)
    picks = keys[rng.integers(0, len(keys), size=count)].tolist()
    for i in np.flatnonzero(rng.random(count) < miss_ratio):
        picks[i] = f"X{i:09d}"  # never a customer id: those start with C
    return picks


def _latencies_us(fn: Any, keys: list[str]) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for key in keys:
        start = clock()
        fn(key)
        out.append((clock() - start) / 1000)
    return out


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[int(len(ordered) * 0.99) - 1], 2),
    }


def bench_ours(root: Path, probes: list[str]) -> dict[str, Any]:
    """Load from a file:// root through the real cache, then time lookups."""
    gc.collect()
    before = _rss_mb()
    cache = SnapshotCache(
        SnapshotReader(FileStore(root)),
        key_column=KEY,
        ttl_seconds=300,
        max_staleness_seconds=172800,
    )
    start = time.perf_counter()
    cache.refresh()
    load_s = time.perf_counter() - start
    gc.collect()
    rss = _rss_mb() - before
    index = cache.serving().index
    core = _summary(_latencies_us(index.get, probes))
    function = LookupFunction(Service(Settings(snapshot_uri=root.as_uri()), cache))
    context = LocalContext()
    events = {
        key: to_event("GET", f"/customers/{key}", {"host": "bench"}, b"", "127.0.0.1")
        for key in probes[:20_000]
    }
    handler = _summary(_latencies_us(lambda k: function(events[k], context), list(events)))
    batch = [probes[i : i + 100] for i in range(0, 100 * 200, 100)]
    batch_us = _latencies_us(index.get_many, batch)
    return {
        "build_s": round(load_s, 3),
        "rss_mb": round(rss, 1),
        "arrow_nbytes_mb": round(index.table.nbytes / 1e6, 1),
        "lookup_p50_us": core["p50"],
        "lookup_p99_us": core["p99"],
        "batch100_us": round(statistics.median(batch_us), 1),
        "handler_p50_us": handler["p50"],
        "handler_p99_us": handler["p99"],
    }


def _in_child(fn: Any, *args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, so RSS growth is its own."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--quick", action="store_true", help="10k rows, fewer probes")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    probe_count = 10_000 if args.quick else 100_000
    results: dict[str, Any] = {}
    for size in sizes:
        table = make_customers(size)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "snapshots"
            publish_table(FileStore(root), table, key_column=KEY, now=datetime.now(UTC))
            probes = _probe_keys(table, probe_count, 0.10, seed=size)
            del table
            results[str(size)] = {"ours": _in_child(bench_ours, root, probes)}
        print(json.dumps({size: results[str(size)]}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
