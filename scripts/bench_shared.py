"""Memory and load time of N processes serving one snapshot: shared mapped copy vs private.

    python scripts/bench_shared.py --rows 10000000 --processes 4 --rounds 3 \
        --out bench/shared/results.md

Each round starts N fresh interpreters in which pandas cannot be imported (as in the Lambda
package: pyarrow imports pandas on first use where it is installed), set up as the lookup
function is (jemalloc pool, pinned mmap threshold). Each builds ``SnapshotReader(FileStore)``,
wrapped in ``service.shared.SharedSource`` for the shared runs, decodes or maps the snapshot,
builds ``loaders.index.KeyIndex``, answers random lookups, and then reads one byte of every
page of every table buffer, so that everything a long-running process would touch is resident.
While all N are alive, the parent sums their PSS from ``/proc/<pid>/smaps_rollup`` (pages
shared by k processes count 1/k in each), then lets them exit.

The first process starts alone (shared: decode, write and map; private: decode), the other
N - 1 together once it is ready (shared: map only); ``--together`` starts all N at once.
Rounds alternate private and shared, and each shared round starts from an empty share
directory. The snapshot (``make_customers`` rows, sorted by ``customer_id``) is written once
under ``.data/bench-shared/<rows>`` and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench import NO_PANDAS_BOOT  # noqa: E402 - after the root is importable

VERSION = "20260101T000000Z-5a4ed000"
KEY = "customer_id"
LOOKUPS = 20_000
PAGE = 4096
_HELD: list[Any] = []  # a child's snapshot and index, alive while its memory is measured
GOAL_RATIO = 0.4
# A fresh interpreter without pandas (scripts/bench.py NO_PANDAS_BOOT). It runs child(job) and
# stays alive, holding the snapshot, until the parent closes its stdin.
_BOOT = NO_PANDAS_BOOT + (
    "from scripts import bench_shared\n"
    "job = json.loads(sys.argv[2])\n"
    "print(json.dumps(getattr(bench_shared, job['run'])(job)), flush=True)\n"
    "sys.stdin.read()\n"
)


def snapshot_root(rows: int, cache: Path, *, keys: str = "fixed") -> Path:
    """The FileStore root holding the ``rows``-row bench snapshot, written on first use.

    ``keys="varying"`` drops the IDs' zero padding (``C1234`` beside ``C98765432``), re-sorted:
    keys of several widths, which ``KeyIndex`` pads into a private copy in every process.
    """
    from loaders.manifest import MANIFEST_NAME, snapshot_key
    from loaders.snapshot import write_snapshot
    from loaders.store import FileStore
    from scripts.sample_data import make_customers

    root = cache / (str(rows) if keys == "fixed" else f"{rows}-{keys}")
    if not (root / snapshot_key(VERSION, MANIFEST_NAME)).exists():
        print(f"writing the {rows:,}-row snapshot under {root} (once)", file=sys.stderr)
        table = make_customers(rows)
        if keys == "varying":
            import pyarrow.compute as pc

            unpadded = pc.utf8_replace_slice(
                pc.utf8_ltrim(pc.utf8_slice_codeunits(table[KEY], 1), "0"), 0, 0, "C"
            )
            table = table.set_column(0, KEY, unpadded).sort_by(KEY)
        write_snapshot(
            FileStore(root),
            table,
            version=VERSION,
            key_column=KEY,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    return root


def child(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: load the snapshot as the lookup function would, touch it, and
    report the timings. Runs with pandas blocked."""
    import numpy as np
    import pyarrow as pa

    from loaders.index import KeyIndex
    from loaders.snapshot import SnapshotReader
    from loaders.store import FileStore
    from service.memory import lookup_memory_pool, pin_mmap_threshold, release_unused
    from service.shared import SharedSource

    pa.set_memory_pool(lookup_memory_pool())
    pin_mmap_threshold()
    source: Any = SnapshotReader(FileStore(job["root"]))
    if job["share_dir"] is not None:
        source = SharedSource(source, job["share_dir"])
    manifest = source.read_manifest(VERSION)
    started, cpu_started = time.perf_counter(), time.process_time()
    snapshot = source.read_data(manifest)
    loaded, cpu_loaded = time.perf_counter(), time.process_time()
    index = KeyIndex(snapshot.table, KEY, padded_keys=getattr(snapshot, "padded_keys", None))
    indexed, cpu_indexed = time.perf_counter(), time.process_time()
    release_unused()
    rng = np.random.default_rng(job["seed"])
    keys = snapshot.table.column(KEY)
    probes = [keys[int(i)].as_py() for i in rng.integers(0, len(index), LOOKUPS)]
    found = sum(index.get(key) is not None for key in probes)
    touched = _touch_every_page(snapshot.table)
    _HELD.append((snapshot, index))  # served until the parent closes stdin, as a process would
    return {
        "load_s": loaded - started,
        "index_s": indexed - loaded,
        "load_cpu_s": cpu_loaded - cpu_started,
        "index_cpu_s": cpu_indexed - cpu_loaded,
        "how": getattr(getattr(source, "last_load", None), "how", "private"),
        "found": found,
        "touched_pages": touched,
        "table_bytes": snapshot.table.nbytes,
        "pandas": "pandas" in sys.modules,
    }


