"""Memory and tiered serving side by side: load, RSS, hot and cold lookups, bytes and requests.

    python scripts/bench.py --sizes 1000000,10000000 --modes memory,tiered
    python scripts/bench_tiered.py --sizes 100000000 --modes tiered [--stores file]

For each size, one sample snapshot (``make_customers`` rows, sorted by ``customer_id``) is
written once with :func:`loaders.snapshot.write_snapshot` and kept under ``--cache``
(``.data/bench-tiered/<rows>``). Above ``--stream-rows`` the table is never held: rows are
made a chunk at a time, already in key order, and written as a multi-row-group
``data.parquet`` and as blocks (:class:`loaders.blocks.BlockWriter`), manifest last. A root
given with ``--snapshot ROWS=PATH`` (say, the streaming builder's) is served instead.

Each (size, mode, store) runs ``--runs`` times, each run in a fresh interpreter in which pandas
cannot be imported (the Lambda package has none; ``scripts/bench.py``'s boot), built as Lambda
builds the function: ``service.handler.build_service(Settings(SERVE_MODE=...))``. A run
measures:

- load: ``build_service`` + the first ``cache.refresh()`` (pointer, manifest, then the data,
  or the block index and the block the load checks), wall seconds, requests and bytes read;
  RSS before it (imports), after it, and the kernel's high-water mark during it;
- hot lookups (``index.get`` in process): keys of ``HOT_BLOCKS`` blocks already read (tiered),
  or of the whole table (memory); ``HOT_LOOKUPS`` of them;
- cold lookups: tiered, a key whose block is not cached (the LRU emptied before each): one
  ranged read, sha256, decode; memory, the same keys (nothing to read). Requests and bytes are
  counted per lookup, on S3 by botocore's event hooks on the function's own client (every
  HTTP attempt, ``ContentLength`` of each GetObject), on ``file://`` by wrapping
  ``FileStore.read``/``read_range``;
- batches of 100 uniformly random keys: cold (LRU emptied first) and again warm;
- the split of one cold read: the ranged read alone, then sha256 + decode + key index
  (:func:`loaders.blocks.decode_block`), for ``DECODE_SAMPLES`` blocks;
- RSS after filling the LRU to ``TIERED_CACHE_MB`` (tiered) with blocks read in batches, and
  the high-water mark over the whole run.

S3 is a moto server on 127.0.0.1 (``AWS_ENDPOINT_URL_S3``): its times are loopback times,
not S3's. Writes ``<out>/results.json`` and ``<out>/results.md`` (default ``bench/tiered``).
Medians over runs; the machine is shared, so compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import mmap
import os
import re
import shutil
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "customer_id"
MODES = ("memory", "tiered")
STORES = ("file", "s3")
DEFAULT_CACHE = ROOT / ".data" / "bench-tiered"
STREAM_ROWS = 20_000_000  # above this the snapshot is written without holding the table
STREAM_CHUNK_ROWS = 1_000_000
HOT_BLOCKS = 64
HOT_KEYS = 2_000
HOT_LOOKUPS = 20_000
COLD_LOOKUPS = 300
BATCHES = 30
BATCH_KEYS = 100
DECODE_SAMPLES = 100
# Issue 11's goals for the tiered mode.
GOAL_RSS_MB = 512
GOAL_HOT_P50_US = 50.0
GOAL_READ_BYTES = 128 * 1024


# --- snapshots --------------------------------------------------------------------------------


def ensure_snapshot(cache: Path, rows: int, *, stream_rows: int = STREAM_ROWS) -> Path:
    """The file:// root of a ``rows``-row sample snapshot under ``cache``, written once.

    Written into a scratch directory and renamed into place whole, so an interrupted build
    leaves nothing that looks finished.
    """
    from loaders.manifest import announce, new_version
    from loaders.snapshot import write_snapshot
    from loaders.store import FileStore
    from scripts.sample_data import make_customers

    root = cache / str(rows)
    if (root / "CURRENT").exists():
        return root
    scratch = cache / f".{rows}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    store = FileStore(scratch)
    created_at = datetime.now(UTC) - timedelta(minutes=1)
    version = new_version(created_at)
    started = time.perf_counter()
    if rows > stream_rows:
        write_streamed_snapshot(store, rows, version=version, created_at=created_at)
    else:
        write_snapshot(
            store, make_customers(rows), version=version, key_column=KEY, created_at=created_at
        )
    announce(store, version, previous=None)
    scratch.rename(root)
    print(f"wrote the {rows:,}-row snapshot {root} in {time.perf_counter() - started:.0f} s")
    return root


def _chunk(rows: int, number: int, first_id: int, id_span: int) -> Any:
    """``rows`` customers whose ids lie in ``[first_id, first_id + id_span)``, sorted.

    The other columns are ``make_customers``'s (same distributions); only the ids are drawn
    from this chunk's own slice of the id space, so that chunks follow each other in key order.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from scripts.sample_data import make_customers

    table = make_customers(rows, seed=number + 1)
    rng = np.random.default_rng(number + 1_000_003)
    ids = np.sort(rng.choice(id_span, size=rows, replace=False)) + first_id
    text = pc.utf8_lpad(pa.array(ids).cast(pa.string()), 9, "0")
    return table.set_column(0, KEY, pc.binary_join_element_wise("C", text, ""))


