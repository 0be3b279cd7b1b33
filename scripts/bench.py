"""Benchmark the lookup path against its peers, side by side, in one run.

    python scripts/bench.py [--sizes 100000,1000000] [--quick] [--out bench]
    python scripts/bench.py --soak [--rows 1000000] [--refreshes 5] [--blackhole] [--out bench/soak]
    python scripts/bench.py --rollback [--rows 1000000] [--out bench/rollback]
    python scripts/bench.py --coldstart [--rows 1000000] [--runs 15] [--package DIR]
    python scripts/bench.py --refresh-latency [--rows 1000000] [--invocations 2000]
    python scripts/bench.py --sizes 1000000,10000000 --modes memory,tiered [--stores file,s3]
    python scripts/bench.py --build [...]   # scripts/bench_build.py
    python scripts/bench.py --shared [...]  # scripts/bench_shared.py

For each size it publishes one sample snapshot (file:// and S3 on a local moto server) and
measures, each system in a fresh interpreter so that RSS growth is its own:

- ours: cold load (CURRENT -> manifest -> data -> sha256 -> index) from file:// and from S3,
  RSS growth and Arrow nbytes, core lookup (key -> row dict) and whole-handler latency
  (HTTP API v2 event -> JSON response) beside a minimal hand-written v2 handler over the same
  index (the floor; calls interleaved, ratio of medians), batch of 100, a refresh with an
  unchanged pointer (requests made, body bytes read), and loopback HTTP through the local
  server driven by separate client processes;
- peers on the same table and probe keys: a dict of tuples, pandas ``.loc``, an Arrow
  ``equal`` + ``filter`` scan, and a DuckDB query per lookup over the Parquet file.

``--soak``, ``--blackhole`` and ``--rollback`` measure these instead of the comparison (default
``--out`` ``bench/soak``, or ``bench/rollback`` for ``--rollback`` alone, so the comparison's
results stay):

- soak: ``--refreshes + 1`` versions of a ``--rows`` table, each a few rows apart; for each store
  (file:// and S3), a fresh interpreter without pandas builds the function as Lambda does
  (``build_service``, system memory pool), loads the first, then announces and refreshes to
  each next one: RSS after the first load, peak RSS during each refresh (sampled every 5 ms),
  steady RSS after each, their ratios, Arrow nbytes and refresh times;
- black hole: the time a warm request (snapshot loaded, TTL lapsed) and a cold one (nothing
  loaded) take to be answered through the handler while S3 accepts connections and never
  answers, at the default budgets; the longest of ``--blackhole-runs``;
- rollback: two ``--rows`` versions in a file:// root, the second current; a fresh interpreter
  without pandas loads the lookup function as Lambda does (``build_service``, TTL 0 so the TTL
  itself adds nothing) and serves the second; then ``snapshotctl rollback`` runs as its own
  process, and lookups go on until one answers from the first version: the command's seconds
  (interpreter start, verification of the target, the swap), then the reader's reload;
- refresh latency (``--refresh-latency``): two ``--rows`` versions in a file:// root; for each
  refresh mode, the lookup function runs under the real runtime client (``awslambdaric``)
  against tests/lambda_runtime_fake.py (the Runtime and Extensions APIs, the process frozen
  between invocations), and ``--invocations`` direct invocations go through it one after the
  other, the second version announced halfway: response times (event handed to the runtime ->
  response) and the caller's (queued behind the previous invocation's after-response work
  included), before and after the announcement.

``--coldstart`` (default ``--out`` ``bench/coldstart``) measures the lookup function from its
Lambda package (``scripts/package.py``, built here, or an existing one with ``--package``), each
figure the median of ``--runs`` fresh interpreters that see only the package and the standard
library: the imports of the lookup function against the floor of what it must load anyway
(numpy, pyarrow, pyarrow.parquet, botocore.session), alternating, and their ratio; S3 client
creation with boto3 and with botocore (``make_s3_client``); and the time from process start to
ready (module imported as Lambda's init does, snapshot of ``--rows`` loaded) from file:// and
from S3 on the moto server. Package sizes, unzipped and zipped, for both functions. With
``--baseline DIR`` (say, the package before issue 10) its imports and ready times are measured
in the same runs, alternating with the package's.

``--load`` (default ``--out`` ``bench/load``) measures one cold load, part by part (sha256,
Parquet decode, key index; download excluded; wall and CPU seconds), RSS after it against Arrow
nbytes, and the refresh spike (``cache.refresh()`` to a new version on file://, ``--refreshes``
of them, the previous version in memory), at each of ``--load-sizes`` rows, for the snapshot
layout ``encode_table`` writes (``new``) beside the one it wrote before issue 10 (``old``: 1M-row
row groups, every column nullable) and ``rg4096`` (``new`` in 4,096-row row groups: one Parquet
file that could also serve the tiered mode, issue 11), and for each of ``--pools``
(``handler``: whatever ``service.handler`` sets). Every figure is the median of
``--load-runs`` fresh interpreters without pandas, run interleaved. The snapshots are made
once and kept under ``--load-cache`` (``.data/bench-load``)::

    python scripts/bench.py --load [--load-sizes 1000000,10000000] [--load-runs 5]
        [--layouts old,new,rg4096]
        [--pools handler,system,mimalloc,jemalloc-decay0,jemalloc-decay1000]
        [--refreshes 5]

Writes ``<out>/results.json`` (size -> system -> figure, plus ``soak`` -> store -> figure,
``blackhole`` -> warm/cold -> figure and ``rollback`` -> figure), ``<out>/results.md`` and PNG
plots.
Quote medians and ratios: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loaders.manifest import (
    DATA_NAME,
    Pointer,
    announce,
    new_version,
    read_pointer,
    snapshot_key,
)
from loaders.publish import publish_table
from loaders.snapshot import write_snapshot
from loaders.store import FileStore, S3Store
from scripts.sample_data import make_customers

ROOT = Path(__file__).resolve().parent.parent
KEY = "customer_id"
BUCKET = "bench-snapshots"
PREFIX = "customer-mapping"
MISS_RATIO = 0.10
# Scans and queries take milliseconds each: cap their probes so a run stays short.
SLOW_PROBES = {"arrow_filter": 300, "duckdb_query": 100}
# Issue 10: the whole handler's p50 at most this times the minimal handler's, in one run; the
# lookup function's imports (from its package) at most this times the floor's.
HANDLER_GOAL_RATIO = 2.0
IMPORT_GOAL_RATIO = 1.15
GOALS = {
    "lookup_p50_us": 3.0,
    "rss_ratio": 1.6,
    "load_file_s": 0.3,
    "http_rps": 4000,
    "http_p99_ms": 10.0,
    "batch100_us": 300.0,
}


# --- measuring helpers ------------------------------------------------------------------------


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def _settle() -> None:
    gc.collect()
    pa.default_memory_pool().release_unused()


def _latencies_us(fn: Callable[[Any], Any], args: list[Any]) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for arg in args:
        start = clock()
        fn(arg)
        out.append((clock() - start) / 1000)
    return out


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _lookup_figures(fn: Callable[[str], Any], probes: list[str]) -> dict[str, float]:
    for key in probes[:1000]:  # warm caches and code paths
        fn(key)
    samples = _latencies_us(fn, probes)
    return {
        "lookup_p50_us": round(statistics.median(samples), 2),
        "lookup_p99_us": round(_pct(samples, 0.99), 2),
    }


def _batch_figure(fn: Callable[[list[str]], Any], probes: list[str]) -> float:
    batches = [probes[i : i + 100] for i in range(0, min(len(probes), 100 * 300), 100)]
    return round(statistics.median(_latencies_us(fn, batches)), 1)


def _probe_keys(table: pa.Table, count: int, seed: int) -> list[str]:
    """``count`` keys drawn from the table, with MISS_RATIO of them absent."""
    rng = np.random.default_rng(seed)
    keys = table.column(KEY).to_numpy(zero_copy_only=False)
    picks = keys[rng.integers(0, len(keys), size=count)].tolist()
    for i in np.flatnonzero(rng.random(count) < MISS_RATIO):
        picks[i] = f"X{i:09d}"  # never a customer id: those start with C
    return picks


def _in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, so RSS growth is its own."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


# --- ours -------------------------------------------------------------------------------------


def _warm_up_process() -> None:
    """Load a tiny snapshot first, so one-time costs (code pages, thread pools, imports) are
    not charged to the snapshot's RSS growth."""
    from loaders.snapshot import SnapshotReader
    from service.cache import SnapshotCache

    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp))
        publish_table(store, make_customers(1000), key_column=KEY, now=datetime.now(UTC))
        cache = SnapshotCache(
            SnapshotReader(store), key_column=KEY, ttl_seconds=300, max_staleness_seconds=1e9
        )
        cache.refresh()
        index = cache.serving().index
        index.get("C000000845")
        index.get_many(["C000000845", "X"])


def bench_ours(root: str, s3_uri: str, probes: list[str]) -> dict[str, Any]:
    """Our cache and index: load, memory, lookups, handler, batch, refresh."""
    os.environ["SNAPSHOT_URI"] = root
    import boto3

    from loaders.snapshot import SnapshotReader
    from service import handler as lambda_handler
    from service.cache import SnapshotCache
    from service.local_server import LocalContext, to_event

    _warm_up_process()
    _settle()
    before = _rss_mb()
    cache = SnapshotCache(
        SnapshotReader(FileStore(Path(root.removeprefix("file://")))),
        key_column=KEY,
        ttl_seconds=300,
        max_staleness_seconds=172800,
    )
    start = time.perf_counter()
    cache.refresh()
    load_s = time.perf_counter() - start
    _settle()
    rss = _rss_mb() - before
    index = cache.serving().index
    figures: dict[str, Any] = {
        "build_s": round(load_s, 3),
        "rss_mb": round(rss, 1),
        "arrow_nbytes_mb": round(index.table.nbytes / 1e6, 1),
        **_lookup_figures(index.get, probes),
        "batch100_us": _batch_figure(index.get_many, probes),
    }
    # The whole Lambda entry point (Powertools logger context, routing, metrics, JSON) beside
    # its floor, a minimal hand-written handler over the same index, calls interleaved.
    context = LocalContext()
    events = [
        to_event("GET", f"/customers/{key}", {"host": "bench"}, b"", "127.0.0.1")
        for key in probes[:20_000]
    ]
    lambda_handler.handler(events[0], context)  # builds the module's function and loads
    serving = lambda_handler.default_function().service.cache
    figures.update(
        _handler_figures(lambda_handler.handler, _minimal_handler(serving), events, context)
    )
    figures.update(_refresh_from_s3(boto3.client("s3"), s3_uri))
    return figures