def _touch_every_page(table: Any) -> int:
    """Read one byte of every page of every buffer, as traffic would over time."""
    import numpy as np

    pages = 0
    for column in table.columns:
        for chunk in column.chunks:
            arrays = [chunk]
            if hasattr(chunk, "dictionary"):
                arrays.append(chunk.dictionary)
            for array in arrays:
                for buffer in array.buffers():
                    if buffer is not None and buffer.size:
                        view = np.frombuffer(buffer, dtype=np.uint8)
                        pages += int(view[::PAGE].size)
                        int(view[::PAGE].sum())
    return pages


def child_breakdown(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: the writer's steps one by one, wall and CPU seconds, each
    repeated ``job["repeats"]`` times (decode, the copy's table, write, fsync, map)."""
    import pyarrow as pa

    from loaders.snapshot import SnapshotReader
    from loaders.store import FileStore
    from service import shared
    from service.memory import lookup_memory_pool, pin_mmap_threshold

    pa.set_memory_pool(lookup_memory_pool())
    pin_mmap_threshold()
    reader = SnapshotReader(FileStore(job["root"]))
    manifest = reader.read_manifest(VERSION)
    path = Path(job["share_dir"]) / "breakdown.arrow"
    steps: dict[str, list[tuple[float, float]]] = {}

    def timed(step: str, work: Any, *args: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = work(*args)
        steps.setdefault(step, []).append((time.perf_counter() - wall, time.process_time() - cpu))
        return out

    def write(table: pa.Table) -> None:
        with pa.OSFile(str(path), "wb") as out, pa.ipc.new_file(out, table.schema) as writer:
            writer.write_table(table)

    def map_copy() -> pa.Table:
        with pa.memory_map(str(path)) as mapped:
            return pa.ipc.open_file(mapped).read_all()

    for _ in range(job["repeats"]):
        snapshot = timed("decode", reader.read_data, manifest)
        table = timed("copy table", shared._for_copy, snapshot.table, KEY)
        timed("write", write, table)
        timed("fsync", shared._fsync, path)
        timed("map", map_copy)
        path.unlink()
        del snapshot, table
    return {
        step: [statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)]
        for step, runs in steps.items()
    }


def _memory_kb(pid: int) -> dict[str, int]:
    """Rss, Pss, Pss_Anon and Pss_File of one process, in kB (Linux smaps_rollup)."""
    figures = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
            figures[name] = int(rest.split()[0])
    return figures


def _start(job: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _BOOT, str(ROOT), json.dumps(job)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ready(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError(f"a child failed (exit {process.returncode}); see its stderr above")
    return json.loads(line)


def run_round(
    root: Path, processes: int, share_dir: Path | None, *, together: bool = False
) -> dict[str, Any]:
    """Start ``processes`` children on one snapshot, sum their memory while all are alive.

    The first starts alone (shared: it writes the copy), the others once it is ready; with
    ``together``, all at once (shared: one writes, the others wait on its lock, then map).
    """
    directory = None if share_dir is None else str(share_dir)
    jobs = [
        {"run": "child", "root": str(root), "share_dir": directory, "seed": i}
        for i in range(processes)
    ]
    children = [_start(jobs[0])]
    try:
        if together:
            children += [_start(job) for job in jobs[1:]]
        reports = [_ready(children[0])]
        if not together:
            children += [_start(job) for job in jobs[1:]]
        reports += [_ready(process) for process in children[1:]]
        memory = [_memory_kb(process.pid) for process in children]
    finally:
        for process in children:
            if process.stdin is not None:
                process.stdin.close()
        for process in children:
            process.wait()
    if any(report["pandas"] for report in reports):
        raise RuntimeError("pandas was imported in a child")
    # The writer first: with all started at once, any of them may have won the lock.
    reports.sort(key=lambda report: report["how"] != "written")
    return {"reports": reports, "memory": memory}


def _mb(kb: float) -> float:
    return kb * 1024 / 1e6


def summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians over rounds, per mode: total PSS (MB) and load times (s)."""
    out = {}
    for mode, results in rounds.items():
        totals = [sum(m["Pss"] for m in r["memory"]) for r in results]
        anon = [sum(m.get("Pss_Anon", 0) for m in r["memory"]) for r in results]
        files = [sum(m.get("Pss_File", 0) for m in r["memory"]) for r in results]
        rss = [sum(m["Rss"] for m in r["memory"]) for r in results]
        first = [r["reports"][0]["load_s"] for r in results]
        others = [statistics.median(x["load_s"] for x in r["reports"][1:]) for r in results]
        index = [statistics.median(x["index_s"] for x in r["reports"]) for r in results]
        first_ready = [r["reports"][0]["load_s"] + r["reports"][0]["index_s"] for r in results]
        other_ready = [
            statistics.median(x["load_s"] + x["index_s"] for x in r["reports"][1:]) for r in results
        ]
        first_cpu = [
            r["reports"][0]["load_cpu_s"] + r["reports"][0]["index_cpu_s"] for r in results
        ]
        other_cpu = [
            statistics.median(x["load_cpu_s"] + x["index_cpu_s"] for x in r["reports"][1:])
            for r in results
        ]
        out[mode] = {
            "first_cpu_s": statistics.median(first_cpu),
            "other_cpu_s": statistics.median(other_cpu),
            "pss_mb": _mb(statistics.median(totals)),
            "pss_anon_mb": _mb(statistics.median(anon)),
            "pss_file_mb": _mb(statistics.median(files)),
            "rss_mb": _mb(statistics.median(rss)),
            "first_load_s": statistics.median(first),
            "other_load_s": statistics.median(others),
            "index_s": statistics.median(index),
            "first_ready_s": statistics.median(first_ready),
            "other_ready_s": statistics.median(other_ready),
            "hows": ",".join(x["how"] for x in results[-1]["reports"]),
        }
    return out


def report(args: argparse.Namespace, summary: dict[str, dict[str, float]], table_mb: float) -> str:
    private, shared = summary["private"], summary["shared"]
    ratio = shared["pss_mb"] / private["pss_mb"]
    first = "writer (all start at once)" if args.together else "first process (alone)"
    others = f"all {args.processes}" if args.together else args.processes - 1
    mapped = "wait on the lock, map" if args.together else "map"
    lines = [
        "# One copy per machine: shared mapped snapshot vs private copies",
        "",
        f"    {' '.join(['python', *sys.argv])}",
        "",
        f"{args.rows:,} rows (`make_customers`, {args.keys}-width keys, table "
        f"{table_mb:.0f} MB in Arrow), "
        f"{args.processes} processes, medians of {args.rounds} rounds run alternately "
        f"(private, shared, ...). Each process: fresh interpreter without pandas, jemalloc "
        f"pool, `SnapshotReader(FileStore)` (shared: wrapped in `SharedSource`), `KeyIndex`, "
        f"{LOOKUPS:,} lookups, then one byte read from every page of every table buffer.",
        "Memory is the sum of the processes' PSS (`/proc/<pid>/smaps_rollup`) while all are "
        "alive: a page shared by k processes counts 1/k in each.",
        "",
        "| | private copies | shared copy | shared / private |",
        "|---|---:|---:|---:|",
        f"| total PSS, MB | {private['pss_mb']:.0f} | {shared['pss_mb']:.0f} | {ratio:.2f} |",
        f"| of which anonymous, MB | {private['pss_anon_mb']:.0f} | "
        f"{shared['pss_anon_mb']:.0f} | |",
        f"| of which file-backed, MB | {private['pss_file_mb']:.0f} | "
        f"{shared['pss_file_mb']:.0f} | |",
        f"| total RSS (double-counts shared pages), MB | {private['rss_mb']:.0f} | "
        f"{shared['rss_mb']:.0f} | |",
        f"| {first}: load, s | {private['first_load_s']:.3f} (decode) | "
        f"{shared['first_load_s']:.3f} (decode, write, map) | "
        f"{shared['first_load_s'] / private['first_load_s']:.2f} |",
        f"| other processes: load, s (median) | {private['other_load_s']:.3f} (decode, "
        f"{others} at once) | {shared['other_load_s']:.3f} ({mapped}) | "
        f"{shared['other_load_s'] / private['other_load_s']:.2f} |",
        f"| KeyIndex build, s (median) | {private['index_s']:.3f} | {shared['index_s']:.3f} | |",
        f"| {first}: load + index, s | {private['first_ready_s']:.3f} | "
        f"{shared['first_ready_s']:.3f} | "
        f"{shared['first_ready_s'] / private['first_ready_s']:.2f} |",
        f"| other processes: load + index, s (median) | {private['other_ready_s']:.3f} | "
        f"{shared['other_ready_s']:.3f} | "
        f"{shared['other_ready_s'] / private['other_ready_s']:.2f} |",
        f"| {first}: load + index CPU, s | {private['first_cpu_s']:.3f} | "
        f"{shared['first_cpu_s']:.3f} | {shared['first_cpu_s'] / private['first_cpu_s']:.2f} |",
        f"| other processes: load + index CPU, s (median) | {private['other_cpu_s']:.3f} | "
        f"{shared['other_cpu_s']:.3f} | {shared['other_cpu_s'] / private['other_cpu_s']:.2f} |",
        "",
        f"Goal (issue 11): shared total <= {GOAL_RATIO}x private: "
        f"{'met' if ratio <= GOAL_RATIO else 'NOT met'} ({ratio:.2f}x). "
        f"What each shared process did in the last round: {shared['hows']}.",
        "",
        "Machine: 2 cores, shared with other work (load average up to ~10 during these runs): "
        "wall times are noisy, CPU seconds (all threads) less so. Share directory under "
        f"{args.share_root} ({'tmpfs' if _is_tmpfs(args.share_root) else 'disk-backed'}).",
    ]
    return "\n".join(lines) + "\n"


def _is_tmpfs(path: Path) -> bool:
    mounts = Path("/proc/mounts").read_text().splitlines()
    best = ("", "")
    for line in mounts:
        parts = line.split()
        target, kind = parts[1], parts[2]
        if str(path.resolve()).startswith(target) and len(target) > len(best[0]):
            best = (target, kind)
    return best[1] == "tmpfs"


def _print_breakdown(root: Path, args: argparse.Namespace) -> int:
    share_dir = Path(tempfile.mkdtemp(prefix="bench-share-", dir=args.share_root))
    try:
        process = _start(
            {"run": "child_breakdown", "root": str(root), "share_dir": str(share_dir),
             "repeats": args.breakdown}
        )  # fmt: skip
        steps = _ready(process)
        process.communicate()
    finally:
        shutil.rmtree(share_dir, ignore_errors=True)
    lines = [
        f"Writer's steps at {args.rows:,} rows ({args.keys}-width keys), medians of "
        f"{args.breakdown} in one fresh process without pandas:",
        "",
        f"    {' '.join(['python', *sys.argv])}",
        "",
        "| step | wall, s | CPU, s |",
        "|---|---:|---:|",
        *(f"| {step} | {wall:.3f} | {cpu:.3f} |" for step, (wall, cpu) in steps.items()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=ROOT / ".data" / "bench-shared")
    parser.add_argument("--share-root", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keys", choices=("fixed", "varying"), default="fixed")
    parser.add_argument(
        "--together", action="store_true", help="start all processes at once (default: first alone)"
    )
    parser.add_argument(
        "--breakdown",
        type=int,
        default=0,
        metavar="N",
        help="instead: the writer's steps, N times each in one fresh process (medians)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error("--processes must be at least 2")
    root = snapshot_root(args.rows, args.cache, keys=args.keys)
    if args.breakdown:
        return _print_breakdown(root, args)
    rounds: dict[str, list[dict[str, Any]]] = {"private": [], "shared": []}
    table_mb = 0.0
    for i in range(args.rounds):
        for mode in ("private", "shared"):
            share_dir = None
            if mode == "shared":
                share_dir = Path(tempfile.mkdtemp(prefix="bench-share-", dir=args.share_root))
            try:
                result = run_round(root, args.processes, share_dir, together=args.together)
            finally:
                if share_dir is not None:
                    shutil.rmtree(share_dir, ignore_errors=True)
            rounds[mode].append(result)
            table_mb = result["reports"][0]["table_bytes"] / 1e6
            total = sum(m["Pss"] for m in result["memory"])
            loads = " ".join(f"{r['load_s']:.3f}" for r in result["reports"])
            print(f"round {i + 1} {mode}: PSS {_mb(total):.0f} MB, loads {loads} s", flush=True)
    text = report(args, summarise(rounds), table_mb)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
