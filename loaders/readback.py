"""Read a snapshot back as a reader will, in a Python without pandas: the builder's last check.

The lookup Lambda ships no pandas, and pyarrow behaves differently when pandas is importable
(nanosecond timestamps only convert to Python objects with it, and some calls import it on first
use). So before a manifest is written, the encoded bytes go to a child Python that cannot import
pandas. It decodes them as :func:`loaders.snapshot.decode_snapshot` does, builds the reader's
:class:`~loaders.index.KeyIndex`, and answers a spread of keys through ``get`` and ``get_many``.
What it reports (the columns as read, the row count, the decoded table's bytes) is what the
manifest says; any failure is a :class:`~loaders.errors.SnapshotInvalidError` naming the column.

Starting Python and importing pyarrow costs most of a second, so one child serves every check of
a builder process, one at a time, over its stdin and stdout. A child that dies or runs past its
deadline is discarded, and the next check starts a fresh one.

By hand, on a local file::

    python -m loaders.readback snapshots/<version>/data.parquet customer_id

No pyarrow at the top of this module: the child must block pandas before pyarrow is imported.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loaders.errors import SnapshotInvalidError
from loaders.manifest import Column

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec

DEFAULT_TIMEOUT_SECONDS = 300.0
# Rows answered through get and get_many: the first, the last and an even spread between.
SAMPLE_ROWS = 101
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_BLOCKED = "pandas"
# What rendering a value can raise; pyarrow's own errors subclass these (ArrowInvalid is a
# ValueError, ArrowNotImplementedError a NotImplementedError, ...).
_LOOKUP_ERRORS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError, NotImplementedError)


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What a reader gets from one snapshot's bytes."""

    columns: tuple[Column, ...]
    row_count: int
    table_bytes: int
    rows_checked: int


