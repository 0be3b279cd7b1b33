"""``snapshotctl``: build snapshots, inspect them, and move the pointer, from a terminal.

    snapshotctl build --engine duckdb --sql sql/customer_mapping.sql --to file:///abs/root \\
        --table customers=data/customers.parquet
    snapshotctl list --root s3://bucket/prefix
    snapshotctl show 20261123T180102Z-0a1b2c3d --root s3://bucket/prefix
    snapshotctl status --root s3://bucket/prefix
    snapshotctl diff OLD NEW --root s3://bucket/prefix
    snapshotctl verify VERSION --root s3://bucket/prefix
    snapshotctl rollback [VERSION] [--reason TEXT] --root s3://bucket/prefix
    snapshotctl pin VERSION --reason TEXT --root s3://bucket/prefix
    snapshotctl unpin --root s3://bucket/prefix
    snapshotctl announce VERSION [--force] --root s3://bucket/prefix
    snapshotctl gc --keep N [--older-than DAYS] [--dry-run] --root s3://bucket/prefix

The operator commands print a table, or JSON with --json; --quiet (or a stderr that is not a
terminal) turns their progress bar off. They exit 0 when done, 1 with a one-line reason on
stderr (a bad or unkept version, a failed verification, CURRENT moved meanwhile, permission
denied), and 2 on bad options. This module only parses and prints: the operations live in
loaders.ops_status, loaders.ops_pointer and loaders.ops_gc.

Exit status of build:

    0  announced: the new version is published and CURRENT names it
    0  unchanged: the source has not changed since the current snapshot; no query ran
    1  rejected or failed: CURRENT was not moved; a one-line reason is on stderr
    2  usage: bad options
    3  superseded: published, but a version whose query started later stands in CURRENT
    4  pinned: published for inspection, but CURRENT is pinned, so it was not announced
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from loaders import ops_gc, ops_pointer, ops_status
from loaders.build import (
    Outcome,
    build,
    make_engine,
    make_store,
    record_failure,
    rules_from,
    stream_settings_from,
)
from loaders.errors import LoaderError, ObjectNotFoundError, PreconditionFailedError
from loaders.manifest import (
    CHANGES_NAME,
    SNAPSHOTS_PREFIX,
    VERSION_PATTERN,
    read_manifest,
    snapshot_key,
    try_read_pointer,
    utc_text,
)
from loaders.ops_status import OperatorError, is_permission_denied
from loaders.settings import BuildConfigError, BuildSettings, storage_from_env

if TYPE_CHECKING:
    from collections.abc import Callable

    from loaders.manifest import Pin
    from loaders.ops_pointer import PointerChange
    from loaders.records import BuildRecord

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
LOST_RACE = "CURRENT moved since it was read; run again"
_URI = re.compile(r"(?:s3|file)://[^\s:]+(?::[^\s:]+)*")


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


class BarProgress:
    """A tqdm bar on stderr that moves one step at a time (the stores read whole objects).

    Off with ``--quiet``, when the stream is not a terminal, or when tqdm is not installed.
    """

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self._bar: Any = None

    def begin(self, total: int, what: str) -> None:
        self.close()
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # a dev dependency: the bar is a nicety, never a requirement
            self.enabled = False
            return
        self._bar = tqdm(total=total, desc=what, file=self.stream, unit="step", leave=False)

    def advance(self, step: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(step, refresh=False)
            self._bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    store = make_store(settings.snapshot_uri, settings.storage)
    started_at = datetime.now(UTC)
    try:
        result = build(
            make_engine(settings),
            store,
            settings.sql,
            rules_from(settings, allow_row_change=args.allow_row_change),
            progress=TerminalProgress(),
            source={"sql_file": str(args.sql) if args.sql else None},
            force=args.force,
            settings=stream_settings_from(settings),
        )
    except LoaderError as exc:
        record_failure(store, exc, started_at=started_at, finished_at=datetime.now(UTC))
        raise
    print(json.dumps(result.to_dict(), indent=2))
    if result.outcome is Outcome.SUPERSEDED:
        print(f"superseded: published {result.manifest.version}, but {result.current}, whose "
              "query started later, stands in CURRENT; not announced", file=sys.stderr)  # fmt: skip
    if result.outcome is Outcome.PINNED:
        print(f"pinned: published {result.manifest.version} for inspection; CURRENT is pinned "
              f"to {result.current}, so it was not announced", file=sys.stderr)  # fmt: skip
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


# --- operator commands: call an ops_* function, print its answer -------------------------------


def _store(args: argparse.Namespace) -> Any:
    return make_store(args.root, storage_from_env())


def _operator() -> str:
    """Who runs this command, for a pin's ``by``: the login name, as getpass finds it."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _print_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2))


