"""``snapshotctl``: build, list and show snapshots from a terminal.

    snapshotctl build --engine duckdb --sql sql/customer_mapping.sql --to file:///abs/root \\
        --table customers=data/customers.parquet
    snapshotctl list --root s3://bucket/prefix
    snapshotctl show 20261123T180102Z-0a1b2c3d --root s3://bucket/prefix

Exit status of build (list and show exit 0, 1 or 2):

    0  announced: the new version is published and CURRENT names it
    0  unchanged: the source has not changed since the current snapshot; no query ran
    1  rejected or failed: CURRENT was not moved; a one-line reason is on stderr
    2  usage: bad options
    3  superseded: published, but a version whose query started later stands in CURRENT
    4  pinned: published for inspection, but CURRENT is pinned, so it was not announced
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from loaders.build import Outcome, build, make_engine, make_store, rules_from
from loaders.errors import LoaderError, ObjectNotFoundError
from loaders.manifest import (
    CHANGES_NAME,
    SNAPSHOTS_PREFIX,
    VERSION_PATTERN,
    read_manifest,
    snapshot_key,
    try_read_pointer,
)
from loaders.settings import BuildConfigError, BuildSettings, storage_from_env

EXIT_FAILURE = 1  # rejected or failed; argparse exits 2 on bad options
# One exit status per build outcome; every Outcome needs one.
# Both healthy ends exit 0 (a scheduler need not tell them apart); rejected and failed builds
# raise and exit EXIT_FAILURE.
EXIT_STATUS: dict[Outcome, int] = {
    Outcome.ANNOUNCED: 0,
    Outcome.UNCHANGED: 0,
    Outcome.SUPERSEDED: 3,
    Outcome.PINNED: 4,
}


class TerminalProgress:
    """Progress lines with elapsed time; on a TTY, repeated query polls overwrite one line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr  # looked up now, so redirections made later apply
        self.started = time.perf_counter()
        self.tty = self.stream.isatty()
        self._open_line = False

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        line = f"[{elapsed:7.2f}s] {message}"
        polling = message.startswith("query ") and " after " in message
        if self.tty and polling:
            self.stream.write("\r\033[K" + line)
            self._open_line = True
        else:
            if self._open_line:
                self.stream.write("\n")
                self._open_line = False
            self.stream.write(line + "\n")
        self.stream.flush()


def _tables(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise BuildConfigError(f"--table expects NAME=PATH, got {pair!r}")
        out.append((name, path))
    return tuple(out)


def cmd_build(args: argparse.Namespace) -> int:
    settings = BuildSettings.from_env(
        snapshot_uri=args.to,
        sql=args.sql.read_text() if args.sql else None,
        engine=args.engine,
        key_column=args.key_column,
        workgroup=args.workgroup,
        database=args.database,
        staging_uri=args.staging,
        deadline_seconds=args.deadline,
        min_rows=args.min_rows,
        max_row_change=args.max_row_change,
        contract=args.contract,
        tables=_tables(args.table),
    )
    result = build(
        make_engine(settings),
        make_store(settings.snapshot_uri, settings.storage),
        settings.sql,
        rules_from(settings, allow_row_change=args.allow_row_change),
        progress=TerminalProgress(),
        source={"sql_file": str(args.sql) if args.sql else None},
        force=args.force,
    )
    print(json.dumps(result.to_dict(), indent=2))
    if result.outcome is Outcome.SUPERSEDED:
        print(f"superseded: published {result.manifest.version}, but {result.current}, whose "
              "query started later, stands in CURRENT; not announced", file=sys.stderr)  # fmt: skip
    return EXIT_STATUS[result.outcome]


def cmd_list(args: argparse.Namespace) -> int:
    store = make_store(args.root, storage_from_env())
    pointer = try_read_pointer(store)
    versions = [v for v in store.list_prefixes(SNAPSHOTS_PREFIX) if VERSION_PATTERN.fullmatch(v)]
    for version in versions:
        mark = "*" if pointer is not None and pointer.version == version else " "
        try:
            manifest = read_manifest(store, version)
            detail = f"{manifest.row_count:>12,} rows  {manifest.bytes / 1e6:8.1f} MB  " + (
                manifest.created_at.isoformat()
            )
        except ObjectNotFoundError:
            detail = "incomplete (no manifest)"
        print(f"{mark} {version}  {detail}")
    if not versions:
        print(f"no snapshots under {store.uri}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = make_store(args.root, storage_from_env())
    manifest = json.loads(read_manifest(store, args.version).to_json())
    try:
        manifest["changes"] = json.loads(store.read(snapshot_key(args.version, CHANGES_NAME)))
    except ObjectNotFoundError:
        manifest["changes"] = None
    pointer = try_read_pointer(store)
    manifest["current"] = pointer is not None and pointer.version == args.version
    print(json.dumps(manifest, indent=2))
    return 0


def _exit_status_help() -> str:
    """The exit-status table of the module docstring, for ``--help``."""
    return "exit status" + __doc__.partition("Exit status")[2]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="snapshotctl",
        description=__doc__.splitlines()[0],
        epilog=_exit_status_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build",
        help="run the query, validate, publish and announce",
        description="Run the query, validate the rows, publish them and announce the version.",
        epilog=_exit_status_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--engine", choices=("duckdb", "athena"))
    b.add_argument("--sql", type=Path, help="file with one SELECT (or QUERY_SQL/QUERY_FILE)")
    b.add_argument("--to", help="snapshot root: file:///abs/path or s3://bucket/prefix")
    b.add_argument("--table", action="append", default=[], metavar="NAME=PATH",
                   help="duckdb: register a local Parquet/CSV file under NAME")  # fmt: skip
    b.add_argument("--allow-row-change", action="store_true",
                   help="accept a row-count change above MAX_ROW_CHANGE")  # fmt: skip
    b.add_argument("--force", action="store_true",
                   help="query even if the source has not changed since CURRENT")  # fmt: skip
    b.add_argument("--key-column")
    b.add_argument("--workgroup", help="athena (or ATHENA_WORKGROUP)")
    b.add_argument("--database", help="athena (or ATHENA_DATABASE)")
    b.add_argument("--staging", help="athena UNLOAD prefix s3://... (or ATHENA_STAGING_URI)")
    b.add_argument("--deadline", type=float, help="athena deadline seconds")
    b.add_argument("--min-rows", type=int)
    b.add_argument("--max-row-change", type=float)
    b.add_argument("--contract", help="name:type,... the columns the result must have")
    b.set_defaults(func=cmd_build)

    ls = sub.add_parser("list", help="list the versions under a root")
    ls.add_argument("--root", required=True)
    ls.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="show one version's manifest and change report")
    show.add_argument("version")
    show.add_argument("--root", required=True)
    show.set_defaults(func=cmd_show)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (LoaderError, BuildConfigError, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split())
        print(f"snapshotctl {args.command}: {type(exc).__name__}: {reason}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
