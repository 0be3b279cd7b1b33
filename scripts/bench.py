"""Benchmark the lookup path against its peers, side by side, in one run.

    python scripts/bench.py [--sizes 100000,1000000] [--quick] [--out bench]

For each size it publishes one sample snapshot (file:// and S3 on a local moto server) and
measures, each system in a fresh interpreter so that RSS growth is its own:

- ours: cold load (CURRENT -> manifest -> data -> sha256 -> index) from file:// and from S3,
  RSS growth and Arrow nbytes, core lookup (key -> row dict) and whole-handler latency
  (HTTP API v2 event -> JSON response), batch of 100, a refresh with an unchanged pointer
  (requests made, body bytes read), and loopback HTTP through the local server driven by
  separate client processes;
- peers on the same table and probe keys: a dict of tuples, pandas ``.loc``, an Arrow
  ``equal`` + ``filter`` scan, and a DuckDB query per lookup over the Parquet file.

Writes ``<out>/results.json`` (size -> system -> figure), ``<out>/results.md`` and PNG plots.
Quote medians and ratios: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loaders.manifest import DATA_NAME, read_pointer, snapshot_key
from loaders.publish import publish_table
from loaders.store import FileStore, S3Store
from scripts.sample_data import make_customers

KEY = "customer_id"
BUCKET = "bench-snapshots"
PREFIX = "customer-mapping"
MISS_RATIO = 0.10
# Scans and queries take milliseconds each: cap their probes so a run stays short.
SLOW_PROBES = {"arrow_filter": 300, "duckdb_query": 100}
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
    # The whole Lambda entry point: Powertools logger context, routing, JSON.
    context = LocalContext()
    events = [
        to_event("GET", f"/customers/{key}", {"host": "bench"}, b"", "127.0.0.1")
        for key in probes[:20_000]
    ]
    lambda_handler.handler(events[0], context)  # builds the module's function and loads
    samples = _latencies_us(lambda e: lambda_handler.handler(e, context), events)
    figures["handler_p50_us"] = round(statistics.median(samples), 2)
    figures["handler_p99_us"] = round(_pct(samples, 0.99), 2)
    figures.update(_refresh_from_s3(boto3.client("s3"), s3_uri))
    return figures


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
        client = boto3.client("s3")
        if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=BUCKET)
        prefix = f"{PREFIX}-{size}"
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = f"{prefix}/{path.relative_to(root).as_posix()}"
                client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        probes = _probe_keys(table, probes_n, seed=size)
        del table
        bar.update()
        results: dict[str, Any] = {}
        bar.set_description(f"{size:,} rows: ours")
        results["ours"] = _in_child(bench_ours, root.as_uri(), f"s3://{BUCKET}/{prefix}", probes)
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
    }


def write_markdown(results: dict[str, Any], path: Path, command: str) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"`{command}` on {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        "Medians; the machine is shared, so compare ratios rather than absolute times.",
        "",
    ]
    for size, systems in results.items():
        ours = systems["ours"]
        lines += [
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
        lines += [
            "",
            f"Ours: Arrow nbytes {ours['arrow_nbytes_mb']} MB, RSS growth "
            f"{ours['rss_ratio']}x nbytes; handler p50 {ours['handler_p50_us']} µs "
            f"(p99 {ours['handler_p99_us']}); cold load {ours['build_s']} s from file://, "
            f"{ours['load_s3_s']} s from S3 (moto server); unchanged refresh: "
            f"{ours['refresh_unchanged_requests']} request, "
            f"{ours['refresh_unchanged_body_bytes']} body bytes; loopback HTTP "
            f"{ours['http_rps']} req/s, p50 {ours['http_p50_ms']} ms, p99 {ours['http_p99_ms']} ms,"
            f" {ours['http_errors']} errors ({ours['http_clients']} client processes).",
            "",
            "Goals: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in goals.items()),
            "",
        ]
    path.write_text("\n".join(lines))


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results)
    systems = list(results[sizes[0]])
    paths = []
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--quick", action="store_true", help="10k rows, fewer probes, short HTTP")
    parser.add_argument("--clients", type=int, default=2, help="HTTP client processes")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS)
    )
    args = parser.parse_args(argv)
    args.peers = [p for p in args.peers.split(",") if p]
    if unknown := set(args.peers) - set(PEERS):
        parser.error(f"unknown peers: {sorted(unknown)}")
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {}
    steps = len(sizes) * (3 + len(args.peers))
    with MotoServer(), tqdm(total=steps, unit="step") as bar:
        for size in sizes:
            results[str(size)] = run_size(size, args, bar)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md", command.strip())
    plots = write_plots(results, args.out)
    print((args.out / "results.md").read_text())
    print("wrote", args.out / "results.json", *plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