def _minimal_handler(cache: Any) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The floor of the handler: an HTTP API v2 handler written by hand over the same index.

    It answers a GET of a key with the same status and body as ours (the snapshot block
    included, its age taken per request), and does nothing else: no routing table, no event
    checks, no logger context, no metrics.
    """
    import json
    import re

    serving = cache.serving()
    index, block = serving.index, serving.snapshot
    created_at = datetime.fromisoformat(block["created_at"].replace("Z", "+00:00")).timestamp()
    fixed = {"version": block["version"], "created_at": block["created_at"]}
    checked_at, max_staleness, mode = block["checked_at"], 172800.0, block["mode"]
    key_pattern = re.compile(r"[A-Za-z0-9_-]{1,64}")
    headers = {"Content-Type": "application/json"}
    not_found = {"code": "not_found", "message": "customer not found"}

    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        key = event["rawPath"][len("/customers/") :]
        if not key_pattern.fullmatch(key):
            return {"statusCode": 400, "headers": headers, "body": '{"error":"bad key"}'}
        row = index.get(key)
        age = max(0.0, time.time() - created_at)
        snapshot = {**fixed, "age_seconds": int(age), "stale": age > max_staleness,
                    "checked_at": checked_at, "mode": mode}  # fmt: skip
        status, body = (404, {"error": not_found}) if row is None else (200, {"item": row})
        body["snapshot"] = snapshot
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return {"statusCode": status, "headers": {**headers}, "body": text}

    return handle


def _handler_figures(
    handler: Callable[[Any, Any], Any],
    minimal: Callable[[Any, Any], Any],
    events: list[dict[str, Any]],
    context: Any,
) -> dict[str, Any]:
    """p50/p99 of the handler and of its floor, calls interleaved (which goes first alternates),
    after checking that both give the same status and body."""
    for event in events[:200]:
        ours, floor = handler(event, context), minimal(event, context)
        if (ours["statusCode"], ours["body"]) != (floor["statusCode"], floor["body"]):
            ours = handler(event, context)  # the snapshot's age may have ticked between them
            if (ours["statusCode"], ours["body"]) != (floor["statusCode"], floor["body"]):
                raise RuntimeError(f"the minimal handler answers otherwise: {floor} vs {ours}")
    clock = time.perf_counter_ns
    ours_us, floor_us = [], []
    for n, event in enumerate(events):
        first, second, first_us, second_us = (
            (handler, minimal, ours_us, floor_us)
            if n % 2
            else (minimal, handler, floor_us, ours_us)
        )
        start = clock()
        first(event, context)
        middle = clock()
        second(event, context)
        end = clock()
        first_us.append((middle - start) / 1000)
        second_us.append((end - middle) / 1000)
    handler_p50, floor_p50 = statistics.median(ours_us), statistics.median(floor_us)
    return {
        "handler_p50_us": round(handler_p50, 2),
        "handler_p99_us": round(_pct(ours_us, 0.99), 2),
        "minimal_handler_p50_us": round(floor_p50, 2),
        "minimal_handler_p99_us": round(_pct(floor_us, 0.99), 2),
        "handler_ratio": round(handler_p50 / floor_p50, 2),
        "handler_ratio_goal": HANDLER_GOAL_RATIO,
    }


def _refresh_from_s3(client: Any, s3_uri: str) -> dict[str, Any]:
    """Cold load from S3 (moto server), then a refresh with an unchanged pointer."""
    from loaders.snapshot import SnapshotReader
    from service.cache import SnapshotCache

    counts = {"requests": 0, "body_bytes": 0}
    client.meta.events.register(
        "before-send.s3.*", lambda **_: counts.__setitem__("requests", counts["requests"] + 1)
    )
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    store = S3Store(client, bucket, prefix)

    class CountingStore:
        uri = store.uri

        def read(self, key: str) -> bytes:
            body = store.read(key)
            counts["body_bytes"] += len(body)
            return body

        def get(self, key: str, *, if_none_match: str | None = None) -> Any:
            obj = store.get(key, if_none_match=if_none_match)
            counts["body_bytes"] += 0 if obj is None else len(obj.body)
            return obj

    now = [0.0]
    cache = SnapshotCache(
        SnapshotReader(CountingStore()),  # type: ignore[arg-type]
        key_column=KEY,
        ttl_seconds=300,
        max_staleness_seconds=172800,
        clock=lambda: now[0],
    )
    start = time.perf_counter()
    cache.get()
    load_s3 = time.perf_counter() - start
    counts.update(requests=0, body_bytes=0)
    now[0] += 301  # past the TTL: the next request re-checks the pointer
    cache.get()
    return {
        "load_s3_s": round(load_s3, 3),
        "refresh_unchanged_requests": counts["requests"],
        "refresh_unchanged_body_bytes": counts["body_bytes"],
    }


# --- peers ------------------------------------------------------------------------------------


def _dict_peer(table: pa.Table, parquet_path: str) -> Callable[[str], Any]:
    """The seeds' technique: one dict of tuples, values made JSON-ready once at build time."""
    import pyarrow.compute as pc

    names = table.column_names
    columns = [
        pc.cast(c, pa.string()).to_pylist() if pa.types.is_timestamp(c.type) else c.to_pylist()
        for c in table.columns
    ]
    data = {row[0]: row for row in zip(*columns, strict=True)}

    def lookup(key: str) -> Any:
        row = data.get(key)
        return None if row is None else dict(zip(names, row, strict=True))

    return lookup


def _pandas_peer(table: pa.Table, parquet_path: str) -> Callable[[str], Any]:
    """A DataFrame indexed by the key, read with ``.loc``."""
    frame = table.to_pandas().set_index(KEY, drop=False)

    def lookup(key: str) -> Any:
        try:
            row = frame.loc[key]
        except KeyError:
            return None
        return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}

    return lookup


def _arrow_filter_peer(table: pa.Table, parquet_path: str) -> Callable[[str], Any]:
    """A compute-kernel scan per lookup: ``pc.equal`` then ``filter``."""
    import pyarrow.compute as pc

    keys = table.column(KEY)

    def lookup(key: str) -> Any:
        rows = table.filter(pc.equal(keys, key)).to_pylist()
        return rows[0] if rows else None

    return lookup


def _duckdb_peer(table: pa.Table, parquet_path: str) -> Callable[[str], Any]:
    """A query per lookup over the Parquet file: "ask the warehouse every time", locally."""
    import duckdb

    names = table.column_names
    con = duckdb.connect()
    sql = f"SELECT * FROM read_parquet('{parquet_path}') WHERE {KEY} = ?"

    def lookup(key: str) -> Any:
        row = con.execute(sql, [key]).fetchone()
        return None if row is None else dict(zip(names, row, strict=True))

    return lookup


PEER_BUILDERS: dict[str, Callable[[pa.Table, str], Callable[[str], Any]]] = {
    "dict": _dict_peer,
    "pandas": _pandas_peer,
    "arrow_filter": _arrow_filter_peer,
    "duckdb_query": _duckdb_peer,
}
PEERS = tuple(PEER_BUILDERS)


def bench_peer(name: str, parquet_path: str, probes: list[str]) -> dict[str, Any]:
    """One peer: build from the Parquet file, then key -> JSON-ready row dict."""
    # As for ours: imports and first-use costs are not the data's, so pay them first.
    if name == "pandas":
        import pandas  # noqa: F401
    if name == "duckdb_query":
        import duckdb  # noqa: F401
    pq.read_table(parquet_path).slice(0, 10).to_pylist()
    _settle()
    before = _rss_mb()
    start = time.perf_counter()
    lookup = PEER_BUILDERS[name](pq.read_table(parquet_path), parquet_path)
    build_s = time.perf_counter() - start
    _settle()
    rss = _rss_mb() - before
    probes = probes[: SLOW_PROBES.get(name, len(probes))]
    return {
        "build_s": round(build_s, 3),
        "rss_mb": round(rss, 1),
        **_lookup_figures(lookup, probes),
        "batch100_us": _batch_figure(lambda batch: [lookup(k) for k in batch], probes),
        "probes": len(probes),
    }


# --- loopback HTTP ----------------------------------------------------------------------------


def _pin(core: int) -> None:
    """Keep the server and the load generator on different cores, as `taskset` would, so the
    clients' own CPU does not preempt the server they measure."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[core % len(cores)]})


def _serve(root: str, ready: Any, port_box: Any) -> None:
    _pin(0)
    os.environ["SNAPSHOT_URI"] = root
    from service.handler import default_function, handler
    from service.local_server import LocalServer

    default_function().service.cache.refresh()
    server = LocalServer(handler, 0)
    port_box.value = server.server_address[1]
    ready.set()
    server.serve_forever()


def _read_response(sock: socket.socket, pending: bytes) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response with a Content-Length; return its status and leftover bytes."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        pending += chunk
    head, _, rest = pending.partition(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        rest += chunk
    return status, rest[length:]


def _client(port: int, keys: list[str], seconds: float, out: Any) -> None:
    """One closed-loop keep-alive client on a raw socket, so the load generator spends little
    CPU of its own (http.client costs about as much per request as the server).

    200 and 404 are answers; any other status or a broken connection is an error.
    """
    _pin(1)
    requests = [
        f"GET /customers/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for key in keys
    ]
    latencies: list[float] = []
    errors = 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        try:
            sock.sendall(requests[i % len(requests)])
            status, pending = _read_response(sock, pending)
            errors += status not in (200, 404)
        except OSError:
            errors += 1
            sock.close()
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            pending = b""
        latencies.append((time.perf_counter_ns() - start) / 1e6)
        i += 1
    sock.close()
    out.put((latencies, errors))


def bench_http(root: str, probes: list[str], seconds: float, clients: int) -> dict[str, Any]:
    """Requests/s, p50 and p99 through the local server, load from separate processes."""
    ctx = multiprocessing.get_context("spawn")
    ready, port_box = ctx.Event(), ctx.Value("i", 0)
    server = ctx.Process(target=_serve, args=(root, ready, port_box), daemon=True)
    server.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("local server did not start")
        results = ctx.Queue()
        workers = [
            ctx.Process(target=_client, args=(port_box.value, probes[i::clients], seconds, results))
            for i in range(clients)
        ]
        for worker in workers:
            worker.start()
        gathered = [results.get(timeout=seconds + 60) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
    finally:
        server.terminate()
        server.join(timeout=10)
    latencies = [lat for lats, _ in gathered for lat in lats]
    return {
        "http_rps": round(len(latencies) / seconds),
        "http_p50_ms": round(statistics.median(latencies), 3),
        "http_p99_ms": round(_pct(latencies, 0.99), 3),
        "http_errors": sum(err for _, err in gathered),
        "http_clients": clients,
    }


# --- soak: memory across refreshes ------------------------------------------------------------

SOAK_GOAL_RATIO = 1.10  # steady RSS after the last refresh / after the first load
SAMPLE_SECONDS = 0.005
SOAK_REQUESTS = 2000  # lookups through the handler after each load, as traffic would make
SOAK_STORES = ("file", "s3")
MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_")
# A fresh interpreter in which pandas is not installed, as in the Lambda package: blocked before
# pyarrow is imported, so nothing can pull it in and charge it to the snapshot. Not with
# sys.modules["pandas"] = None: pyarrow's Cython import takes that None for the module, and
# pa.array(<numpy array>) then fails with AttributeError ('NoneType' ... '__version__').
# The start of every such boot: pandas blocked, the project root (argv[1]) importable.
NO_PANDAS_BOOT = (
    "import json, sys\n"
    "class NoPandas:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.partition('.')[0] == 'pandas':\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, NoPandas())\n"
    "sys.path.insert(0, sys.argv[1])\n"
)
_FRESH_BOOT = NO_PANDAS_BOOT + (
    "import importlib\n"
    "from pathlib import Path\n"
    "module = importlib.import_module('scripts.' + sys.argv[5])\n"
    "job = json.loads(Path(sys.argv[3]).read_text())\n"
    "Path(sys.argv[4]).write_text(json.dumps(getattr(module, sys.argv[2])(job)))\n"
)


def _in_fresh_interpreter(name: str, job: dict[str, Any], module: str = "bench") -> dict[str, Any]:
    """Run ``name(job)`` from this module (or ``scripts.<module>``) in a new interpreter
    without pandas.

    A spawned :func:`_in_child` imports this script (pyarrow with it) before any code of ours
    runs there, too late to keep pandas out; this boot blocks it first. Job and figures travel
    as JSON files, and the child's output (Powertools' log lines) is shown only if it fails.
    """
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "figures.json"
        job_path.write_text(json.dumps(job))
        boot = [sys.executable, "-c", _FRESH_BOOT, str(ROOT), name, str(job_path)]
        run = subprocess.run(
            [*boot, str(out_path), module],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(
                f"{name} failed in its child process:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
            )
        return json.loads(out_path.read_text())


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM), where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float | None:
    """The kernel's RSS high-water mark since the last reset, in MB (None off Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return None