class _PandasBlocker:
    """A meta path finder that makes ``import pandas`` fail as it does where pandas is absent.

    ``sys.modules["pandas"] = None`` is not enough: pyarrow's compiled import of pandas takes
    the ``None`` as the module and fails on ``pd.__version__`` instead of carrying on without it.
    """

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name == _BLOCKED or name.startswith(_BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


def block_pandas() -> None:
    """Make pandas unimportable in this process; call it before pyarrow is imported.

    Raises
    ------
    RuntimeError
        If pandas or pyarrow is already imported: too late to see what the Lambda sees.
    """
    if _BLOCKED in sys.modules or "pyarrow" in sys.modules:
        raise RuntimeError("block_pandas must run before pandas and pyarrow are imported")
    if not any(finder is _PandasBlocker for finder in sys.meta_path):
        sys.meta_path.insert(0, _PandasBlocker)


# --- the parent's side --------------------------------------------------------------------


class ReadBackWorker:
    """One child Python without pandas that reads snapshots back, one at a time.

    Parameters
    ----------
    timeout_seconds : float, default 300
        How long one check may take before the child is killed and the check fails.
    """

    def __init__(self, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    def check(self, body: bytes, key_column: str) -> ReadBack:
        """Decode ``body``, index it by ``key_column`` and answer sample keys, as a reader would.

        Raises
        ------
        SnapshotInvalidError
            If the bytes do not decode, do not index, a lookup fails, the check runs past
            ``timeout_seconds``, or the child dies on it twice.
        """
        return self._check(body, key_column, None)

    def check_file(self, path: Path, key_column: str) -> ReadBack:
        """Read a local Parquet file back one row group at a time (see :func:`check_row_groups`).

        Raises
        ------
        SnapshotInvalidError
            As :meth:`check`.
        """
        return self._check(b"", key_column, path)

    def _check(self, body: bytes, key_column: str, path: Path | None) -> ReadBack:
        with self._lock:
            try:
                reply = self._ask(body, key_column, path)
            except _ChildLost:
                # A child can die between checks (killed for memory, say): one fresh try.
                try:
                    reply = self._ask(body, key_column, path)
                except _ChildLost as exc:
                    raise SnapshotInvalidError(
                        f"the read-back process died twice on this snapshot: {exc}"
                    ) from exc
        if "error" in reply:
            raise SnapshotInvalidError(f"read back as a reader would: {reply['error']}")
        if reply["pandas_imported"]:
            # Then the check did not see what the Lambda sees: never publish on its word.
            raise RuntimeError("the read-back process imported pandas")
        return ReadBack(
            columns=tuple(Column(name, kind) for name, kind in reply["columns"]),
            row_count=reply["row_count"],
            table_bytes=reply["table_bytes"],
            rows_checked=reply["rows_checked"],
        )

    @property
    def pid(self) -> int | None:
        """The child's process id while one is running."""
        process = self._process
        return None if process is None or process.poll() is not None else process.pid

    def close(self, *, kill: bool = False) -> None:
        """Stop the child (``kill``: at once, not after its check); the next check starts one."""
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _stop(process, kill=kill)

    def _ask(self, body: bytes, key_column: str, path: Path | None = None) -> dict[str, Any]:
        process, stdin, stdout = self._running()
        request: dict[str, Any] = {"key_column": key_column, "bytes": len(body)}
        if path is not None:
            request["path"] = str(Path(path).resolve())
        header = json.dumps(request).encode() + b"\n"
        try:
            stdin.write(header)
            stdin.write(body)
            stdin.flush()
            ready, _, _ = select.select([stdout], [], [], self.timeout_seconds)
            line = stdout.readline() if ready else None
        except OSError as exc:  # the child died before it read everything (BrokenPipeError)
            self.close(kill=True)
            raise _ChildLost(f"{type(exc).__name__}: {exc}") from exc
        if line is None:
            self.close(kill=True)  # stuck, or slower than we can wait for: either way, gone
            raise SnapshotInvalidError(
                f"read-back did not finish within {self.timeout_seconds:g}s; stopped it"
            )
        if not line:
            self.close(kill=True)
            raise _ChildLost(f"exit code {process.returncode}; its stderr says why")
        return json.loads(line)

    def _running(self) -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
        """The child, started if there is none or it has exited, with its two pipes."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the read-back process has no pipes")
        return process, process.stdin, process.stdout

    def _start(self) -> None:
        self.close(kill=True)
        # cwd puts this package first on the child's path (``-m`` adds the working directory).
        process = subprocess.Popen(
            [sys.executable, "-m", "loaders.readback", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_PACKAGE_ROOT,
        )
        self._process = process
        self._finalizer = weakref.finalize(self, _stop, process)


class _ChildLost(Exception):
    """The child ended without answering."""


def _stop(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    # Closing stdin ends the child's loop after its current check; kill ends it now.
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    if kill:
        process.kill()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


_worker = ReadBackWorker()


def read_back(body: bytes, key_column: str) -> ReadBack:
    """Read ``body`` back as a reader would, in this process's shared child without pandas.

    Raises
    ------
    SnapshotInvalidError
        If a reader could not serve it; the message names the column and type at fault.
    """
    return _worker.check(body, key_column)


def read_back_file(path: Path, key_column: str) -> ReadBack:
    """Read a local data.parquet back row group by row group, as a tiered reader would hold
    it, in this process's shared child without pandas; ``table_bytes`` sums the row groups.

    Raises
    ------
    SnapshotInvalidError
        If a reader could not serve it.
    """
    return _worker.check_file(path, key_column)


# --- the child's side ---------------------------------------------------------------------


def check(body: bytes, key_column: str) -> dict[str, Any]:
    """Do what a reader does with ``body`` and report what it got (runs in the child).

    Raises
    ------
    SnapshotInvalidError
        If the bytes do not decode or index, or a sampled lookup fails or disagrees.
    """
    import pyarrow as pa

    from loaders.index import KeyIndex
    from loaders.snapshot import columns_of, parse_table

    table = parse_table(body, what="read-back")
    index = KeyIndex(table, key_column)
    keys = _sample_keys(table, key_column)
    try:
        _answer(index, keys)
    except _LOOKUP_ERRORS as exc:
        raise _blame(table, key_column, keys, exc) from exc
    report = {
        "columns": [[c.name, c.type] for c in columns_of(table.schema)],
        "row_count": table.num_rows,
        "table_bytes": table.nbytes,
        "rows_checked": len(keys),
        "pandas_imported": _BLOCKED in sys.modules,
    }
    del index, table
    pa.default_memory_pool().release_unused()
    return report


def check_row_groups(path: str, key_column: str) -> dict[str, Any]:
    """:func:`check` for a file too large to hold: one row group decoded at a time.

    Each row group must have the file's columns, and keys must rise from one to the next; the
    sampled rows (:data:`SAMPLE_ROWS` across the file) are answered by an index over the row
    group that holds them.

    Raises
    ------
    SnapshotInvalidError
        If the file does not decode or index, or a sampled lookup fails or disagrees.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loaders.index import KeyIndex
    from loaders.snapshot import columns_of

    try:
        parquet = pq.ParquetFile(path)
        rows = parquet.metadata.num_rows
        columns = columns_of(parquet.schema_arrow)
        wanted = _sample_rows(rows)
        start, table_bytes, checked, last_key = 0, 0, 0, None
        for number in range(parquet.num_row_groups):
            table = parquet.read_row_group(number)
            if columns_of(table.schema) != columns:
                raise SnapshotInvalidError(f"row group {number}: columns differ from the file's")
            table_bytes += table.nbytes
            keys = table.column(key_column)
            if len(keys) and last_key is not None and keys[0].as_py() <= last_key:
                raise SnapshotInvalidError(f"row group {number}: keys do not follow the last one")
            here = wanted[(wanted >= start) & (wanted < start + table.num_rows)] - start
            if len(here):
                picked = keys.take(pa.array(here)).to_pylist()
                index = KeyIndex(table, key_column)
                try:
                    _answer(index, picked)
                except _LOOKUP_ERRORS as exc:
                    raise _blame(table, key_column, picked, exc) from exc
                checked += len(picked)
                del index
            if len(keys):
                last_key = keys[-1].as_py()
            start += table.num_rows
            del table, keys
            pa.default_memory_pool().release_unused()
    except (pa.ArrowException, OSError) as exc:
        raise SnapshotInvalidError(f"read-back: unreadable Parquet: {exc}") from exc
    return {
        "columns": [[c.name, c.type] for c in columns],
        "row_count": start,
        "table_bytes": table_bytes,
        "rows_checked": checked,
        "pandas_imported": _BLOCKED in sys.modules,
    }


def _sample_rows(rows: int) -> Any:
    import numpy as np

    return np.unique(np.linspace(0, rows - 1, num=min(rows, SAMPLE_ROWS)).round().astype(int))


def _sample_keys(table: Any, key_column: str) -> list[str]:
    return table.column(key_column).take(_sample_rows(table.num_rows)).to_pylist()


def _answer(index: Any, keys: list[str]) -> None:
    singles = [index.get(key) for key in keys]
    found, missing = index.get_many(keys)
    if missing or any(row is None for row in singles):
        # Counts only: keys are customer data, and this message reaches the builder's logs.
        lost = max(len(missing), sum(row is None for row in singles))
        raise SnapshotInvalidError(f"{lost} of {len(keys)} stored keys not found by lookup")
    if found != singles:
        raise ValueError("get and get_many answer differently")
    json.dumps(found, allow_nan=False)


def _blame(table: Any, key_column: str, keys: list[str], exc: BaseException) -> Exception:
    """The error of a failed lookup, naming the column(s) whose values could not be answered."""
    from loaders.index import KeyIndex

    culprits = []
    for field in table.schema:
        if field.name == key_column:
            continue
        try:
            _answer(KeyIndex(table.select([key_column, field.name]), key_column), keys)
        except (*_LOOKUP_ERRORS, SnapshotInvalidError) as column_exc:
            culprits.append(f"column {field.name!r} of type {field.type}: {column_exc}")
    if not culprits:
        return SnapshotInvalidError(f"lookups fail: {type(exc).__name__}: {exc}")
    return SnapshotInvalidError("lookups fail", tuple(culprits))


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """Answer checks until stdin closes: a JSON header line, then that many bytes of body."""
    while header := stdin.readline():
        request = json.loads(header)
        body = stdin.read(request["bytes"])
        try:
            if "path" in request:
                reply = check_row_groups(request["path"], request["key_column"])
            else:
                reply = check(body, request["key_column"])
        except SnapshotInvalidError as exc:
            reply = {"error": str(exc)}
        except MemoryError:
            reply = {"error": f"out of memory decoding {len(body):,} bytes"}
        del body
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``--serve`` for the builder's child; ``<file> <key_column>`` to check a file by hand."""
    block_pandas()
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--serve"]:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    if len(args) != 2:
        sys.stderr.write("usage: python -m loaders.readback <data.parquet> <key_column>\n")
        return 2
    path, key_column = args
    try:
        report = check(Path(path).read_bytes(), key_column)
    except SnapshotInvalidError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