def _table(headers: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> None:
    """Print rows under headers in aligned columns; ``right`` holds the numeric columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        text = (
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(text).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours < 48 else f"{hours // 24}d {hours % 24}h"


def _pin_text(pin: Pin | None) -> str:
    if pin is None:
        return "not pinned"
    return f"pinned by {pin.by} at {utc_text(pin.at)}: {pin.reason}"


def _build_text(record: BuildRecord | None) -> str:
    if record is None:
        return "none recorded"
    text = f"{record.outcome} {record.version or '-'} at {utc_text(record.finished_at)}"
    text += f" in {record.duration_seconds:.1f}s"
    if record.changes:
        c = record.changes
        text += f"; rows +{c.get('added', 0):,} -{c.get('removed', 0):,} ~{c.get('changed', 0):,}"
    if record.error:
        text += f"; {record.error}"
    return text


def cmd_status(args: argparse.Namespace) -> int:
    found = ops_status.status(_store(args), now=datetime.now(UTC))
    if args.json:
        _print_json(found.to_dict())
        return 0
    print(f"root        {found.root}")
    if found.current is None:
        print("current     none (nothing announced)")
    else:
        print(f"current     {found.current} (age {_age(found.age_seconds)})")
        print(f"pin         {_pin_text(found.pin)}")
    print(f"last build  {_build_text(found.last_build)}")
    for problem in found.problems:
        print(f"problem     {problem}")
    print()
    rows = []
    for v in found.versions:
        marks = [m for m in ("current", "pinned", "previous") if getattr(v, m)]
        rows.append([
            v.version,
            v.state,
            "" if v.rows is None else f"{v.rows:,}",
            "" if v.bytes is None else f"{v.bytes / 1e6:.1f}",
            utc_text(v.created_at) or "",
            ", ".join(marks),
        ])  # fmt: skip
    _table(["VERSION", "STATE", "ROWS", "MB", "CREATED_AT", "MARKS"], rows, frozenset({2, 3}))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with BarProgress(quiet=args.quiet) as bar:
        found = ops_status.diff(_store(args), args.old, args.new, progress=bar)
    if args.json:
        _print_json(found.to_dict())
        return 0
    print(f"{found.old} -> {found.new}  (key {found.key_column})")
    print(f"rows     {found.old_rows:,} -> {found.new_rows:,}")
    schema = f"{len(found.columns)} column(s) differ" if found.columns else "same names and types"
    print(f"columns  {schema}")
    print()
    _table(
        ["ROWS", "COUNT", "EXAMPLES"],
        [
            [kind, f"{getattr(found, kind):,}", ", ".join(found.examples.get(kind, [])[:5])]
            for kind in ("added", "removed", "changed")
        ],
        frozenset({1}),
    )
    if found.changed_by_column:
        print()
        _table(
            ["COLUMN", "ROWS CHANGED"],
            [[name, f"{n:,}"] for name, n in found.changed_by_column.items()],
            frozenset({1}),
        )
    if found.columns:
        print()
        _table(
            ["COLUMN", "OLD TYPE", "NEW TYPE"],
            [[c.name, c.old_type or "-", c.new_type or "-"] for c in found.columns],
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with BarProgress(quiet=args.quiet) as bar:
        checked = ops_status.verify(_store(args), args.version, progress=bar)
    if args.json:
        _print_json(checked.to_dict())
    elif checked.ok:
        print(f"ok  {checked.version}: {checked.rows:,} rows, {checked.bytes:,} bytes, "
              f"sha256 {checked.sha256}, keyed by {checked.key_column} "
              f"({checked.seconds:.2f}s)")  # fmt: skip
    if not checked.ok:
        print(f"snapshotctl verify: {checked.version} failed: {checked.error}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _print_change(change: PointerChange, as_json: bool) -> None:
    if as_json:
        _print_json(change.to_dict())
        return
    if not change.written:
        print(
            f"{change.action}: nothing to do; CURRENT names {change.after}, {_pin_text(change.pin)}"
        )
        return
    move = f"{change.before} -> {change.after}" if change.moved else f"{change.after} (stays)"
    print(f"{change.action}: CURRENT {move}")
    if change.verification is not None:
        v = change.verification
        print(f"verified  {v.rows:,} rows, sha256 ok, key index built ({v.seconds:.2f}s)")
    print(f"pin       {_pin_text(change.pin)}")
    print(f"previous  {', '.join(change.previous) or '(none)'}")
    if change.moved:
        print("readers follow on their next pointer check (REFRESH_TTL_SECONDS)")


def _hold(args: argparse.Namespace, operation: Callable[..., Any]) -> int:
    """Run ``rollback`` or ``pin``: both verify, move CURRENT by CAS and pin it, as this user."""
    with BarProgress(quiet=args.quiet) as bar:
        change = operation(
            _store(args),
            args.version,
            by=_operator(),
            at=datetime.now(UTC).replace(microsecond=0),
            reason=args.reason,
            progress=bar,
        )
    _print_change(change, args.json)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    return _hold(args, ops_pointer.rollback)


def cmd_pin(args: argparse.Namespace) -> int:
    return _hold(args, ops_pointer.pin)


def cmd_unpin(args: argparse.Namespace) -> int:
    _print_change(ops_pointer.unpin(_store(args)), args.json)
    return 0


def cmd_announce(args: argparse.Namespace) -> int:
    with BarProgress(quiet=args.quiet) as bar:
        change = ops_pointer.announce_version(
            _store(args), args.version, force=args.force, progress=bar
        )
    _print_change(change, args.json)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    older_than = None if args.older_than is None else timedelta(days=args.older_than)
    with BarProgress(quiet=args.quiet) as bar:
        result = ops_gc.gc(
            _store(args),
            keep=args.keep,
            now=datetime.now(UTC),
            older_than=older_than,
            dry_run=args.dry_run,
            progress=bar,
        )
    if args.json:
        _print_json(result.to_dict())
        return 0
    verb = "would delete" if result.dry_run else "deleted"
    rows = [[v, verb, f"{n} objects"] for v, n in result.deleted.items()]
    rows += [[v, "kept", ", ".join(r)] for v, r in sorted(result.kept.items(), reverse=True)]
    _table(["VERSION", "ACTION", "WHY"], rows)
    print(f"{verb} {len(result.deleted)} version(s), kept {len(result.kept)}")
    return 0


# --- arguments ----------------------------------------------------------------------------------


def _exit_status_help() -> str:
    """The exit-status table of the module docstring, for ``--help``."""
    return "exit status" + __doc__.partition("Exit status")[2]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _days(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number of days >= 0, got {text}")
    return value


_OPERATOR_EXIT = """exit status:

    0  done (gc --dry-run and verify included)
    1  refused or failed: one line on stderr says why (a bad or unkept version, a failed
       verification, CURRENT moved since it was read, permission denied)
    2  usage: bad options
"""


def _operator_parser(
    sub: Any, name: str, help_text: str, more: str = ""
) -> argparse.ArgumentParser:
    command = sub.add_parser(
        name,
        help=help_text,
        description=f"{help_text[0].upper()}{help_text[1:]}.{more}",
        epilog=_OPERATOR_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--root", required=True, help="file:///abs/path or s3://bucket/prefix")
    command.add_argument("--json", action="store_true", help="print JSON for scripts")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    return command


def _add_operator_commands(sub: Any) -> None:
    status = _operator_parser(
        sub, "status", "the current version, its age and pin, kept versions, last build"
    )
    status.set_defaults(func=cmd_status)

    diff = _operator_parser(
        sub, "diff", "rows added, removed and changed, and column changes, from OLD to NEW"
    )
    diff.add_argument("old")
    diff.add_argument("new")
    diff.set_defaults(func=cmd_diff)

    verify = _operator_parser(
        sub, "verify", "download, check sha256, decode and index a version, as a reader"
    )
    verify.add_argument("version")
    verify.set_defaults(func=cmd_verify)

    rollback = _operator_parser(
        sub,
        "rollback",
        "move CURRENT back to a kept, verified version and pin it",
        "\n\nThe version rolled back from leaves CURRENT's previous list, so a cold reader never\n"
        "falls back to it and a second rollback steps further back. `unpin` when fixed.",
    )
    rollback.add_argument(
        "version", nargs="?", help="default: the newest in CURRENT's previous list"
    )
    rollback.add_argument("--reason", help='why (default "rollback from <current>")')
    rollback.set_defaults(func=cmd_rollback)

    pin = _operator_parser(
        sub, "pin", "pin a version in CURRENT: builds publish but do not announce"
    )
    pin.add_argument("version")
    pin.add_argument("--reason", required=True)
    pin.set_defaults(func=cmd_pin)

    unpin = _operator_parser(sub, "unpin", "clear the pin; the next build announces again")
    unpin.set_defaults(func=cmd_unpin)

    announce = _operator_parser(
        sub,
        "announce",
        "move CURRENT to a kept, verified version, without a pin",
        "\n\nForward or back. Refused while CURRENT is pinned, unless --force (which drops the\n"
        "pin); `pin VERSION` moves and keeps a hold instead.",
    )
    announce.add_argument("version")
    announce.add_argument(
        "--force", action="store_true", help="announce even when pinned, dropping the pin"
    )
    announce.set_defaults(func=cmd_announce)

    gc = _operator_parser(
        sub,
        "gc",
        "delete old snapshot folders nothing keeps",
        "\n\nNever deleted: the current version, the versions CURRENT lists as previous, a\n"
        "pinned version, the newest N, and with --older-than any version not older than that.",
    )
    gc.add_argument(
        "--keep", type=_positive_int, required=True, metavar="N", help="keep the newest N versions"
    )
    gc.add_argument(
        "--older-than", type=_days, metavar="DAYS", help="delete only versions older than this"
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted; delete nothing"
    )
    gc.set_defaults(func=cmd_gc)


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

    _add_operator_commands(sub)
    return top


def one_line(exc: BaseException) -> str:
    """The one-line reason printed for a failed command: plain words for what an operator can
    act on (a lost race, a denied permission, a bad request), the error's type otherwise."""
    reason = " ".join(str(exc).split())
    if isinstance(exc, PreconditionFailedError):
        return LOST_RACE
    if is_permission_denied(exc):
        where = _URI.search(reason)
        action = _operation(exc)
        return f"permission denied: {action}{where.group(0) if where else reason}"
    if isinstance(exc, OperatorError):
        return reason
    return f"{type(exc).__name__}: {reason}"


def _operation(exc: BaseException) -> str:
    """``"DeleteObject on "`` for an S3 call's error (or one it was raised from), else ``""``."""
    seen: BaseException | None = exc
    while seen is not None:
        if name := getattr(seen, "operation_name", None):
            return f"{name} on "
        seen = seen.__cause__ or seen.__context__
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (LoaderError, BuildConfigError, ValueError, OSError) as exc:
        print(f"snapshotctl {args.command}: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
