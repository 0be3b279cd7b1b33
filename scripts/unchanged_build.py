"""Time a scheduled build whose source has not changed, and count the Athena queries it starts.

    python scripts/unchanged_build.py [--partitions 50] [--files 6] [--runs 5] [--rows 20000]

Everything runs against a local moto server (S3, Glue and Athena in one process), reached
through ``AWS_ENDPOINT_URL``, as the builder Lambda is configured in ``template.yaml``
(``ENGINE=athena``, the shipped query and contract). The source is a Glue table of
``--partitions`` date partitions with ``--files`` objects each.

1. A first build publishes and announces a snapshot. moto runs no SQL, so its rows come from
   ``scripts.sample_data``. Its fingerprint is the builder's own: the real engine takes it
   through Glue and S3.
2. Then ``loaders.build.handler`` runs ``--runs`` times on a scheduled event, as EventBridge
   would invoke it. Each run builds its clients, reads the settings, fingerprints the source,
   reads ``CURRENT`` and the manifest, and should end ``unchanged``.

It prints the wall time of each handler run and of its fingerprint step, plus the Athena
queries started during the runs (the goal is 0), as moto counts them.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loaders.build import build, handler, make_engine, make_store, rules_from
from loaders.settings import BuildSettings
from scripts.sample_data import make_customers

REGION = "us-east-1"
SNAPSHOTS = "snapshots-bench"
SOURCE = "warehouse-bench"
DATABASE = "customer_db"
WORKGROUP = "customer-snapshots"
# template.yaml's defaults for the builder function.
QUERY_SQL = (
    "SELECT customer_id, account_id, segment, region, tier, updated_at FROM customers "
    "WHERE customer_id IS NOT NULL"
)
CONTRACT = (
    "customer_id:string,account_id:string,segment:string,region:string,tier:string,"
    "updated_at:timestamp[us, tz=UTC]"
)
SCHEDULED_EVENT = {
    "version": "0",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "detail": {},
}


def environment(endpoint: str) -> None:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
            "ENGINE": "athena",
            "SNAPSHOT_URI": f"s3://{SNAPSHOTS}/customer-mapping",
            "QUERY_SQL": QUERY_SQL,
            "CONTRACT_COLUMNS": CONTRACT,
            "ATHENA_WORKGROUP": WORKGROUP,
            "ATHENA_DATABASE": DATABASE,
            "ATHENA_STAGING_URI": f"s3://{SNAPSHOTS}/customer-mapping/staging",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "SOURCE_TABLES"):
        os.environ.pop(name, None)


def create_source(partitions: int, files: int) -> int:
    """The Glue table ``customers`` over ``partitions`` x ``files`` objects; returns the count."""
    s3 = boto3.client("s3")
    glue = boto3.client("glue")
    boto3.client("athena").create_work_group(Name=WORKGROUP)
    s3.create_bucket(Bucket=SNAPSHOTS)
    s3.create_bucket(Bucket=SOURCE)
    location = f"s3://{SOURCE}/tables/customers/"
    glue.create_database(DatabaseInput={"Name": DATABASE})
    glue.create_table(
        DatabaseName=DATABASE,
        TableInput={
            "Name": "customers",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "parquet"},
            "StorageDescriptor": {
                "Location": location,
                "Columns": [
                    {"Name": name.split(":")[0], "Type": "string"} for name in CONTRACT.split(",")
                ],
            },
            "PartitionKeys": [{"Name": "dt", "Type": "string"}],
        },
    )
    for day in range(partitions):
        dt = f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}"
        for part in range(files):
            key = f"tables/customers/dt={dt}/part-{part:05d}-c000.zstd.parquet"
            s3.put_object(Bucket=SOURCE, Key=key, Body=f"{dt}/{part}".encode() * 64)
        glue.create_partition(
            DatabaseName=DATABASE,
            TableName="customers",
            PartitionInput={
                "Values": [dt],
                "StorageDescriptor": {"Location": f"{location}dt={dt}/"},
            },
        )
    return partitions * files


class SampleRows:
    """The real Athena engine, except that its query answers with sample rows (moto runs no
    SQL): it fingerprints exactly as the handler's engine will."""

    name = "athena"

    def __init__(self, engine: Any, rows: int) -> None:
        self.engine = engine
        self.rows = rows

    def fingerprint(self, sql: str) -> Any:
        return self.engine.fingerprint(sql)

    def run(self, sql: str, *, progress: Any = None) -> Any:
        return make_customers(self.rows)


def queries_started() -> int:
    return len(boto3.client("athena").list_query_executions()["QueryExecutionIds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=50)
    parser.add_argument("--files", type=int, default=6, help="objects per partition")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the first snapshot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        environment(f"http://{host}:{port}")
        objects = create_source(args.partitions, args.files)
        settings = BuildSettings.from_env()
        first = build(
            SampleRows(make_engine(settings), args.rows),
            make_store(settings.snapshot_uri, settings.storage),
            settings.sql,
            rules_from(settings),
            progress=lambda _message: None,
        )
        print(f"source: 1 Glue table, {args.partitions} partitions, {objects} objects")
        recorded = first.manifest.source.get("fingerprint", "none (see warning)")
        print(f"first build: {first.outcome.value}, fingerprint {recorded}")

        before = queries_started()
        totals, fingerprints, outcomes = [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            summary = handler(SCHEDULED_EVENT, None)
            totals.append(time.perf_counter() - started)
            fingerprints.append(summary["seconds"]["fingerprint"])
            outcomes.append(summary["outcome"])
        started_queries = queries_started() - before
    finally:
        server.stop()

    print(f"scheduled builds: {args.runs}, outcomes {sorted(set(outcomes))}")
    print("handler seconds:     " + ", ".join(f"{s:.3f}" for s in totals))
    print("fingerprint seconds: " + ", ".join(f"{s:.3f}" for s in fingerprints))
    print(f"median: handler {statistics.median(totals):.3f}s, "
          f"fingerprint step {statistics.median(fingerprints):.3f}s")  # fmt: skip
    print(f"Athena queries started by the scheduled builds: {started_queries} (goal 0)")
    return 0 if started_queries == 0 and set(outcomes) == {"unchanged"} else 1


if __name__ == "__main__":
    sys.exit(main())