class RssSampler:
    """Samples this process's RSS on a thread every ``interval_seconds`` while the block runs.

    ``peak_mb`` is the highest sample; ``hwm_mb`` the kernel's high-water mark over the block
    (it also catches spikes shorter than the interval), when Linux lets us reset it.
    """

    def __init__(self, interval_seconds: float = SAMPLE_SECONDS) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._has_hwm = False
        self.samples = 0
        self.peak_mb = 0.0
        self.hwm_mb: float | None = None

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 1e6)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_seconds):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._has_hwm = _reset_peak_rss()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.hwm_mb = _peak_rss_mb() if self._has_hwm else None


def _changed(table: pa.Table, version_number: int) -> pa.Table:
    """``table`` with a few rows changed (0.1%: their ``updated_at`` moved), one version on."""
    if version_number == 0:
        return table
    ticks = table.column("updated_at").cast(pa.int64()).to_numpy().copy()
    ticks[version_number::1000] += version_number * 1_000_000  # microseconds
    where = table.column_names.index("updated_at")
    column = pa.array(ticks, table.schema.field(where).type)
    return table.set_column(where, "updated_at", column)


def publish_versions(root: Path, rows: int, count: int) -> list[str]:
    """Write ``count`` versions of the sample table under ``root`` and announce the first.

    The rest are written but not announced: the soak announces them one at a time, as the
    builder would. Versions are stamped a second apart, in the recent past.
    """
    store = FileStore(root)
    table = make_customers(rows)
    first = datetime.now(UTC) - timedelta(seconds=count + 60)
    versions = []
    for n in range(count):
        created_at = first + timedelta(seconds=n)
        version = new_version(created_at)
        write_snapshot(
            store, _changed(table, n), version=version, key_column=KEY, created_at=created_at
        )
        versions.append(version)
    announce(store, versions[0], previous=None)
    return versions


def _upload(client: Any, root: Path, prefix: str) -> str:
    """Copy a file:// snapshot root into the bench bucket under ``prefix``; its s3:// URI."""
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def _serve_requests(function: Callable[[Any, Any], Any], events: list[Any]) -> None:
    from service.local_server import LocalContext

    context = LocalContext()
    for event in events:
        if function(event, context)["statusCode"] not in (200, 404):
            raise RuntimeError("a lookup failed during the soak")