def write_streamed_snapshot(store: Any, rows: int, *, version: str, created_at: datetime) -> None:
    """Write a ``rows``-row snapshot a chunk at a time, never holding the table.

    ``data.parquet`` gets one row group per chunk (what a memory-mode reader would load; a
    tiered one never reads it) and ``blocks.bin``/``blocks.arrow`` the tiered layout; the
    manifest (sha256, bytes, columns from the written schema, ``table_bytes`` summed over the
    chunks as prepared) goes last, after the block index and first, middle and last blocks
    have been read back.
    """
    import pyarrow.parquet as pq

    from loaders.blocks import BlockWriter
    from loaders.manifest import (
        BLOCK_INDEX_NAME,
        BLOCKS_NAME,
        DATA_NAME,
        MANIFEST_NAME,
        Manifest,
        snapshot_key,
    )
    from loaders.snapshot import check_blocks, columns_of, prepare_table

    if rows > 1_000_000_000 // 2:
        raise ValueError(f"{rows:,} rows do not fit the sample's 9-digit ids at half density")
    folder = store.root / "snapshots" / version
    folder.mkdir(parents=True)
    chunks = -(-rows // STREAM_CHUNK_ROWS)
    id_span = 1_000_000_000 // chunks
    table_bytes = 0
    writer = None
    with (folder / BLOCKS_NAME).open("wb") as sink:
        blocks = BlockWriter(sink, KEY)
        for number in range(chunks):
            size = min(STREAM_CHUNK_ROWS, rows - number * STREAM_CHUNK_ROWS)
            chunk = prepare_table(_chunk(size, number, number * id_span, id_span), KEY)
            if writer is None:
                writer = pq.ParquetWriter(folder / DATA_NAME, chunk.schema, compression="zstd")
            writer.write_table(chunk, row_group_size=size)
            blocks.write(chunk)
            table_bytes += chunk.nbytes
            print(f"  chunk {number + 1}/{chunks}", end="\r", flush=True)
        assert writer is not None
        writer.close()
        layout, index_body = blocks.close()
    data = folder / DATA_NAME
    digest = hashlib.sha256()
    with data.open("rb") as handle:
        while piece := handle.read(1 << 24):
            digest.update(piece)
    manifest = Manifest(
        version=version,
        created_at=created_at,
        key_column=KEY,
        row_count=rows,
        columns=columns_of(pq.read_schema(data)),
        sha256=digest.hexdigest(),
        bytes=data.stat().st_size,
        source={"bench": "scripts/bench_tiered.py streamed sample"},
        published_at=created_at,
        table_bytes=table_bytes,
        blocks=layout,
    )
    with (
        (folder / BLOCKS_NAME).open("rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as written,
    ):
        check_blocks(manifest, index_body, memoryview(written))
    store.put(snapshot_key(version, BLOCK_INDEX_NAME), index_body, if_none_match="*")
    store.put(snapshot_key(version, MANIFEST_NAME), manifest.to_json(), if_none_match="*")


def upload(root: Path, s3_client: Any, bucket: str, prefix: str, *, blocks_only: bool) -> str:
    """Copy a file:// snapshot root to S3 (each file streamed from disk); its s3:// URI.

    Not ``scripts/bench.py``'s ``_upload``: that reads each file whole, and ``blocks.bin`` of
    100M rows is gigabytes. ``blocks_only`` leaves ``data.parquet`` out (tiered never reads it).
    """
    from loaders.manifest import DATA_NAME
    from loaders.store import S3Store

    if bucket not in {b["Name"] for b in s3_client.list_buckets()["Buckets"]}:
        s3_client.create_bucket(Bucket=bucket)
    store = S3Store(s3_client, bucket, prefix)
    for path in sorted(root.rglob("*"), key=lambda p: p.name == "CURRENT"):  # pointer last
        if not path.is_file() or path.name.startswith("."):
            continue
        if blocks_only and path.name == DATA_NAME:
            continue
        store.put_file(path.relative_to(root).as_posix(), path)
    return f"s3://{bucket}/{prefix}"


def draw_probes(root: Path, seed: int) -> dict[str, list[list[Any]]]:
    """Probe keys, each with its block number, read from the blocks (never the whole table).

    ``hot``: ``HOT_KEYS`` keys of ``HOT_BLOCKS`` random blocks; ``cold``: one key of each of
    ``COLD_LOOKUPS`` distinct random blocks (fewer if the snapshot has fewer); ``batches``:
    ``BATCHES`` lists of ``BATCH_KEYS`` uniformly random keys (a random block, then a random
    row of it: blocks hold equal rows but the last).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loaders.manifest import read_pointer
    from loaders.snapshot import SnapshotReader
    from loaders.store import FileStore

    reader = SnapshotReader(FileStore(root))
    pointer = read_pointer(reader.store)
    assert pointer is not None
    manifest = reader.read_manifest(pointer.version)
    blocks = reader.read_block_index(manifest)
    rng = np.random.default_rng(seed)
    keys_of: dict[int, list[str]] = {}

    def keys(number: int) -> list[str]:
        if number not in keys_of:
            body = reader.read_block(manifest, blocks, number)
            table = pq.read_table(pa.BufferReader(body), columns=[KEY])
            keys_of[number] = table.column(KEY).to_pylist()
        return keys_of[number]

    def pick(number: int) -> list[Any]:
        found = keys(number)
        return [found[int(rng.integers(len(found)))], number]

    count = len(blocks)
    hot_blocks = rng.choice(count, size=min(HOT_BLOCKS, count), replace=False)
    hot = [pick(int(hot_blocks[n % len(hot_blocks)])) for n in range(HOT_KEYS)]
    cold_blocks = rng.choice(count, size=min(COLD_LOOKUPS, count), replace=False)
    cold = [pick(int(n)) for n in cold_blocks]
    batches = [[pick(int(n)) for n in rng.integers(0, count, BATCH_KEYS)] for _ in range(BATCHES)]
    return {"hot": hot, "cold": cold, "batches": batches}


_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


@contextlib.contextmanager
def moto_reads_ranges() -> Iterator[None]:
    """Make the moto server answer a ranged GET by reading only that range, as S3 does.

    moto 5 answers one by reading the whole object and slicing it
    (``moto/s3/responses.py``: ``get_object`` returns ``key.value``, then
    ``_handle_range_header`` slices): at 10M rows every 87 KiB block read copied the 212 MB
    ``blocks.bin``, took longer than the S3 read timeout, and measured moto, not the reader.
    Bench only, in this process (the server's): any other request goes to moto unchanged.
    """
    from moto.s3.responses import S3Response

    original = S3Response.get_object

    def get_object(self: Any) -> Any:
        wanted = _RANGE.fullmatch(self.headers.get("range") or "")
        if wanted is None or "partNumber" in self.querystring:
            return original(self)
        key, not_modified = self._get_key()
        begin, end = int(wanted[1]), min(int(wanted[2]), key.size - 1)
        if not_modified or begin > end:
            return original(self)
        with key.lock:
            key._value_buffer.seek(begin)
            body = key._value_buffer.read(end - begin + 1)
        headers = {**key.response_dict, **key.metadata, "Accept-Ranges": "bytes"}
        headers["content-range"] = f"bytes {begin}-{end}/{key.size}"
        headers["content-length"] = str(len(body))
        return 206, headers, body

    S3Response.get_object = get_object  # type: ignore[method-assign]
    try:
        yield
    finally:
        S3Response.get_object = original  # type: ignore[method-assign]


# --- one run, in a fresh interpreter without pandas -------------------------------------------


def _status_mb(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process in MB.

    Not ``scripts/bench.py``'s helpers: importing that module here would add its builder and
    plotting imports (about 12 MB) to the RSS this run reports.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)


class Counter:
    """Requests and bytes read from the store, since the last :meth:`take`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def add(self, requests: int, size: int) -> None:
        with self._lock:
            self.requests += requests
            self.bytes += size

    def take(self) -> tuple[int, int]:
        with self._lock:
            taken = (self.requests, self.bytes)
            self.requests = self.bytes = 0
        return taken

    def hook_s3(self, client: Any) -> None:
        """Count every HTTP attempt of ``client``, and the body bytes of each GetObject."""

        def sent(**_: Any) -> None:
            self.add(1, 0)

        def got(parsed: dict[str, Any], **_: Any) -> None:
            self.add(0, int(parsed.get("ContentLength") or 0))

        client.meta.events.register("before-send.s3", sent)
        client.meta.events.register("after-call.s3.GetObject", got)

    def wrap_file_store(self) -> None:
        """Count ``FileStore`` reads (``get`` reads through ``read``): one read, one request."""
        from loaders.store import FileStore

        read, read_range = FileStore.read, FileStore.read_range

        def counted_read(store: FileStore, key: str) -> bytes:
            body = read(store, key)
            self.add(1, len(body))
            return body

        def counted_range(store: FileStore, key: str, start: int, length: int) -> bytes:
            body = read_range(store, key, start, length)
            self.add(1, len(body))
            return body

        FileStore.read = counted_read  # type: ignore[method-assign]
        FileStore.read_range = counted_range  # type: ignore[method-assign]


def _drop_blocks(index: Any) -> None:
    """Empty a tiered reader's LRU, so that the next lookup reads its block (bench only: the
    reader has no public way, and needs none)."""
    if getattr(index, "mode", "memory") == "tiered":
        with index._lock:
            index._cache.clear()


def _timed_us(fn: Any, arg: Any) -> float:
    start = time.perf_counter_ns()
    fn(arg)
    return (time.perf_counter_ns() - start) / 1000


def _attempt_us(fn: Any, arg: Any) -> tuple[float, bool]:
    """Like :func:`_timed_us`, but a 503 (reads past the wait) is an answer too: its time, and
    False. The reads go on and fill the LRU, as in production."""
    from service.errors import RowsUnavailableError

    start = time.perf_counter_ns()
    try:
        fn(arg)
    except RowsUnavailableError:
        return (time.perf_counter_ns() - start) / 1000, False
    return (time.perf_counter_ns() - start) / 1000, True


def _until_answered(fn: Any, arg: Any, attempts: int = 10) -> None:
    """Retry as a client would after a 503, until the reads it started have landed."""
    for _ in range(attempts):
        if _attempt_us(fn, arg)[1]:
            return
    raise RuntimeError(f"no answer after {attempts} attempts")


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One run: load, then hot, cold and batch lookups, decode split and a full LRU.

    ``job``: ``uri``, ``mode``, ``cache_mb``, ``workers`` and the probes of
    :func:`draw_probes`. Lookup times come back raw (µs), for the parent to summarise.
    """
    from loaders.store import make_s3_client, parse_uri
    from service.handler import build_service
    from service.settings import Settings

    settings = Settings(
        snapshot_uri=job["uri"],
        serve_mode=job["mode"],
        tiered_cache_mb=job["cache_mb"],
        tiered_fetch_workers=job["workers"],
    )
    counter = Counter()
    client = None
    if parse_uri(settings.snapshot_uri)[0] == "s3":
        client = make_s3_client(settings.storage)
        counter.hook_s3(client)
    else:
        counter.wrap_file_store()
    figures: dict[str, Any] = {"rss_imports_mb": _status_mb("VmRSS")}
    figures["loadavg_start"] = os.getloadavg()[0]
    _reset_peak()
    start = time.perf_counter()
    service = build_service(settings, s3_client=client)
    service.cache.refresh()
    service.cache.wait()
    figures["load_s"] = time.perf_counter() - start
    figures["peak_load_mb"] = _status_mb("VmHWM")
    figures["rss_load_mb"] = _status_mb("VmRSS")
    figures["load_requests"], figures["load_bytes"] = counter.take()
    serving = service.cache.serving()
    if serving.snapshot["mode"] != job["mode"]:
        raise RuntimeError(f"asked for {job['mode']}, served {serving.snapshot['mode']}")
    index = serving.index
    figures["rows"] = len(index)
    figures.update(_lookups(index, job, counter))
    if job["mode"] == "tiered":
        figures.update(_read_split(index, job, settings, client))
        figures.update(_fill(index, job["cache_mb"] << 20))
    figures["rss_end_mb"] = _status_mb("VmRSS")
    figures["loadavg_end"] = os.getloadavg()[0]
    figures["peak_run_mb"] = _status_mb("VmHWM")
    return figures


def _lookups(index: Any, job: dict[str, Any], counter: Counter) -> dict[str, Any]:
    hot = [key for key, _ in job["hot"]]
    index.get_many(hot)  # reads the hot blocks (tiered): from here on they are cached
    for key in hot:
        if index.get(key) is None:
            raise RuntimeError(f"probe key {key} not found")
    counter.take()
    hot_us = [_timed_us(index.get, hot[n % len(hot)]) for n in range(HOT_LOOKUPS)]
    if counter.take()[0]:
        raise RuntimeError("a hot lookup read from the store: the LRU is too small for the probe")
    cold_us, cold_requests, cold_bytes, unavailable = [], [], [], 0
    for key, _ in job["cold"]:
        _drop_blocks(index)
        counter.take()
        took_us, answered = _attempt_us(index.get, key)
        if not answered:
            unavailable += 1
            _until_answered(index.get, key)
        cold_us.append(took_us)
        requests, size = counter.take()
        cold_requests.append(requests)
        cold_bytes.append(size)
    batch_cold_us, batch_warm_us, batch_requests, batch_bytes, batch_blocks = [], [], [], [], []
    batch_unavailable = 0
    for batch in job["batches"]:
        keys = [key for key, _ in batch]
        _drop_blocks(index)
        counter.take()
        took_us, answered = _attempt_us(index.get_many, keys)
        if not answered:
            batch_unavailable += 1
            _until_answered(index.get_many, keys)
        batch_cold_us.append(took_us)
        requests, size = counter.take()
        batch_requests.append(requests)
        batch_bytes.append(size)
        batch_blocks.append(len({number for _, number in batch}))
        batch_warm_us.append(_timed_us(index.get_many, keys))
    return {
        "cold_unavailable": unavailable,
        "batch_unavailable": batch_unavailable,
        "hot_us": hot_us,
        "cold_us": cold_us,
        "cold_requests": cold_requests,
        "cold_bytes": cold_bytes,
        "batch_cold_us": batch_cold_us,
        "batch_warm_us": batch_warm_us,
        "batch_requests": batch_requests,
        "batch_bytes": batch_bytes,
        "batch_blocks": batch_blocks,
    }


def _read_split(index: Any, job: dict[str, Any], settings: Any, client: Any) -> dict[str, Any]:
    """A cold read in two parts: the ranged read, then sha256 + decode + key index."""
    from loaders.blocks import decode_block
    from loaders.snapshot import SnapshotReader
    from loaders.store import open_store

    reader = SnapshotReader(open_store(settings.snapshot_uri, s3_client=client))
    read_ms, decode_ms, block_kb, block_mb = [], [], [], []
    for _, number in job["cold"][:DECODE_SAMPLES]:
        start = time.perf_counter()
        body = reader.read_block(index.manifest, index.blocks, number)
        middle = time.perf_counter()
        block = decode_block(index.manifest, index.blocks, number, body)
        read_ms.append((middle - start) * 1000)
        decode_ms.append((time.perf_counter() - middle) * 1000)
        block_kb.append(len(body) / 1024)
        block_mb.append(block.nbytes / 1e6)
    return {
        "read_ms": read_ms,
        "decode_ms": decode_ms,
        "block_kb": block_kb,
        "decoded_block_mb": block_mb,
        "blocks": len(index.blocks),
        "block_index_mb": index.blocks.nbytes / 1e6,
    }


def _fill(index: Any, cache_bytes: int) -> dict[str, Any]:
    """Read blocks in batches until the LRU holds ``cache_bytes`` (or every block)."""
    import numpy as np

    order = np.random.default_rng(len(index.blocks)).permutation(len(index.blocks))
    firsts = index.blocks.first_keys
    start = time.perf_counter()
    for at in range(0, len(order), BATCH_KEYS):
        index.get_many([firsts[int(n)] for n in order[at : at + BATCH_KEYS]])
        if index.nbytes - index.blocks.nbytes >= cache_bytes * 0.97:
            break
    return {
        "fill_s": time.perf_counter() - start,
        "cached_blocks": index.cached_blocks,
        "cached_mb": (index.nbytes - index.blocks.nbytes) / 1e6,
        "rss_full_mb": _status_mb("VmRSS"),
    }


# --- the run ----------------------------------------------------------------------------------


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of each run's figures (percentiles taken within a run)."""
    from scripts.bench import _pct

    def med(values: list[float], digits: int = 3) -> float:
        return round(statistics.median(values), digits)

    out: dict[str, Any] = {"runs": len(runs), "rows": runs[0]["rows"]}
    for name in ("load_s", "rss_imports_mb", "rss_load_mb", "peak_load_mb", "rss_end_mb"):
        out[name] = med([r[name] for r in runs], 3 if name == "load_s" else 1)
    out["load_s_range"] = [round(min(r["load_s"] for r in runs), 3),
                           round(max(r["load_s"] for r in runs), 3)]  # fmt: skip
    out["peak_run_mb"] = round(max(r["peak_run_mb"] for r in runs), 1)
    out["load_requests"] = runs[0]["load_requests"]
    out["load_mb"] = round(runs[0]["load_bytes"] / 1e6, 2)
    for name in ("hot_us", "cold_us", "batch_cold_us", "batch_warm_us"):
        base = name.removesuffix("_us")
        out[f"{base}_p50_us"] = med([statistics.median(r[name]) for r in runs], 1)
        out[f"{base}_p99_us"] = med([_pct(r[name], 0.99) for r in runs], 1)
    out["cold_samples"] = len(runs[0]["cold_us"])
    out["unavailable"] = sum(r["cold_unavailable"] + r["batch_unavailable"] for r in runs)
    loads = [r[name] for r in runs for name in ("loadavg_start", "loadavg_end")]
    out["loadavg_range"] = [round(min(loads), 1), round(max(loads), 1)]
    out["batches"] = len(runs[0]["batch_cold_us"])
    cold_requests = [n for r in runs for n in r["cold_requests"]]
    cold_bytes = [n for r in runs for n in r["cold_bytes"]]
    out["cold_requests_mean"] = round(statistics.fmean(cold_requests), 3)
    out["cold_requests_max"] = max(cold_requests)
    out["cold_kb_mean"] = round(statistics.fmean(cold_bytes) / 1024, 1)
    out["cold_kb_max"] = round(max(cold_bytes) / 1024, 1)
    batch_requests = [n for r in runs for n in r["batch_requests"]]
    out["batch_requests_mean"] = round(statistics.fmean(batch_requests), 1)
    out["batch_blocks_mean"] = round(statistics.fmean(runs[0]["batch_blocks"]), 1)
    out["batch_kb_mean"] = round(statistics.fmean(n for r in runs for n in r["batch_bytes"]) / 1024)
    if "read_ms" in runs[0]:
        for name in ("read_ms", "decode_ms"):
            base = name.removesuffix("_ms")
            out[f"{base}_p50_ms"] = med([statistics.median(r[name]) for r in runs], 3)
            out[f"{base}_p99_ms"] = med([_pct(r[name], 0.99) for r in runs], 3)
        out["block_kb_mean"] = round(statistics.fmean(runs[0]["block_kb"]), 1)
        out["decoded_block_mb_mean"] = round(statistics.fmean(runs[0]["decoded_block_mb"]), 3)
        out["blocks"] = runs[0]["blocks"]
        out["block_index_mb"] = round(runs[0]["block_index_mb"], 2)
        for name in ("cached_blocks", "cached_mb", "rss_full_mb", "fill_s"):
            out[name] = med([r[name] for r in runs], 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every (size, store, mode), ``args.runs`` fresh interpreters each, interleaved."""
    from scripts.bench import BUCKET, PREFIX, MotoServer, _in_fresh_interpreter

    results: dict[str, Any] = {"cache_mb": args.cache_mb, "workers": args.workers, "sizes": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    with MotoServer(), moto_reads_ranges():
        s3_client = None
        if "s3" in args.stores:
            import boto3

            s3_client = boto3.client("s3")
        for rows in args.sizes:
            root = args.snapshots.get(rows) or ensure_snapshot(args.cache, rows)
            probes = draw_probes(root, seed=rows)
            uris = {"file": root.resolve().as_uri()}
            if s3_client is not None:
                print(f"{rows:,} rows: copying to the moto server", flush=True)
                prefix = f"{PREFIX}-tiered-{rows}"
                blocks_only = "memory" not in args.modes
                uris["s3"] = upload(root, s3_client, BUCKET, prefix, blocks_only=blocks_only)
            figures: dict[str, Any] = {}
            for store in args.stores:
                raw: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
                for n in range(args.runs):
                    for mode in args.modes:  # interleaved, so drift hits both modes alike
                        print(
                            f"{rows:,} rows, {store}, {mode}: run {n + 1}/{args.runs}", flush=True
                        )
                        job = {"uri": uris[store], "mode": mode, "cache_mb": args.cache_mb,
                               "workers": args.workers, **probes}  # fmt: skip
                        raw[mode].append(_in_fresh_interpreter("measure", job, "bench_tiered"))
                figures[store] = {mode: _summary(raw[mode]) for mode in args.modes}
                results["sizes"][str(rows)] = figures
                results["measured_at"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
                # So far, so that a long run that fails late keeps what it measured.
                (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _cell(fig: dict[str, Any], p50: str, p99: str) -> str:
    return f"{fig[p50]:,} / {fig[p99]:,}"


def _size_lines(rows: str, stores: dict[str, Any]) -> list[str]:
    lines = [
        f"## {int(rows):,} rows",
        "",
        "| store | mode | load s | RSS imports / after load / peak load MB | RSS end MB "
        "| hot p50 / p99 µs | cold p50 / p99 µs | cold: requests, KiB | batch of 100 cold "
        "p50 / p99 ms | batch: requests, KiB | batch warm p50 µs | load: requests, MB "
        "| 503s | load average |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for store, modes in stores.items():
        for mode, fig in modes.items():
            batch = (
                f"{fig['batch_cold_p50_us'] / 1000:,.2f} / {fig['batch_cold_p99_us'] / 1000:,.2f}"
            )
            lines.append(
                f"| {store} | {mode} | {fig['load_s']} | {fig['rss_imports_mb']} / "
                f"{fig['rss_load_mb']} / {fig['peak_load_mb']} | {fig['rss_end_mb']} | "
                f"{_cell(fig, 'hot_p50_us', 'hot_p99_us')} | "
                f"{_cell(fig, 'cold_p50_us', 'cold_p99_us')} | "
                f"{fig['cold_requests_mean']}, {fig['cold_kb_mean']} | {batch} | "
                f"{fig['batch_requests_mean']}, {fig['batch_kb_mean']:,} | "
                f"{fig['batch_warm_p50_us']:,} | {fig['load_requests']}, {fig['load_mb']} | "
                f"{fig['unavailable']} | {fig['loadavg_range'][0]}-{fig['loadavg_range'][1]} |"
            )
    lines.append("")
    for store, modes in stores.items():
        if "tiered" in modes:
            lines.append(_tiered_line(store, modes["tiered"]))
    return [*lines, ""]


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _tiered_line(store: str, fig: dict[str, Any]) -> str:
    small = fig["cold_requests_max"] == 1 and fig["cold_kb_max"] * 1024 <= GOAL_READ_BYTES
    return (
        f"- {store}, tiered: {fig['blocks']:,} blocks (index {fig['block_index_mb']} MB held), "
        f"a block {fig['block_kb_mean']} KiB read, {fig['decoded_block_mb_mean']} MB decoded; "
        f"one cold read = ranged read p50 {fig['read_p50_ms']} ms (p99 {fig['read_p99_ms']}) "
        f"+ sha256, decode and key index p50 {fig['decode_p50_ms']} ms "
        f"(p99 {fig['decode_p99_ms']}); a batch of 100 random keys touched "
        f"{fig['batch_blocks_mean']} blocks; LRU filled to {fig['cached_mb']} MB "
        f"({fig['cached_blocks']:.0f} blocks): RSS {fig['rss_full_mb']} MB, peak over the run "
        f"{fig['peak_run_mb']} MB (goal ≤ {GOAL_RSS_MB}: "
        f"{_met(fig['peak_run_mb'] <= GOAL_RSS_MB)}); hot p50 {fig['hot_p50_us']} µs "
        f"(goal ≤ {GOAL_HOT_P50_US}: {_met(fig['hot_p50_us'] <= GOAL_HOT_P50_US)}); largest "
        f"cold read {fig['cold_kb_max']} KiB in {fig['cold_requests_max']} request(s) "
        f"(goal 1 of ≤ {GOAL_READ_BYTES // 1024} KiB: {_met(small)})."
    )


def write_markdown(results: dict[str, Any], path: Path, command: str) -> None:
    lines = [
        "# Serving modes: memory and tiered",
        "",
        f"`{command}` on {os.cpu_count()} cores, {results['measured_at']} UTC."
        f" `TIERED_CACHE_MB={results['cache_mb']}`, `TIERED_FETCH_WORKERS="
        f"{results['workers']}`. Each figure is the median over fresh pandas-free interpreters "
        "(`runs` in results.json), each built with `build_service` as Lambda builds it; "
        "percentiles are taken within a run. RSS is the whole process's (imports included); "
        "peaks are the kernel's high-water mark. `s3` is a moto server on 127.0.0.1, so its "
        "times are loopback times, not S3's; requests and bytes are what S3 would see. "
        "Cold: tiered empties its LRU before each lookup (one ranged read, sha256, decode); "
        "memory has nothing to read. 503s: lookups or batches whose reads outlasted "
        "`REFRESH_WAIT_SECONDS` (answered on retry; their time is in the percentiles). Load "
        "average: the machine's 1-minute load during the runs (2 cores: above 2, runs queue "
        "for CPU). The machine is shared: compare within a run.",
        "",
    ]
    for rows, stores in results["sizes"].items():
        lines += _size_lines(rows, stores)
    path.write_text("\n".join(lines))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="rows, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: memory, tiered")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: file, s3")
    parser.add_argument("--runs", type=int, default=3, help="fresh interpreters per figure")
    parser.add_argument("--cache-mb", type=int, default=128, help="TIERED_CACHE_MB")
    parser.add_argument("--workers", type=int, default=8, help="TIERED_FETCH_WORKERS")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="snapshots kept here")
    parser.add_argument(
        "--snapshot", action="append", default=[], metavar="ROWS=PATH",
        help="serve this file:// snapshot root for ROWS rows instead of making one",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/tiered"))
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    args.stores = [s for s in args.stores.split(",") if s]
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes: {sorted(unknown)}")
    if unknown := set(args.stores) - set(STORES):
        parser.error(f"unknown stores: {sorted(unknown)}")
    if args.runs < 1 or not args.sizes or not args.modes or not args.stores:
        parser.error("--runs must be at least 1, and --sizes, --modes, --stores not empty")
    snapshots = {}
    for given in args.snapshot:
        rows, _, path = given.partition("=")
        if not rows.isdigit() or not (Path(path) / "CURRENT").is_file():
            parser.error(f"--snapshot {given!r}: want ROWS=PATH of a root with a CURRENT pointer")
        snapshots[int(rows)] = Path(path)
    args.snapshots = snapshots
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    results = run(args)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # As typed: through scripts/bench.py (which hands over its arguments) or this script.
    command = " ".join(["python", f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    write_markdown(results, args.out / "results.md", command)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
