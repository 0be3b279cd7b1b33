"""Deterministic sample customers: the source table ``make run`` builds its snapshot from.

    python scripts/sample_data.py --rows 1000000 --out .data/source/customers.parquet
    python scripts/sample_data.py --rows 100000000 --chunk-rows 1000000 --out big.parquet

The same ``--rows`` and ``--seed`` (and ``--chunk-rows``) always give the same table. With
``--chunk-rows`` the table is made and written a chunk at a time, so 100M rows need no more
memory than one chunk; without it, the whole table is made at once (:func:`make_customers`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SEGMENTS = (
    "enterprise",
    "mid_market",
    "smb",
    "startup",
    "public_sector",
    "education",
    "nonprofit",
    "consumer",
)
SEGMENT_WEIGHTS = (0.06, 0.14, 0.30, 0.12, 0.05, 0.05, 0.03, 0.25)
REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "me-south-1",
    "af-south-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-east-1",
)
TIERS = ("free", "standard", "premium", "platinum")
TIER_WEIGHTS = (0.40, 0.35, 0.20, 0.05)
_EPOCH_2022 = 1_640_995_200  # 2022-01-01T00:00:00Z
_THREE_YEARS = 3 * 365 * 86_400


def _codes(prefix: str, numbers: np.ndarray, digits: int) -> pa.Array:
    text = pc.utf8_lpad(pa.array(numbers).cast(pa.string()), digits, "0")
    return pc.binary_join_element_wise(prefix, text, "")


def make_customers(rows: int, seed: int = 7) -> pa.Table:
    """``rows`` customers sorted by ``customer_id``, as the snapshot contract requires.

    Columns: ``customer_id`` (``C`` + 9 digits, unique), ``account_id`` (``A`` + 10 digits),
    ``segment`` (8 values), ``region`` (20 values), ``tier`` (4 values) and ``updated_at``
    (UTC timestamp, second precision, within 2022-2024).
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(1_000_000_000, size=rows, replace=False))
    return _columns(ids, rng)


def _columns(ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    rows = len(ids)
    accounts = rng.integers(0, 10_000_000_000, size=rows)
    segment = rng.choice(len(SEGMENTS), size=rows, p=SEGMENT_WEIGHTS)
    region = rng.integers(0, len(REGIONS), size=rows)
    tier = rng.choice(len(TIERS), size=rows, p=TIER_WEIGHTS)
    updated = (_EPOCH_2022 + rng.integers(0, _THREE_YEARS, size=rows)).astype("int64")
    return pa.table(
        {
            "customer_id": _codes("C", ids, 9),
            "account_id": _codes("A", accounts, 10),
            "segment": pa.array(np.array(SEGMENTS, dtype=object)[segment], pa.string()),
            "region": pa.array(np.array(REGIONS, dtype=object)[region], pa.string()),
            "tier": pa.array(np.array(TIERS, dtype=object)[tier], pa.string()),
            "updated_at": pa.array(updated, pa.timestamp("s", tz="UTC")).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )


def customer_chunks(rows: int, chunk_rows: int, seed: int = 7) -> Iterator[pa.Table]:
    """``rows`` customers of :func:`make_customers`' columns, a shuffled chunk at a time.

    Keys are unique without holding them all: row ``i`` gets an id from its own stretch of
    the 9-digit space (``i * stride`` plus a random step below ``stride``). Chunk ``c`` holds
    rows ``c, c + n, c + 2n, ...`` (``n`` chunks) in a random order, so every chunk spans the
    whole key range and the table is unsorted throughout, as a warehouse returns rows.
    """
    if rows < 1 or chunk_rows < 1:
        raise ValueError(f"rows and chunk_rows must be >= 1, got {rows} and {chunk_rows}")
    stride = 1_000_000_000 // rows
    if stride < 1:
        raise ValueError(f"at most 1,000,000,000 rows, got {rows}")
    chunks = -(-rows // chunk_rows)
    for chunk in range(chunks):
        rng = np.random.default_rng([seed, chunk])
        where = np.arange(chunk, rows, chunks, dtype=np.int64)
        rng.shuffle(where)
        ids = where * stride + rng.integers(0, stride, size=len(where))
        yield _columns(ids, rng)


def main(argv: list[str] | None = None) -> int:
    """Write the sample source table (rows shuffled, as a warehouse returns them) to Parquet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--chunk-rows", type=int, help="make and write this many rows at a time (one row group)"
    )
    parser.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.chunk_rows:
        # Written under a temporary name: a cut-short run never leaves a partial table behind.
        partial = args.out.with_name(args.out.name + ".partial")
        chunks = customer_chunks(args.rows, args.chunk_rows, args.seed)
        first = next(chunks)
        with pq.ParquetWriter(partial, first.schema, compression="zstd") as writer:
            writer.write_table(first)
            for chunk in chunks:
                writer.write_table(chunk)
        partial.replace(args.out)
    else:
        table = make_customers(args.rows, args.seed)
        shuffled = table.take(np.random.default_rng(args.seed).permutation(table.num_rows))
        pq.write_table(shuffled, args.out, compression="zstd")
    print(
        f"wrote {args.rows:,} sample customers to {args.out} "
        f"({args.out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