def measure_soak(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: load the first version the way Lambda does, then announce and
    refresh to each next one, sampling RSS during every refresh.

    ``job`` holds ``uri`` (the snapshot root), ``versions`` (the first announced already) and
    ``probes`` (keys to look up after each load).
    """
    import psutil

    from loaders.manifest import read_pointer
    from loaders.store import make_s3_client, open_store, parse_uri
    from service.handler import LookupFunction, build_service
    from service.local_server import to_event
    from service.settings import Settings

    # Importing service.handler set the system memory pool, as in Lambda.
    settings = Settings(snapshot_uri=job["uri"])
    is_s3 = parse_uri(settings.snapshot_uri)[0] == "s3"
    s3_client = make_s3_client(settings.storage) if is_s3 else None
    service = build_service(settings, s3_client=s3_client)
    builder_store = open_store(settings.snapshot_uri, s3_client=s3_client)  # announces only
    function = LookupFunction(service)
    cache = service.cache
    events = [to_event("GET", f"/customers/{key}", {}, b"", "127.0.0.1") for key in job["probes"]]
    process = psutil.Process()
    gc.collect()
    figures: dict[str, Any] = {
        "rows": job["rows"],
        "store": "s3" if is_s3 else "file",
        "memory_pool": pa.default_memory_pool().backend_name,
        # Allocator tuning this run inherited, so that a run with it says so in its results.
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith(MALLOC_ENV)},
        "rss_before_load_mb": round(process.memory_info().rss / 1e6, 1),
    }
    with RssSampler() as sampler:
        start = time.perf_counter()
        cache.refresh()
        cache.wait()
        figures["first_load_s"] = round(time.perf_counter() - start, 3)
    if cache.version != job["versions"][0]:
        raise RuntimeError(f"first load served {cache.version}, not {job['versions'][0]}")
    _serve_requests(function, events)
    figures["first_load_peak_rss_mb"] = round(sampler.peak_mb, 1)
    figures["rss_after_first_load_mb"] = round(process.memory_info().rss / 1e6, 1)
    figures["arrow_nbytes_mb"] = round(cache.serving().index.table.nbytes / 1e6, 1)
    refreshes = []
    for version in job["versions"][1:]:
        announce(builder_store, version, previous=read_pointer(builder_store))
        with RssSampler() as sampler:
            start = time.perf_counter()
            cache.refresh()
            cache.wait()  # a refresh past the warm deadline still counts until it swaps
            refresh_s = time.perf_counter() - start
        if cache.version != version:
            raise RuntimeError(f"refresh served {cache.version}, not {version}")
        _serve_requests(function, events)
        refreshes.append(
            {
                "version": version,
                "refresh_s": round(refresh_s, 3),
                "peak_rss_mb": round(sampler.peak_mb, 1),
                "peak_hwm_mb": None if sampler.hwm_mb is None else round(sampler.hwm_mb, 1),
                "samples": sampler.samples,
                "steady_rss_mb": round(process.memory_info().rss / 1e6, 1),
            }
        )
    figures["refreshes"] = refreshes
    return _soak_ratios(figures)


def _soak_ratios(figures: dict[str, Any]) -> dict[str, Any]:
    first = figures["rss_after_first_load_mb"]
    refreshes = figures["refreshes"]
    peak = max(r["peak_rss_mb"] for r in refreshes)
    figures["steady_after_last_mb"] = refreshes[-1]["steady_rss_mb"]
    figures["steady_ratio"] = round(refreshes[-1]["steady_rss_mb"] / first, 3)
    # The same, counting only what the process gained over its imports: the stricter figure.
    before = figures["rss_before_load_mb"]
    growth = (refreshes[-1]["steady_rss_mb"] - before) / max(first - before, 0.1)
    figures["steady_growth_ratio"] = round(growth, 2)
    figures["peak_rss_mb"] = peak
    figures["peak_to_steady"] = round(peak / first, 2)
    figures["refresh_s_median"] = round(statistics.median(r["refresh_s"] for r in refreshes), 3)
    figures["steady_ratio_goal"] = SOAK_GOAL_RATIO
    return figures


def run_soak(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """Publish ``refreshes + 1`` versions, then soak each store in its own fresh interpreter."""
    import boto3

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        bar.set_description(f"soak {args.rows:,} rows: publish {args.refreshes + 1} versions")
        root = Path(tmp) / "snapshots"
        versions = publish_versions(root, args.rows, args.refreshes + 1)
        probe_table = pq.read_table(root / snapshot_key(versions[0], DATA_NAME), columns=[KEY])
        probes = _probe_keys(probe_table, min(SOAK_REQUESTS, args.rows), seed=args.rows)
        del probe_table
        uris = {"file": root.as_uri()}
        if "s3" in args.soak_stores:
            uris["s3"] = _upload(boto3.client("s3"), root, f"{PREFIX}-soak-{args.rows}")
        bar.update()
        for store in args.soak_stores:
            bar.set_description(f"soak {args.rows:,} rows: {store}")
            job = {"uri": uris[store], "versions": versions, "probes": probes, "rows": args.rows}
            results[store] = _in_fresh_interpreter("measure_soak", job)
            bar.update()
    return results


# --- load: decode and index, the layout before issue 10 against today's -----------------------

LOAD_SIZES = "1000000,10000000"
LOAD_LAYOUTS = ("old", "new", "rg4096")
# handler: the pool service.handler sets; system and mimalloc as pyarrow makes them; jemalloc
# with its freed pages handed back at once (decay 0) or after a second (pyarrow's Linux default;
# set here, since importing service.handler may have set 0).
LOAD_POOLS = ("handler", "system", "mimalloc", "jemalloc-decay0", "jemalloc-decay1000")
LOAD_GOALS = {"load_10m_s": 1.2, "refresh_1m_s": 0.12, "rss_ratio": 1.2}
OLD_ROW_GROUP_ROWS = 1 << 20  # what encode_table wrote before issue 10
BLOCK_ROW_GROUP_ROWS = 4096  # the tiered mode's block (issue 11), as row groups of one file


def _old_layout(body: bytes) -> bytes:
    """``body`` rewritten as encode_table wrote snapshots before issue 10: the same columns
    (dictionary ones included), all nullable, zstd, in 1M-row row groups of 20,000-row pages
    (pyarrow's default)."""
    sink = pa.BufferOutputStream()
    table = pq.ParquetFile(pa.BufferReader(body)).read()
    nullable = [field.with_nullable(True) for field in table.schema]
    table = pa.Table.from_arrays(table.columns, schema=pa.schema(nullable, table.schema.metadata))
    pq.write_table(table, sink, compression="zstd", row_group_size=OLD_ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()


def _block_row_groups(body: bytes) -> bytes:
    """``body`` rewritten in 4,096-row row groups, as one layout serving both modes would be
    (the columns as encode_table writes them)."""
    sink = pa.BufferOutputStream()
    table = pq.ParquetFile(pa.BufferReader(body)).read()
    pq.write_table(table, sink, compression="zstd", row_group_size=BLOCK_ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()


def _layout_tag(layout: str) -> str:
    """A name for ``layout`` that changes with the writer (loaders/snapshot.py, or what it makes
    of a small table), so that a cached snapshot of an older writer is not measured as today's."""
    import hashlib
    import inspect

    from loaders import snapshot

    if layout == "old":
        return f"rg{OLD_ROW_GROUP_ROWS}"
    if layout == "rg4096":
        return f"rg{BLOCK_ROW_GROUP_ROWS}"
    digest = hashlib.sha256(snapshot.encode_table(make_customers(5000), KEY))
    digest.update(inspect.getsource(snapshot).encode())
    return digest.hexdigest()[:12]


def load_snapshots(cache: Path, rows: int, layout: str) -> tuple[Path, list[str]]:
    """A file:// root with two versions of the ``rows`` sample table in ``layout``, made once
    and kept under ``cache`` (10M rows take minutes to make); its versions, oldest first."""
    from loaders.manifest import MANIFEST_NAME
    from loaders.snapshot import describe, encode_table

    root = cache / f"{rows}-{layout}-{_layout_tag(layout)}"
    done = root / "versions.json"
    if done.exists():
        return root, json.loads(done.read_text())
    store = FileStore(root)
    table = make_customers(rows)
    first = datetime.now(UTC) - timedelta(minutes=5)
    versions = []
    for n in range(2):
        created_at = first + timedelta(seconds=n)
        version = new_version(created_at)
        changed = _changed(table, n)
        body = encode_table(changed, KEY)
        if layout == "old":
            body = _old_layout(body)
        elif layout == "rg4096":
            body = _block_row_groups(body)
        manifest = describe(changed, body, version=version, key_column=KEY, created_at=created_at)
        store.put(snapshot_key(version, DATA_NAME), body, if_none_match="*")
        store.put(snapshot_key(version, MANIFEST_NAME), manifest.to_json(), if_none_match="*")
        versions.append(version)
    announce(store, versions[0], previous=None)
    done.write_text(json.dumps(versions))
    return root, versions


def _warm_up_load() -> None:
    """Decode and index a tiny snapshot, so one-time costs (code pages, thread pools, lazy
    imports) are paid before anything is measured."""
    from loaders.index import KeyIndex
    from loaders.snapshot import encode_table, parse_table

    index = KeyIndex(parse_table(encode_table(make_customers(1000), KEY), what="warm-up"), KEY)
    index.get_many([index.table.column(KEY)[0].as_py(), "X"])


def measure_load(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter without pandas, set up as Lambda is (``service.handler``'s memory
    pool, unless ``job["pool"]`` names another): one cold load of the first version, timed part
    by part, then ``job["refreshes"]`` refreshes through the cache, alternating versions.

    ``job`` holds ``root`` (a file:// snapshot root), ``versions`` (two), ``pool`` and
    ``refreshes``.
    """
    import hashlib

    import psutil

    from loaders.index import KeyIndex
    from loaders.manifest import read_manifest
    from loaders.snapshot import decode_snapshot
    from service.handler import build_service  # sets the memory pool, as in Lambda
    from service.memory import release_unused
    from service.settings import Settings

    if job["pool"] != "handler":
        backend, _, decay_ms = job["pool"].partition("-decay")
        pa.set_memory_pool(getattr(pa, f"{backend}_memory_pool")())
        if decay_ms:
            pa.jemalloc_set_decay_ms(int(decay_ms))
    root, versions = Path(job["root"]).resolve(), job["versions"]
    store = FileStore(root)
    announce(store, versions[0], previous=read_pointer(store))
    process = psutil.Process()
    _warm_up_load()
    gc.collect()
    release_unused()
    rss_before = process.memory_info().rss
    # The parts of one load, download excluded: sha256, Parquet decode and checks, key index.
    manifest = read_manifest(store, versions[0])
    body = store.read(snapshot_key(versions[0], DATA_NAME))
    clocks = (time.perf_counter, time.process_time)
    started = [clock() for clock in clocks]
    hashlib.sha256(body).hexdigest()
    hashed = [clock() for clock in clocks]
    snapshot = decode_snapshot(manifest, body)  # verifies the sha256 again, then decodes
    decoded = [clock() for clock in clocks]
    index = KeyIndex(snapshot.table, KEY)
    indexed = [clock() for clock in clocks]
    sha256_s = hashed[0] - started[0]
    figures: dict[str, Any] = {
        "memory_pool": pa.default_memory_pool().backend_name,
        "row_groups": pq.ParquetFile(pa.BufferReader(body)).metadata.num_row_groups,
        "sha256_s": sha256_s,
        "decode_s": decoded[0] - hashed[0] - sha256_s,
        "index_s": indexed[0] - decoded[0],
        "load_s": indexed[0] - hashed[0],  # decode_snapshot (sha256 included) + KeyIndex
        "load_cpu_s": indexed[1] - hashed[1],
        "arrow_nbytes_mb": index.table.nbytes / 1e6,
    }
    del body, snapshot
    gc.collect()
    release_unused()
    figures["rss_growth_mb"] = (process.memory_info().rss - rss_before) / 1e6
    figures["rss_ratio"] = figures["rss_growth_mb"] / figures["arrow_nbytes_mb"]
    del index
    gc.collect()
    release_unused()
    # The refresh spike: what the request that notices a new version waits for (pointer,
    # manifest, data read, sha256, decode, index, swap), with the previous version in memory.
    cache = build_service(Settings(snapshot_uri=root.as_uri())).cache
    cache.refresh()
    cache.wait()
    rss_first = process.memory_info().rss
    spikes, cpu = [], []
    for n in range(job["refreshes"]):
        version = versions[(n + 1) % 2]
        announce(store, version, previous=read_pointer(store))
        started = [clock() for clock in clocks]
        cache.refresh()
        cache.wait()  # a reload past the request's deadline still counts until it swaps
        spikes.append(time.perf_counter() - started[0])
        cpu.append(time.process_time() - started[1])  # every thread of the process
        if cache.version != version:
            raise RuntimeError(f"refresh served {cache.version}, not {version}")
    figures["refresh_s"] = statistics.median(spikes)
    figures["refresh_cpu_s"] = statistics.median(cpu)
    figures["refresh_runs_s"] = spikes
    figures["steady_ratio"] = process.memory_info().rss / rss_first
    return figures


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    figures: dict[str, Any] = {"runs": len(runs), "memory_pool": runs[0]["memory_pool"]}
    figures["row_groups"] = runs[0]["row_groups"]
    for name in (
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
    ):
        values = [run[name] for run in runs]
        digits = 1 if name.endswith("_mb") else 4
        figures[name] = round(statistics.median(values), digits)
        figures[f"{name}_range"] = [round(min(values), digits), round(max(values), digits)]
    return figures


def run_load(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """For each size, layout and pool: ``--load-runs`` fresh interpreters, interleaved round
    by round so that a busy spell on the shared machine hits every variant alike."""
    results: dict[str, Any] = {}
    for rows in args.load_sizes:
        bar.set_description(f"load {rows:,} rows: snapshots")
        roots = {layout: load_snapshots(args.load_cache, rows, layout) for layout in args.layouts}
        bar.update()
        variants = [(layout, pool) for layout in args.layouts for pool in args.pools]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {v: [] for v in variants}
        for n in range(args.load_runs):
            for layout, pool in variants:
                bar.set_description(f"load {rows:,} rows: {layout}/{pool} run {n + 1}")
                root, versions = roots[layout]
                job = {
                    "root": str(root),
                    "versions": versions,
                    "pool": pool,
                    "refreshes": args.refreshes,
                }
                runs[(layout, pool)].append(_in_fresh_interpreter("measure_load", job))
                bar.update()
        results[str(rows)] = {f"{layout}/{pool}": _medians(runs[layout, pool])
                              for layout, pool in variants}  # fmt: skip
    return results


def _load_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check and split the ``--load`` options; a load run is a run of its own, as --soak is."""
    args.load_sizes = [int(rows) for rows in args.load_sizes.split(",") if rows]
    args.layouts = list(dict.fromkeys(x for x in args.layouts.split(",") if x))
    args.pools = list(dict.fromkeys(x for x in args.pools.split(",") if x))
    if unknown := (set(args.layouts) - set(LOAD_LAYOUTS)) | (set(args.pools) - set(LOAD_POOLS)):
        parser.error(f"unknown layouts or pools: {sorted(unknown)}")
    if args.load_runs < 1 or not args.load_sizes or min(args.load_sizes) < 1:
        parser.error("--load-runs and --load-sizes must be at least 1")
    if args.load:
        args.compare = False
        if args.out is None and not (args.soak or args.blackhole or args.rollback):
            args.out = Path("bench/load")


def _load_steps(args: argparse.Namespace) -> int:
    variants = len(args.layouts) * len(args.pools)
    return args.load * len(args.load_sizes) * (1 + args.load_runs * variants)


def _load_lines(load: dict[str, Any]) -> list[str]:
    lines = [
        "## Load: decode and index",
        "",
        "Each run in a fresh interpreter without pandas, set up as Lambda is (the memory pool "
        "`service.handler` picks, unless the row names another). Medians over runs (range in "
        "brackets), interleaved; the machine is shared, so compare rows within a run. `load` = "
        "`decode_snapshot` (sha256 included) + `KeyIndex`, download excluded; `decode` excludes "
        "the sha256. RSS growth is measured after the load settles, against Arrow nbytes. "
        "`refresh` = `cache.refresh()` to a new version on file:// (pointer, manifest, read, "
        "sha256, decode, index), the previous version in memory; steady = RSS after the last "
        "refresh / after the first.",
        "",
        "| rows | layout/pool | row groups | sha256 s | decode s | index s | load s | load CPU s "
        "| RSS MB | RSS / nbytes | refresh s | refresh CPU s | steady |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, variants in load.items():
        for name, fig in variants.items():
            load_range = "-".join(str(v) for v in fig["load_s_range"])
            lines.append(
                f"| {int(rows):,} | {name} | {fig['row_groups']} | {fig['sha256_s']} "
                f"| {fig['decode_s']} | {fig['index_s']} | {fig['load_s']} ({load_range}) "
                f"| {fig['load_cpu_s']} | {fig['rss_growth_mb']} | {fig['rss_ratio']} "
                f"| {fig['refresh_s']} | {fig['refresh_cpu_s']} | {fig['steady_ratio']} |"
            )
    lines.append("")
    for rows, variants in load.items():
        for name, fig in variants.items():
            checks = []
            if int(rows) == 10_000_000:
                met = fig["load_s"] <= LOAD_GOALS["load_10m_s"]
                checks.append(f"load ≤ {LOAD_GOALS['load_10m_s']} s {'met' if met else 'MISSED'}")
            if int(rows) == 1_000_000:
                met = fig["refresh_s"] <= LOAD_GOALS["refresh_1m_s"]
                goal = LOAD_GOALS["refresh_1m_s"]
                checks.append(f"refresh ≤ {goal} s {'met' if met else 'MISSED'}")
            met = fig["rss_ratio"] <= LOAD_GOALS["rss_ratio"]
            checks.append(f"RSS ≤ {LOAD_GOALS['rss_ratio']}x nbytes {'met' if met else 'MISSED'}")
            lines.append(f"- {int(rows):,} {name}: " + ", ".join(checks))
    return [*lines, ""]


# --- black hole: time to an answer when S3 stops answering -----------------------------------

BLACKHOLE_ROWS = 10_000
# Only the TTL departs from the defaults, so that it lapses within a run; every budget (S3
# timeouts and attempts, the warm and cold waits) is service/settings.py's.
BLACKHOLE_TTL_SECONDS = 0.2


class BlackHole:
    """An S3 endpoint that relays to ``upstream`` (moto) until :meth:`go_dark`, then accepts TCP
    connections and never answers, on new connections and on pooled ones alike.

    With ``upstream=None`` it is dark from the start.
    """

    def __init__(self, upstream: tuple[str, int] | None) -> None:
        self._upstream = upstream
        self._dark = threading.Event()
        if upstream is None:
            self._dark.set()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        host, port = self._listener.getsockname()[:2]
        self.endpoint = f"http://{host}:{port}"
        threading.Thread(target=self._accept, name="black-hole", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._sockets.append(conn)  # held open, so the client waits for its read timeout
            if self._upstream is not None and not self._dark.is_set():
                upstream = socket.create_connection(self._upstream)
                self._sockets.append(upstream)
                for src, dst, is_request in ((conn, upstream, True), (upstream, conn, False)):
                    threading.Thread(
                        target=self._relay, args=(src, dst, is_request), daemon=True
                    ).start()

    def _relay(self, src: socket.socket, dst: socket.socket, is_request: bool) -> None:
        try:
            while data := src.recv(65536):
                if is_request and self._dark.is_set():
                    continue  # swallowed: a pooled connection's request gets no answer either
                dst.sendall(data)
        except OSError:
            return

    def go_dark(self) -> None:
        self._dark.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in its thread
        for sock in (self._listener, *self._sockets):
            sock.close()


@contextlib.contextmanager
def _s3_endpoint(url: str) -> Iterator[None]:
    """Build S3 clients against ``url`` inside the block (botocore reads it at creation)."""
    saved = os.environ["AWS_ENDPOINT_URL_S3"]
    os.environ["AWS_ENDPOINT_URL_S3"] = url
    try:
        yield
    finally:
        os.environ["AWS_ENDPOINT_URL_S3"] = saved


def _time_to_answer(s3_uri: str, key: str, upstream: tuple[str, int] | None) -> dict[str, Any]:
    """One request through the handler with S3 gone dark: warm (a snapshot loaded through
    ``upstream``, its TTL lapsed) or cold (``upstream`` None: nothing ever loaded)."""
    from service.handler import LookupFunction, build_service
    from service.local_server import LocalContext, to_event
    from service.settings import Settings

    hole = BlackHole(upstream)
    try:
        settings = Settings(snapshot_uri=s3_uri, refresh_ttl_seconds=BLACKHOLE_TTL_SECONDS)
        with _s3_endpoint(hole.endpoint):
            function = LookupFunction(build_service(settings))
        cache = function.service.cache
        if upstream is not None:
            cache.refresh()
            if cache.version is None:
                raise RuntimeError("the black-hole run could not load its first snapshot")
            hole.go_dark()
            time.sleep(BLACKHOLE_TTL_SECONDS * 2)  # let the TTL lapse
        event = to_event("GET", f"/customers/{key}", {}, b"", "127.0.0.1")
        start = time.perf_counter()
        response = function(event, LocalContext())
        answer_s = time.perf_counter() - start
        # The check goes on after the answer, bounded by the S3 client's own budget.
        cache.wait(60)
        return {
            "answer_s": round(answer_s, 3),
            "status": response["statusCode"],
            "check_done_s": round(time.perf_counter() - start, 3),
        }
    finally:
        hole.close()


def measure_blackhole(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: ``runs`` warm and ``runs`` cold requests, each with its own
    function and black hole. ``job`` holds ``uri``, ``key`` (a present customer) and ``runs``."""
    from service.settings import DEFAULT_STORAGE, Settings

    defaults = Settings(snapshot_uri=job["uri"])
    moto = urlsplit(os.environ["AWS_ENDPOINT_URL_S3"])
    figures: dict[str, Any] = {
        "refresh_wait_seconds": defaults.refresh_wait_seconds,
        "cold_load_wait_seconds": defaults.cold_load_wait_seconds,
        "s3_connect_timeout_seconds": DEFAULT_STORAGE.connect_timeout_seconds,
        "s3_read_timeout_seconds": DEFAULT_STORAGE.read_timeout_seconds,
        "s3_max_attempts": DEFAULT_STORAGE.max_attempts,
    }
    for kind, upstream in (("warm", (moto.hostname, moto.port)), ("cold", None)):
        runs = [_time_to_answer(job["uri"], job["key"], upstream) for _ in range(job["runs"])]
        figures[kind] = {
            "answer_s_max": max(r["answer_s"] for r in runs),
            "statuses": sorted({r["status"] for r in runs}),
            "check_done_s_max": max(r["check_done_s"] for r in runs),
            "runs": runs,
        }
    return figures


def run_blackhole(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """Warm and cold requests against an S3 that accepts connections and never answers."""
    import boto3

    with tempfile.TemporaryDirectory(prefix="bench-blackhole-") as tmp:
        bar.set_description("black hole: publish")
        root = Path(tmp) / "snapshots"
        (version,) = publish_versions(root, BLACKHOLE_ROWS, 1)
        keys = pq.read_table(root / snapshot_key(version, DATA_NAME), columns=[KEY]).column(KEY)
        s3_uri = _upload(boto3.client("s3"), root, f"{PREFIX}-blackhole")
    bar.update()
    bar.set_description(f"black hole: {args.blackhole_runs} warm and cold requests")
    job = {"uri": s3_uri, "key": keys[0].as_py(), "runs": args.blackhole_runs}
    figures = _in_fresh_interpreter("measure_blackhole", job)
    bar.update()
    return figures


# --- cold start: imports, client and ready, from the lookup package ---------------------------

IMPORT_FLOOR = "import numpy, pyarrow, pyarrow.parquet, botocore.session"
# One statement (argv[2]) in an interpreter that sees only the package (argv[1]) and the
# standard library (run with -I -S); prints the seconds it took.
_TIMED_IMPORT = (
    "import sys, time\n"
    "sys.path[:0] = [sys.argv[1]]\n"
    "start = time.perf_counter()\n"
    "exec(sys.argv[2])\n"
    "print(time.perf_counter() - start)\n"
)
_TIMED_CLIENT = (
    "import sys, time\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from botocore.config import Config\n"
    "from loaders.store import StorageBudget, make_s3_client\n"
    "import boto3, botocore.session\n"
    "budget = StorageBudget(1.0, 2.0, 2)\n"
    "config = Config(connect_timeout=1.0, read_timeout=2.0,\n"
    "                retries={'mode': 'standard', 'total_max_attempts': 2})\n"
    "start = time.perf_counter()\n"
    "boto3.client('s3', config=config) if sys.argv[2] == 'boto3' else make_s3_client(budget)\n"
    "print(time.perf_counter() - start)\n"
)
# Lambda's init, from process start: import the handler module with the Lambda variables set
# (start_in_lambda builds the function and loads the snapshot), then report the clock.
_READY = (
    "import json, os, sys, time\n"
    "sys.path[:0] = [sys.argv[1]]\n"
    "import service.handler as h\n"
    "version = h.default_function().service.cache.version\n"
    "print(json.dumps({'at': time.monotonic(), 'version': version}))\n"
    "sys.stdout.flush()\n"
    "os._exit(0)  # whatever threads the function started, the measurement is done\n"
)


def _lookup_imports(package: Path) -> str:
    """What the lookup function imports: its module, and its S3 client's (boto3 where the
    package ships it, as the one package before issue 10 did; botocore's session otherwise)."""
    client = "boto3" if (package / "boto3").is_dir() else "botocore.session"
    return f"import service.handler, {client}"


def _seconds(code: str, *args: str, env: dict[str, str] | None = None) -> float:
    """Run ``code`` in a fresh interpreter (-I -S: no site-packages) and read the seconds it
    printed last."""
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *args],
        capture_output=True, text=True, check=False, env=env or {"PATH": os.environ["PATH"]},
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"probe failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return float(run.stdout.strip().splitlines()[-1])


def _import_figures(packages: dict[str, Path], runs: int) -> dict[str, dict[str, Any]]:
    """For each package, its floor and its lookup imports: medians over ``runs`` fresh
    interpreters each, every statement of every package in one loop (order alternating)."""
    statements = {
        (name, what): (package, statement)
        for name, package in packages.items()
        for what, statement in (("floor", IMPORT_FLOOR), ("lookup", _lookup_imports(package)))
    }
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in statements}
    for n in range(runs):
        for key in list(statements) if n % 2 else list(statements)[::-1]:
            package, statement = statements[key]
            samples[key].append(_seconds(_TIMED_IMPORT, str(package), statement))
    figures = {}
    for name in packages:
        floor, lookup = (statistics.median(samples[name, what]) for what in ("floor", "lookup"))
        figures[name] = {
            "floor_statement": statements[name, "floor"][1],
            "lookup_statement": statements[name, "lookup"][1],
            "floor_ms": round(floor * 1000, 1),
            "lookup_ms": round(lookup * 1000, 1),
            "ratio": round(lookup / floor, 3),
            "goal_ratio": IMPORT_GOAL_RATIO,
            "runs": runs,
        }
    return figures


def _client_figures(runs: int) -> dict[str, Any]:
    """S3 client creation after its imports, boto3 against ``make_s3_client`` (botocore), in
    the dev venv's interpreter (the lookup package ships no boto3), alternating."""
    samples: dict[str, list[float]] = {"boto3": [], "botocore": []}
    for n in range(runs):
        for name in sorted(samples, reverse=bool(n % 2)):
            run = subprocess.run(
                [sys.executable, "-I", "-c", _TIMED_CLIENT, str(ROOT), name],
                capture_output=True, text=True, check=True,
                env={"PATH": os.environ["PATH"], "AWS_DEFAULT_REGION": "us-east-1"},
            )  # fmt: skip
            samples[name].append(float(run.stdout.strip().splitlines()[-1]))
    return {f"{name}_ms": round(statistics.median(s) * 1000, 1) for name, s in samples.items()}


def _ready_seconds(package: Path, uri: str) -> float:
    """From process start to the end of init, with the snapshot at ``uri`` loaded."""
    env = {
        "PATH": os.environ["PATH"],
        "SNAPSHOT_URI": uri,
        "AWS_LAMBDA_FUNCTION_NAME": "customer-lookup-bench",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        **{k: v for k, v in os.environ.items() if k.startswith("AWS_") and "LAMBDA" not in k},
    }
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _READY, str(package)],
        capture_output=True, text=True, check=False, env=env, timeout=120,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"ready probe failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    if answer["version"] is None:
        raise RuntimeError(f"init ended with no snapshot loaded from {uri}")
    return answer["at"] - start


def _ready_figures(
    packages: dict[str, Path], uris: dict[str, str], runs: int
) -> dict[str, dict[str, Any]]:
    """For each package, the median ready time from each store, packages alternating."""
    samples: dict[tuple[str, str], list[float]] = {
        (name, store): [] for name in packages for store in uris
    }
    for n in range(runs):
        for store, uri in uris.items():
            for name in list(packages) if n % 2 else list(packages)[::-1]:
                samples[name, store].append(_ready_seconds(packages[name], uri))
    return {
        name: {
            "runs": runs,
            **{f"{store}_s": round(statistics.median(samples[name, store]), 3) for store in uris},
        }
        for name in packages
    }


def _given_sizes(package: Path) -> dict[str, Any]:
    from scripts import package as packaging

    return {
        "path": str(package),
        "unzipped_mb": round(packaging._size_mb(package), 1),
        "zipped_mb": round(packaging.zipped_mb(package), 1),
    }


def _package_sizes(out: Path) -> dict[str, dict[str, float]]:
    """Build both functions' packages under ``out``; their sizes in MB."""
    from scripts import package as packaging

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sizes = {}
    for function in ("lookup", "builder"):
        sizes[function] = packaging.build(function, out / function, version)
        sizes[function]["zipped_mb"] = round(packaging.zipped_mb(out / function), 1)
    return sizes


def run_coldstart(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """Imports, client creation and ready time of the lookup function, from its package, and
    beside it (same runs, alternating) those of a ``--baseline`` package when one is given."""
    import boto3

    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        figures: dict[str, Any] = {"rows": args.rows}
        if args.package is None:
            bar.set_description("cold start: build the lookup and builder packages")
            figures["packages"] = _package_sizes(Path(tmp) / "packages")
            package = Path(tmp) / "packages" / "lookup"
        else:
            package = args.package.resolve()
            figures["packages"] = {"given": _given_sizes(package)}
        packages = {"lookup": package}
        if args.baseline is not None:
            packages["baseline"] = args.baseline.resolve()
            figures["packages"]["baseline"] = _given_sizes(packages["baseline"])
        bar.update()
        bar.set_description(f"cold start: imports and client, {args.runs} runs each")
        imports = _import_figures(packages, args.runs)
        figures["imports"] = imports["lookup"]
        figures["client"] = _client_figures(args.runs)
        bar.set_description(f"cold start: ready at {args.rows:,} rows")
        root = Path(tmp) / "snapshots"
        publish_table(FileStore(root), make_customers(args.rows), key_column=KEY,
                      now=datetime.now(UTC))  # fmt: skip
        uris = {
            "file": root.as_uri(),
            "s3": _upload(boto3.client("s3"), root, f"{PREFIX}-coldstart-{args.rows}"),
        }
        ready = _ready_figures(packages, uris, args.ready_runs)
        figures["ready"] = ready["lookup"]
        if args.baseline is not None:
            figures["baseline"] = {"imports": imports["baseline"], "ready": ready["baseline"]}
        bar.update()
    return figures


def _coldstart_lines(figures: dict[str, Any]) -> list[str]:
    imports, client, ready = figures["imports"], figures["client"], figures["ready"]
    met = "met" if imports["ratio"] <= imports["goal_ratio"] else "MISSED"
    lines = [
        "## Cold start, from the lookup package",
        "",
        f"Medians of fresh interpreters that see only the package and the standard library "
        f"(`python -I -S`), {imports['runs']} runs each, alternating.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| imports: floor (`{imports['floor_statement']}`) ms | {imports['floor_ms']} |",
        f"| imports: lookup (`{imports['lookup_statement']}`) ms | {imports['lookup_ms']} |",
        f"| imports: lookup / floor (goal ≤ {imports['goal_ratio']}: {met}) | {imports['ratio']} |",
        f"| S3 client, boto3 ms | {client['boto3_ms']} |",
        f"| S3 client, botocore (`make_s3_client`) ms | {client['botocore_ms']} |",
        f"| ready from process start, file://, {figures['rows']:,} rows s | {ready['file_s']} |",
        f"| ready from process start, S3 (moto), {figures['rows']:,} rows s | {ready['s3_s']} |",
    ]
    for name, sizes in figures["packages"].items():
        lines.append(
            f"| package {name}: unzipped / zipped MB | {sizes['unzipped_mb']} / "
            f"{sizes['zipped_mb']} |"
        )
    if "baseline" in figures:
        base_imports, base_ready = figures["baseline"]["imports"], figures["baseline"]["ready"]
        lines += [
            f"| baseline imports: floor ms | {base_imports['floor_ms']} |",
            f"| baseline imports: lookup (`{base_imports['lookup_statement']}`) ms "
            f"| {base_imports['lookup_ms']} |",
            f"| baseline imports: lookup / floor | {base_imports['ratio']} |",
            f"| baseline ready, file:// s | {base_ready['file_s']} |",
            f"| baseline ready, S3 (moto) s | {base_ready['s3_s']} |",
        ]
    return [*lines, ""]


# --- the run ----------------------------------------------------------------------------------


class MotoServer:
    """A moto S3 server on 127.0.0.1, reached through AWS_ENDPOINT_URL_S3 as in the tests."""

    def __enter__(self) -> str:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            os.environ[name] = value
        return endpoint

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


# --- rollback: from the command to the first lookup that serves the old version -------------

ROLLBACK_RUNS = 3


def measure_rollback(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: serve the current version through the lookup function, run
    ``snapshotctl rollback`` as a separate process, and look up until the old version answers.

    ``job`` holds ``uri``, ``versions`` (old, then current) and ``key`` (one key of both).
    """
    from service.handler import LookupFunction, build_service
    from service.local_server import LocalContext, to_event
    from service.settings import Settings

    old, current = job["versions"]
    # TTL 0: every lookup may re-check the pointer, so the figure is the reload, not the TTL.
    service = build_service(Settings(snapshot_uri=job["uri"], refresh_ttl_seconds=0.0))
    function = LookupFunction(service)
    event = to_event("GET", f"/customers/{job['key']}", {}, b"", "127.0.0.1")
    context = LocalContext()

    def served() -> str:
        response = function(event, context)
        if response["statusCode"] != 200:
            raise RuntimeError(f"lookup answered {response['statusCode']}")
        return json.loads(response["body"])["snapshot"]["version"]

    if served() != current:
        raise RuntimeError(f"the reader does not serve {current} before the rollback")
    command = [sys.executable, "-m", "loaders.cli", "rollback", "--root", job["uri"]]
    command += ["--reason", "bench", "--json", "--quiet"]
    started = time.perf_counter()
    rolled = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    command_s = time.perf_counter() - started
    if rolled.returncode != 0:
        raise RuntimeError(f"rollback failed: {rolled.stderr.strip()}")
    lookups_on_current = 0
    while (version := served()) != old:
        if version != current:
            raise RuntimeError(f"the reader served {version}")
        lookups_on_current += 1
    reload_s = time.perf_counter() - started - command_s
    change = json.loads(rolled.stdout)
    return {
        "rollback_command_s": round(command_s, 3),
        "verify_s": change["verification"]["seconds"],
        "reader_reload_s": round(reload_s, 3),
        "total_s": round(command_s + reload_s, 3),
        "lookups_on_current_after_command": lookups_on_current,
    }


def _reset_pointer(root: Path, versions: list[str]) -> None:
    """``CURRENT`` = the second version, unpinned, with the first as previous."""
    store = FileStore(root)
    announce(store, versions[1], previous=Pointer(versions[0], read_pointer(store).etag))


def run_rollback(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """Publish two ``--rows`` versions, then time ``ROLLBACK_RUNS`` rollbacks, each reader in a
    fresh interpreter; the median run's figures, and every run's total."""
    with tempfile.TemporaryDirectory(prefix="bench-rollback-") as tmp:
        bar.set_description(f"rollback {args.rows:,} rows: publish 2 versions")
        root = Path(tmp) / "snapshots"
        versions = publish_versions(root, args.rows, 2)
        key = pq.read_table(root / snapshot_key(versions[0], DATA_NAME), columns=[KEY])[KEY][0]
        bar.update()
        runs = []
        for n in range(ROLLBACK_RUNS):
            bar.set_description(f"rollback {args.rows:,} rows: run {n + 1}/{ROLLBACK_RUNS}")
            _reset_pointer(root, versions)
            job = {"uri": root.as_uri(), "versions": versions, "key": key.as_py()}
            runs.append(_in_fresh_interpreter("measure_rollback", job))
        bar.update()
    median = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
    return {"rows": args.rows, **median, "runs_total_s": [r["total_s"] for r in runs]}


def _rollback_lines(figures: dict[str, Any]) -> list[str]:
    return [
        "## Rollback: from the command to the first lookup that serves the old version",
        "",
        f"{figures['rows']:,} rows, file:// root; the lookup function built as in Lambda "
        "(`build_service`) with `REFRESH_TTL_SECONDS=0`, in its own interpreter; "
        "`snapshotctl rollback` run as a separate process. Median of "
        f"{len(figures['runs_total_s'])} runs (totals: "
        f"{', '.join(str(t) for t in figures['runs_total_s'])} s). In production add up to "
        "`REFRESH_TTL_SECONDS` (300 s by default) before a warm reader checks the pointer.",
        "",
        "| rollback command s | of which verification s | reader reload s | total s |",
        "|---:|---:|---:|---:|",
        f"| {figures['rollback_command_s']} | {figures['verify_s']} | "
        f"{figures['reader_reload_s']} | {figures['total_s']} |",
        "",
    ]


# --- refresh latency: invocation times while a new version arrives ---------------------------

# Lapses several times in a run, so that pointer checks happen in it (300 s in production).
REFRESH_LATENCY_TTL_SECONDS = 0.1
REFRESH_LATENCY_WARMUP = 100
# Mode -> the function's extra environment: the extension after each response (the default in
# Lambda), and the checks in the request that finds the TTL lapsed.
REFRESH_LATENCY_MODES: dict[str, dict[str, str]] = {
    "extension": {},
    "in_request": {"REFRESH_MODE": "request"},
}


def _latency_ms(seconds: list[float]) -> dict[str, float]:
    samples = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(_pct(samples, 0.99), 3),
        "p999_ms": round(_pct(samples, 0.999), 3),
        "max_ms": round(max(samples), 3),
    }


def _window(invocations: list[Any]) -> dict[str, Any]:
    released = [i.after_response_seconds for i in invocations if i.released_at is not None]
    return {
        "invocations": len(invocations),
        "response": _latency_ms([i.response_seconds for i in invocations]),
        "caller": _latency_ms([i.caller_seconds for i in invocations]),
        "after_response_max_ms": round(max(released, default=0.0) * 1000, 3),
    }


def measure_refresh_latency(
    root: Path, versions: list[str], keys: list[str], mode: str, invocations: int
) -> dict[str, Any]:
    """``invocations`` one after the other through a stand-in Lambda environment running the
    function under ``awslambdaric``; ``versions[1]`` is announced halfway."""
    from tests.lambda_runtime_fake import lambda_environment

    store = FileStore(root)
    announce(store, versions[0], previous=read_pointer(store))  # every run starts from the first
    env = {
        "SNAPSHOT_URI": root.as_uri(),
        "REFRESH_TTL_SECONDS": str(REFRESH_LATENCY_TTL_SECONDS),
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        **REFRESH_LATENCY_MODES[mode],
    }
    half = invocations // 2
    runs: list[tuple[Any, str]] = []
    with lambda_environment(env) as fake:
        if not fake.wait_initialized(120) or fake.init_error is not None:
            raise RuntimeError(f"the function did not start: {fake.init_error}")
        for key in keys[:REFRESH_LATENCY_WARMUP]:
            fake.invoke({"customer_id": key}, 60)
        for n in range(invocations):
            if n == half:
                announced_at = time.perf_counter()
                announce(store, versions[1], previous=read_pointer(store))
            invocation = fake.submit({"customer_id": keys[n % len(keys)]})
            runs.append((invocation, invocation.result(60)["snapshot"]["version"]))
        registered = fake.extensions
    served = [n for n, (_, version) in enumerate(runs) if version == versions[1]]
    if not served:
        raise RuntimeError(f"{mode}: the new version was never served")
    first = runs[served[0]][0]
    return {
        "extension_registered": bool(registered),
        "steady": _window([i for i, _ in runs[:half]]),
        "change": _window([i for i, _ in runs[half:]]),
        "invocations_until_new_version": served[0] - half,
        "seconds_until_new_version": round(first.responded_at - announced_at, 3),
    }


def run_refresh_latency(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """Publish two ``--rows`` versions, then run each refresh mode through a stand-in Lambda."""
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp:
        bar.set_description(f"refresh latency {args.rows:,} rows: publish 2 versions")
        root = Path(tmp) / "snapshots"
        versions = publish_versions(root, args.rows, 2)
        table = pq.read_table(root / snapshot_key(versions[0], DATA_NAME), columns=[KEY])
        keys = _probe_keys(table, args.invocations + REFRESH_LATENCY_WARMUP, seed=args.rows)
        del table
        bar.update()
        modes = {}
        for mode in REFRESH_LATENCY_MODES:
            bar.set_description(f"refresh latency {args.rows:,} rows: {mode}")
            modes[mode] = measure_refresh_latency(root, versions, keys, mode, args.invocations)
            bar.update()
    return {
        "rows": args.rows,
        "invocations": args.invocations,
        "ttl_seconds": REFRESH_LATENCY_TTL_SECONDS,
        "modes": modes,
    }


def _refresh_latency_lines(figures: dict[str, Any]) -> list[str]:
    lines = [
        "## Refresh latency: invocations while a new version arrives",
        "",
        f"{figures['invocations']:,} direct invocations, one after the other, through the real "
        "runtime client (`awslambdaric`) and tests/lambda_runtime_fake.py (Runtime and "
        "Extensions APIs; the process frozen between invocations); a "
        f"{figures['rows']:,}-row file:// snapshot, `REFRESH_TTL_SECONDS="
        f"{figures['ttl_seconds']}`; the second version announced after half of them. "
        "*Response*: from the event reaching the runtime to its response, what Lambda adds "
        "nothing to. *Caller*: from submission, so also the wait for the environment while "
        "the previous invocation's after-response work runs (on Lambda a concurrent caller "
        "would be given another environment instead).",
        "",
        "| mode | window | response p50 / p99 / p99.9 / max ms | caller p99 / max ms "
        "| longest after-response work ms |",
        "|---|---|---|---|---:|",
    ]
    for mode, fig in figures["modes"].items():
        for window in ("steady", "change"):
            w = fig[window]
            r, c = w["response"], w["caller"]
            lines.append(
                f"| {mode} | {window} | {r['p50_ms']} / {r['p99_ms']} / {r['p999_ms']} / "
                f"{r['max_ms']} | {c['p99_ms']} / {c['max_ms']} | {w['after_response_max_ms']} |"
            )
    lines.append("")
    for mode, fig in figures["modes"].items():
        lines.append(
            f"- {mode}: the new version served {fig['seconds_until_new_version']} s "
            f"({fig['invocations_until_new_version']} invocations) after the announcement; "
            f"extension registered: {'yes' if fig['extension_registered'] else 'no'}."
        )
    return [*lines, ""]


def run_size(size: int, args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    import boto3

    probes_n = 10_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bar.set_description(f"{size:,} rows: publish")
        table = make_customers(size)
        root = Path(tmp) / "snapshots"
        store = FileStore(root)
        publish_table(store, table, key_column=KEY, now=datetime.now(UTC))
        version = read_pointer(store).version
        parquet_path = str(root / snapshot_key(version, DATA_NAME))
        s3_uri = _upload(boto3.client("s3"), root, f"{PREFIX}-{size}")
        probes = _probe_keys(table, probes_n, seed=size)
        del table
        bar.update()
        results: dict[str, Any] = {}
        bar.set_description(f"{size:,} rows: ours")
        results["ours"] = _in_child(bench_ours, root.as_uri(), s3_uri, probes)
        bar.update()
        bar.set_description(f"{size:,} rows: loopback HTTP")
        results["ours"].update(
            bench_http(root.as_uri(), probes, 2.0 if args.quick else 8.0, args.clients)
        )
        bar.update()
        for peer in args.peers:
            bar.set_description(f"{size:,} rows: {peer}")
            results[peer] = _in_child(bench_peer, peer, parquet_path, probes)
            bar.update()
    ours = results["ours"]
    for peer in args.peers:
        results[peer]["ours_speedup"] = round(
            results[peer]["lookup_p50_us"] / ours["lookup_p50_us"], 1
        )
        results[peer]["memory_ratio_to_ours"] = round(
            results[peer]["rss_mb"] / max(ours["rss_mb"], 0.1), 2
        )
    ours["rss_ratio"] = round(ours["rss_mb"] / ours["arrow_nbytes_mb"], 2)
    return results


def _goals(ours: dict[str, Any]) -> dict[str, bool]:
    return {
        "lookup_p50_us": ours["lookup_p50_us"] <= GOALS["lookup_p50_us"],
        "rss_ratio": ours["rss_ratio"] <= GOALS["rss_ratio"],
        "load_file_s": ours["build_s"] <= GOALS["load_file_s"],
        "refresh_unchanged": ours["refresh_unchanged_requests"] == 1
        and ours["refresh_unchanged_body_bytes"] == 0,
        "http_rps": ours["http_rps"] >= GOALS["http_rps"],
        "http_p99_ms": ours["http_p99_ms"] <= GOALS["http_p99_ms"] and ours["http_errors"] == 0,
        "batch100_us": ours["batch100_us"] <= GOALS["batch100_us"],
        "handler_ratio": ours["handler_ratio"] <= HANDLER_GOAL_RATIO,
    }


def _size_lines(size: str, systems: dict[str, Any]) -> list[str]:
    ours = systems["ours"]
    lines = [
        f"## {int(size):,} customers",
        "",
        "| system | build/load s | RSS Δ MB | lookup p50 µs | lookup p99 µs | batch of 100 µs "
        "| peer p50 / ours p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fig in systems.items():
        speed = "—" if name == "ours" else f"{fig['ours_speedup']}x"
        lines.append(
            f"| {name} | {fig['build_s']} | {fig['rss_mb']} | {fig['lookup_p50_us']} | "
            f"{fig['lookup_p99_us']} | {fig['batch100_us']} | {speed} |"
        )
    goals = _goals(ours)
    return [
        *lines,
        "",
        f"Ours: Arrow nbytes {ours['arrow_nbytes_mb']} MB, RSS growth "
        f"{ours['rss_ratio']}x nbytes; handler p50 {ours['handler_p50_us']} µs "
        f"(p99 {ours['handler_p99_us']}), a minimal hand-written v2 handler over the same index "
        f"{ours['minimal_handler_p50_us']} µs (p99 {ours['minimal_handler_p99_us']}): "
        f"{ours['handler_ratio']}x (goal ≤ {HANDLER_GOAL_RATIO}); "
        f"cold load {ours['build_s']} s from file://, "
        f"{ours['load_s3_s']} s from S3 (moto server); unchanged refresh: "
        f"{ours['refresh_unchanged_requests']} request, "
        f"{ours['refresh_unchanged_body_bytes']} body bytes; loopback HTTP "
        f"{ours['http_rps']} req/s, p50 {ours['http_p50_ms']} ms, p99 {ours['http_p99_ms']} ms,"
        f" {ours['http_errors']} errors ({ours['http_clients']} client processes).",
        "",
        "Goals: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in goals.items()),
        "",
    ]


def _soak_lines(soak: dict[str, Any]) -> list[str]:
    first = next(iter(soak.values()))
    tuning = ", ".join(f"`{k}={v}`" for k, v in first["malloc_env"].items()) or "none"
    lines = [
        f"## Soak: {first['rows']:,} customers, {len(first['refreshes'])} refreshes",
        "",
        "Each store in a fresh interpreter without pandas, through `build_service` (system "
        "memory pool), with lookups through the handler after each load. RSS in MB; peak "
        "sampled every 5 ms during the refresh (kernel high-water mark in brackets). "
        f"Allocator tuning from the environment: {tuning}.",
        "",
        "| store | load | s | peak | steady | steady / first load |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for store, fig in soak.items():
        base = fig["rss_after_first_load_mb"]
        lines.append(
            f"| {store} | first | {fig['first_load_s']} | {fig['first_load_peak_rss_mb']} "
            f"| {base} | 1.0 |"
        )
        lines += [
            f"| {store} | refresh {n} | {r['refresh_s']} | {r['peak_rss_mb']} "
            f"({r['peak_hwm_mb']}) | {r['steady_rss_mb']} | {r['steady_rss_mb'] / base:.3f} |"
            for n, r in enumerate(fig["refreshes"], 1)
        ]
    lines.append("")
    for store, fig in soak.items():
        met = "met" if fig["steady_ratio"] <= fig["steady_ratio_goal"] else "MISSED"
        lines.append(
            f"- {store}: {fig['rss_before_load_mb']} MB before the first load, "
            f"{fig['rss_after_first_load_mb']} MB after it (Arrow nbytes "
            f"{fig['arrow_nbytes_mb']} MB); steady after the last refresh "
            f"{fig['steady_after_last_mb']} MB = {fig['steady_ratio']}x the first load "
            f"(goal ≤ {fig['steady_ratio_goal']}: {met}; growth over imports "
            f"{fig['steady_growth_ratio']}x); peak {fig['peak_rss_mb']} MB = "
            f"{fig['peak_to_steady']}x; refresh median {fig['refresh_s_median']} s."
        )
    return [*lines, ""]


def _blackhole_lines(hole: dict[str, Any]) -> list[str]:
    lines = [
        "## S3 black hole: time to an answer",
        "",
        "One request through the handler (HTTP API v2 event) while S3 accepts TCP connections "
        f"and never answers. Default budgets: S3 connect {hole['s3_connect_timeout_seconds']} s, "
        f"read {hole['s3_read_timeout_seconds']} s, {hole['s3_max_attempts']} attempts; warm "
        f"wait {hole['refresh_wait_seconds']} s, cold wait {hole['cold_load_wait_seconds']} s.",
        "",
        "| request | longest answer s | statuses | runs (answer s) | check gave up after s |",
        "|---|---:|---|---|---:|",
    ]
    for kind, label in (("warm", "warm (loaded, TTL lapsed)"), ("cold", "cold (nothing loaded)")):
        fig = hole[kind]
        runs = ", ".join(str(r["answer_s"]) for r in fig["runs"])
        statuses = ", ".join(str(s) for s in fig["statuses"])
        lines.append(
            f"| {label} | {fig['answer_s_max']} | {statuses} | {runs} | {fig['check_done_s_max']} |"
        )
    return [*lines, ""]


def write_markdown(results: dict[str, Any], path: Path, command: str) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"`{command}` on {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        "Medians; the machine is shared, so compare ratios rather than absolute times.",
        "",
    ]
    for size in _sizes(results):
        lines += _size_lines(size, results[size])
    if "load" in results:
        lines += _load_lines(results["load"])
    if "soak" in results:
        lines += _soak_lines(results["soak"])
    if "blackhole" in results:
        lines += _blackhole_lines(results["blackhole"])
    if "rollback" in results:
        lines += _rollback_lines(results["rollback"])
    if "coldstart" in results:
        lines += _coldstart_lines(results["coldstart"])
    if "refresh_latency" in results:
        lines += _refresh_latency_lines(results["refresh_latency"])
    path.write_text("\n".join(lines))


def _sizes(results: dict[str, Any]) -> list[str]:
    """The comparison sections: keyed by row count, beside ``soak`` and ``blackhole``."""
    return [key for key in results if key.isdigit()]


def _plot_soak(soak: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for store, figures in soak.items():
        steps = range(len(figures["refreshes"]) + 1)
        steady = [figures["rss_after_first_load_mb"]] + [
            r["steady_rss_mb"] for r in figures["refreshes"]
        ]
        peak = [figures["first_load_peak_rss_mb"]] + [
            r["peak_rss_mb"] for r in figures["refreshes"]
        ]
        (line,) = ax.plot(steps, steady, marker="o", label=f"{store}: steady")
        ax.plot(steps, peak, marker="^", linestyle="--", color=line.get_color(),
                label=f"{store}: peak during load")  # fmt: skip
    ax.set_xlabel("load (0 = first, then refreshes)")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("RSS across refreshes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = _sizes(results)
    paths = [_plot_soak(results["soak"], out / "soak.png")] if "soak" in results else []
    if not sizes:
        return paths
    systems = list(results[sizes[0]])
    for figure, label, name in (
        ("lookup_p50_us", "lookup p50 (µs, log)", "lookup_p50.png"),
        ("rss_mb", "RSS growth (MB)", "memory.png"),
        ("build_s", "build or load (s, log)", "build.png"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(sizes)
        for n, size in enumerate(sizes):
            values = [max(results[size][s][figure], 1e-3) for s in systems]
            xs = [i + n * width for i in range(len(systems))]
            ax.bar(xs, values, width, label=f"{int(size):,} rows")
        ax.set_xticks([i + width * (len(sizes) - 1) / 2 for i in range(len(systems))], systems)
        ax.set_ylabel(label)
        if "log" in label:
            ax.set_yscale("log")
        ax.legend()
        ax.set_title(label.split(" (")[0])
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--quick", action="store_true", help="10k rows, fewer probes, short HTTP")
    parser.add_argument("--clients", type=int, default=2, help="HTTP client processes")
    parser.add_argument(
        "--out", type=Path, help="default bench, or bench/soak with --soak or --blackhole"
    )
    parser.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS)
    )
    parser.add_argument(
        "--load", action="store_true", help="decode and index times, old layout against new"
    )
    parser.add_argument("--load-sizes", default=LOAD_SIZES, help="rows, comma-separated")
    parser.add_argument("--load-runs", type=int, default=5, help="fresh interpreters per variant")
    parser.add_argument(
        "--layouts", default=",".join(LOAD_LAYOUTS), help="comma-separated: old, new, rg4096"
    )
    parser.add_argument(
        "--pools", default="handler", help="comma-separated: " + ", ".join(LOAD_POOLS)
    )
    parser.add_argument(
        "--load-cache", type=Path, default=ROOT / ".data" / "bench-load",
        help="where --load keeps the snapshots it makes",
    )  # fmt: skip
    parser.add_argument(
        "--soak", action="store_true", help="RSS across refreshes (instead of the comparison)"
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="soak table rows")
    parser.add_argument("--refreshes", type=int, default=5, help="soak refreshes after the load")
    parser.add_argument(
        "--soak-stores", default=",".join(SOAK_STORES), help="comma-separated: file, s3"
    )
    parser.add_argument(
        "--blackhole", action="store_true", help="time to an answer with S3 unresponsive"
    )
    parser.add_argument("--blackhole-runs", type=int, default=3, help="runs of each request")
    parser.add_argument(
        "--coldstart",
        action="store_true",
        help="imports, S3 client and ready time of the lookup function, from its package",
    )
    parser.add_argument(
        "--package", type=Path, help="with --coldstart: measure this package instead of building"
    )
    parser.add_argument(
        "--baseline", type=Path, help="with --coldstart: also measure this package, alternating"
    )
    parser.add_argument("--runs", type=int, default=15, help="--coldstart: runs of each import")
    parser.add_argument("--ready-runs", type=int, default=5, help="--coldstart: runs of init")
    parser.add_argument(
        "--rollback",
        action="store_true",
        help="seconds from `snapshotctl rollback` to a lookup serving the old version (--rows)",
    )
    parser.add_argument(
        "--refresh-latency",
        action="store_true",
        help="invocation times through a stand-in Lambda while a new version arrives (--rows)",
    )
    parser.add_argument(
        "--invocations", type=int, default=2000, help="invocations per refresh-latency run"
    )
    args = parser.parse_args(argv)
    args.peers = [p for p in args.peers.split(",") if p]
    if unknown := set(args.peers) - set(PEERS):
        parser.error(f"unknown peers: {sorted(unknown)}")
    args.soak_stores = list(dict.fromkeys(s for s in args.soak_stores.split(",") if s))
    if unknown := set(args.soak_stores) - set(SOAK_STORES):
        parser.error(f"unknown soak stores: {sorted(unknown)}")
    if args.refreshes < 1 or args.rows < 1 or args.blackhole_runs < 1:
        parser.error("--rows, --refreshes and --blackhole-runs must be at least 1")
    args.compare = not (args.soak or args.blackhole or args.rollback or args.refresh_latency)
    if args.coldstart:  # a run of its own, as --soak is
        args.compare = False
        if args.out is None and not (args.soak or args.blackhole or args.rollback):
            args.out = Path("bench/coldstart")
    _load_options(parser, args)
    if args.out is None:
        only_rollback = args.rollback and not (args.soak or args.blackhole)
        args.out = Path("bench/rollback" if only_rollback else "bench/soak")
        args.out = Path("bench") if args.compare else args.out
        if args.refresh_latency and not (args.soak or args.blackhole or args.rollback):
            args.out = Path("bench/refresh")
    return args


# Runs of their own, each in its own script, imported only when asked for: flag -> module.
DISPATCH = {"--build": "bench_build", "--shared": "bench_shared", "--modes": "bench_tiered"}


def _dispatch(argv: list[str]) -> int | None:
    """Hand ``--build``, ``--shared`` or ``--sizes ... --modes ...`` to its script's ``main``
    with the other arguments; None when none of them is asked for.

    ``--build`` measures the builder (``scripts/bench_build.py``, whose own ``--modes`` and
    ``--sizes`` go with it) and ``--shared`` one mapped copy per machine
    (``scripts/bench_shared.py``); otherwise ``--modes memory,tiered`` compares the serving
    modes (``scripts/bench_tiered.py``, which takes ``--sizes`` too).
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--build", action="store_true")
    pre.add_argument("--shared", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.build and known.shared:
        raise SystemExit("scripts/bench.py: --build and --shared are separate runs: pick one")
    flag = "--build" if known.build else "--shared" if known.shared else None
    if flag is None:
        modes = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        modes.add_argument("--modes")
        if modes.parse_known_args(argv)[0].modes is None:
            return None
        flag, rest = "--modes", argv
    name = DISPATCH[flag]
    try:
        module = importlib.import_module(f"scripts.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"scripts.{name}":
            raise
        raise SystemExit(
            f"scripts/bench.py {flag} runs scripts/{name}.py, which this checkout does not have"
        ) from None
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    dispatched = _dispatch(sys.argv[1:] if argv is None else argv)
    if dispatched is not None:
        return dispatched
    args = _parse_args(argv)
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    sizes = sizes if args.compare else []
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {}
    steps = len(sizes) * (3 + len(args.peers))
    steps += _load_steps(args)
    steps += (1 + len(args.soak_stores)) * args.soak + 2 * args.blackhole + 2 * args.rollback
    steps += 2 * args.coldstart
    steps += (1 + len(REFRESH_LATENCY_MODES)) * args.refresh_latency
    with MotoServer(), tqdm(total=steps, unit="step") as bar:
        for size in sizes:
            results[str(size)] = run_size(size, args, bar)
        if args.load:
            results["load"] = run_load(args, bar)
        if args.soak:
            results["soak"] = run_soak(args, bar)
        if args.blackhole:
            results["blackhole"] = run_blackhole(args, bar)
        if args.rollback:
            results["rollback"] = run_rollback(args, bar)
        if args.coldstart:
            results["coldstart"] = run_coldstart(args, bar)
        if args.refresh_latency:
            results["refresh_latency"] = run_refresh_latency(args, bar)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md", command.strip())
    plots = write_plots(results, args.out)
    print((args.out / "results.md").read_text())
    print("wrote", args.out / "results.json", *plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
