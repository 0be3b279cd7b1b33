"""KeyIndex: exact-key lookups over a snapshot's ``pa.Table``, answered as JSON-ready dicts.

Pure: no boto3, no ``os``, no clock. Keys are kept as one fixed-width numpy byte array, sorted,
so a lookup is a binary search; row values are read straight out of the Arrow buffers through
zero-copy views, so the index adds little memory beyond the table itself. Each column gets a
reader for one row (single lookups) and one for many rows at once (batches).

Every value is rendered from Arrow's buffers or plain Python values, never through pandas: the
Lambda package has none, and pyarrow behaves differently when it is installed (nanosecond
timestamps, for one, only convert to Python objects with pandas).
"""

from __future__ import annotations

import base64
import itertools
import math
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from loaders.errors import SnapshotInvalidError

_EPOCH_DATE = date(1970, 1, 1)
_MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}
# "THH:MM" for every minute of a day and ":SS" for every second: joining two prepared strings
# is ~4x faster than formatting three numbers per timestamp.
_CLOCK_MINUTES = tuple(f"T{m // 60:02d}:{m % 60:02d}" for m in range(1440))
_CLOCK_SECONDS = tuple(f":{s:02d}" for s in range(60))
_INT_CODES = {
    (8, True): "b",
    (16, True): "h",
    (32, True): "i",
    (64, True): "q",
    (8, False): "B",
    (16, False): "H",
    (32, False): "I",
    (64, False): "Q",
}


def to_json_value(value: Any) -> Any:
    """Turn one Arrow-produced Python value into something ``json.dumps`` renders faithfully.

    Timestamps, dates and times become ISO-8601 strings, decimals become strings (no float
    rounding), bytes become base64, and NaN/infinity become ``None``. A Python value does not
    say whether it came from a map, so maps are rendered by :class:`KeyIndex`, which knows the
    column's type (see there); here a list of pairs stays a list of ``[key, value]`` lists.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return str(value)


class KeyIndex:
    """Sorted-key index over one table.

    Values are answered as JSON-ready Python values, without pandas:

    ========================================  ==================================================
    Arrow type                                JSON
    ========================================  ==================================================
    string, large_string, string_view         string
    int8 ... int64, uint8 ... uint64          number (exact, also above 2**53)
    float16, float32, float64                 number; NaN and +/-infinity become null
    bool                                      true/false
    decimal                                   string with the exact digits (``"1234.50"``)
    date32, date64                            ``"2024-02-29"``
    time32, time64                            ``"13:45:00"``, ``"13:45:00.123456"``
    timestamp (any unit), no time zone        ``"2024-02-29T13:45:00.123456"``
    timestamp with a time zone                the same in that zone, with its offset
                                              (``+00:00`` for UTC; IANA names follow DST)
    duration                                  seconds as a number
    binary, large_binary, fixed_size_binary   base64 string
    uuid (``arrow.uuid``)                     ``"550e8400-e29b-41d4-a716-446655440000"``
    list, large_list, fixed_size_list, view   array of rendered values
    struct                                    object of field name to rendered value
    map with string keys                      object (a repeated key: the last value wins)
    map with other keys                       array of ``[key, value]`` pairs, in order
    dictionary                                its value, rendered by the value type
    other extension types                     their storage values (``arrow.json``: the text)
    ========================================  ==================================================

    Nanoseconds are truncated to microseconds (the most ``datetime.isoformat`` shows) and seconds
    and milliseconds are padded to six digits, as ``isoformat`` writes them. A null is ``None`` at
    any depth. Unions, intervals and run-end encoded columns cannot be served: they are rejected
    when the index is built, naming the column.

    Parameters
    ----------
    table : pa.Table
        Rows sorted by ``key_column``, keys unique, non-null strings.
    key_column : str
        The column to look up by.
    padded_keys : pa.Array, optional
        The key column NUL-padded to one width, as ``fixed_size_binary``
        (:func:`padded_keys`), made once elsewhere: for keys of several widths, the index then
        searches these bytes (a shared mapping, say) instead of padding its own copy. Checked
        for length, width, order and a sample of values, not value by value.

    Raises
    ------
    SnapshotInvalidError
        If the key column is missing, not strings, has nulls, or is not strictly increasing; or
        a column has a type that cannot be served, or a date, time or timestamp Python cannot
        represent (such as year 10000), naming the column and its type.

    Examples
    --------
    >>> t = pa.table({"customer_id": ["C1", "C2"], "segment": ["smb", "ent"]})
    >>> KeyIndex(t, "customer_id").get("C2")
    {'customer_id': 'C2', 'segment': 'ent'}
    >>> KeyIndex(t, "customer_id").get("C3") is None
    True
    """

    def __init__(
        self, table: pa.Table, key_column: str, *, padded_keys: pa.Array | None = None
    ) -> None:
        if key_column not in table.column_names:
            raise SnapshotInvalidError(f"key column {key_column!r} is missing")
        try:
            self._build(table, key_column, padded_keys)
        except (pa.ArrowException, ValueError, KeyError, TypeError, OverflowError) as exc:
            # Whatever a table holds, a bad one is a rejected snapshot, never a crash.
            raise SnapshotInvalidError(f"cannot index the snapshot: {exc}") from exc

    def _build(self, table: pa.Table, key_column: str, padded_keys: pa.Array | None) -> None:
        # A no-op for snapshots encode_table writes now (one row group: every column decodes
        # into one chunk). Older ones, in 1M-row row groups, hold a chunk per row group in each
        # dictionary column, and pay for concatenating them here (~0.15 s at 10M rows).
        table = table.combine_chunks()
        self.table = table
        self.key_column = key_column
        keys = _single_chunk(table.column(key_column))
        # Keys of one width are read through one zero-copy view, for the search and the values.
        view = _fixed_width(keys) if pa.types.is_string(keys.type) and not keys.null_count else None
        self._keys = _key_array(keys, view, padded_keys)
        self._width = self._keys.dtype.itemsize
        plan = _plan(table, key_column, key_view=view)
        # For a lookup by key, the key column's value is the probe itself: skip reading it.
        self._key_first = table.column_names[0] == key_column
        self._getters = plan
        self._value_getters = tuple(step for step in plan if step[0] != key_column)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def first_key(self) -> str | None:
        """The smallest key (an example to show), or None for no rows."""
        keys = self.table.column(self.key_column)
        return keys[0].as_py() if len(keys) else None

    @property
    def nbytes(self) -> int:
        """Bytes held: the table's buffers, plus the keys' padded copy where they needed one."""
        return self.table.nbytes + (self._keys.nbytes if self._keys.flags.owndata else 0)

    def position(self, key: str) -> int | None:
        """The row number of ``key``, or ``None`` if it is absent."""
        raw = key.encode()
        # No stored key is longer than the array's width, so a longer probe cannot be present.
        if len(raw) > self._width or not raw:
            return None
        keys = self._keys
        i = int(keys.searchsorted(raw))
        if i < len(keys) and keys[i] == raw:
            return i
        return None

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a JSON-ready dict."""
        return _fill({}, self._getters, i)

    def _row_for(self, key: str, i: int) -> dict[str, Any]:
        if not self._key_first:
            return self.row(i)
        return _fill({self.key_column: key}, self._value_getters, i)

    def get(self, key: str) -> dict[str, Any] | None:
        """The row for ``key`` as a JSON-ready dict, or ``None``."""
        i = self.position(key)
        return None if i is None else self._row_for(key, i)

    def get_many(self, keys: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows found, in request order, and the keys not found.

        The binary searches run as one vectorised ``searchsorted`` over the whole batch.
        """
        if not keys:
            return [], []
        width, stored = self._width, self._keys
        raws = [key.encode() for key in keys]
        # Probes longer than every stored key would be truncated by numpy: they are misses.
        fits = [0 < len(raw) <= width for raw in raws]
        probes = np.array([raw if ok else b"" for raw, ok in zip(raws, fits, strict=True)],
                          dtype=stored.dtype)  # fmt: skip
        where = stored.searchsorted(probes) if len(stored) else np.zeros(len(probes), int)
        hits = (where < len(stored)) & fits
        hits[hits] = stored[where[hits]] == probes[hits]
        hit_list = hits.tolist()
        missing = [key for key, hit in zip(keys, hit_list, strict=True) if not hit]
        found_keys = [key for key, hit in zip(keys, hit_list, strict=True) if hit]
        if not self._key_first:
            rows: list[dict[str, Any]] = [{} for _ in found_keys]
            _fill_many(rows, self._getters, where[hits])
        else:
            rows = [{self.key_column: key} for key in found_keys]
            _fill_many(rows, self._value_getters, where[hits])
        return rows, missing


Getter = Callable[[int], Any]  # row number -> JSON-ready value
Gather = Callable[[np.ndarray], list[Any]]  # row numbers -> JSON-ready values
Step = tuple[str | None, Getter, Gather]  # name None: a group of columns, value is a dict
# Runs of dictionary columns are read as one combined code while the number of value
# combinations stays this small (segment x region x tier = 9 x 21 x 5 with nulls), and at most
# one per this many rows: each combination is a ready-made dict of ~190 bytes, which in a
# 4,096-row block of the tiered mode would outweigh the block's own index arrays (945 of them
# were 177 KB a block, against 201 KB of decoded rows).
MAX_COMBINATIONS = 4096
ROWS_PER_COMBINATION = 16


def _fill(row: dict[str, Any], plan: tuple[Step, ...], i: int) -> dict[str, Any]:
    # A plain loop that fills one dict is the fastest form here (measured against
    # comprehensions and dict(zip(...))); this is the hot path of every lookup.
    for name, get, _ in plan:
        if name is None:  # a group of dictionary columns: one read gives all their values
            row.update(get(i))
        else:
            row[name] = get(i)
    return row


def _fill_many(rows: list[dict[str, Any]], plan: tuple[Step, ...], where: np.ndarray) -> None:
    """Fill many rows column by column: numpy gathers each column's values in one call, so
    the memory reads of a batch overlap instead of waiting on each other."""
    for name, _, gather in plan:
        values = gather(where)
        if name is None:
            for row, value in zip(rows, values, strict=True):
                row.update(value)
        else:
            for row, value in zip(rows, values, strict=True):
                row[name] = value


def _plan(
    table: pa.Table, key_column: str, *, key_view: np.ndarray | None = None
) -> tuple[Step, ...]:
    """How to read each column of a row, in column order, grouping dictionary columns.

    ``key_view`` is the key column's fixed-width view (:func:`_fixed_width`), when it has one.
    """
    plan: list[Step] = []
    run: list[tuple[str, pa.Array]] = []
    limit = min(MAX_COMBINATIONS, table.num_rows // ROWS_PER_COMBINATION)

    def flush() -> None:
        if len(run) > 1:
            plan.append((None, *_dictionary_group(run)))
        else:
            plan.extend((name, *_getter(array)) for name, array in run)
        run.clear()

    for name in table.column_names:
        array = _single_chunk(table.column(name))
        _check_column(name, array)
        if name == key_column or not pa.types.is_dictionary(array.type):
            flush()
            plan.append((name, *_getter(array, key_view if name == key_column else None)))
            continue
        combinations = math.prod(len(a.dictionary) + 1 for _, a in run) * (
            len(array.dictionary) + 1
        )
        if combinations > limit:
            flush()
        run.append((name, array))
    flush()
    return tuple(plan)


def unservable_part(kind: pa.DataType) -> pa.DataType | None:
    """The part of ``kind`` (itself or a nested type) that cannot be served, or ``None``.

    Unions and intervals have no JSON form we could promise to keep (and no Parquet form);
    run-end encoding never comes out of Parquet.
    """
    if pa.types.is_union(kind) or pa.types.is_interval(kind) or pa.types.is_run_end_encoded(kind):
        return kind
    if pa.types.is_dictionary(kind):
        return unservable_part(kind.value_type)
    if isinstance(kind, pa.ExtensionType):
        return unservable_part(kind.storage_type)
    for i in range(kind.num_fields):
        if (part := unservable_part(kind.field(i).type)) is not None:
            return part
    return None


def _check_column(name: str, array: pa.Array) -> None:
    """Reject a column that cannot be served, naming it, before any lookup can meet it."""
    if (part := unservable_part(array.type)) is not None:
        raise SnapshotInvalidError(
            f"column {name!r} of type {array.type} cannot be served: {part} has no JSON form"
        )
    try:
        _check_range(array)
    except (SnapshotInvalidError, ValueError, OverflowError) as exc:
        raise SnapshotInvalidError(
            f"column {name!r} of type {array.type} cannot be served: {exc}"
        ) from exc


def _dictionary_group(run: list[tuple[str, pa.Array]]) -> tuple[Getter, Gather]:
    """One uint16 code per row for several dictionary columns, mapped to ready-made dicts.

    A lookup then touches one small array instead of one index array per column: fewer
    cache misses on a large table.
    """
    names = [name for name, _ in run]
    choices = [[*_json_values(a.dictionary), None] for _, a in run]
    columns = []
    for (_, array), values in zip(run, choices, strict=True):
        indices = array.indices
        if indices.null_count:
            indices = indices.fill_null(len(values) - 1)  # the None at the end of its choices
        columns.append((indices.to_numpy(zero_copy_only=False), np.uint16(len(values))))
    rows = len(run[0][1])
    codes = np.empty(rows, dtype=np.uint16)
    # Horner's rule, first column first: the code of (i0, i1, i2) is (i0 * n1 + i1) * n2 + i2,
    # the position of that combination in itertools.product. Block by block, so each block of
    # codes stays in cache while every column adds to it, and no index array is copied.
    for first in range(0, rows, _BLOCK_ROWS):
        block = codes[first : first + _BLOCK_ROWS]
        block[:] = 0
        for indices, count in columns:
            block *= count
            np.add(block, indices[first : first + _BLOCK_ROWS], out=block, casting="unsafe")
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*choices)]
    view = memoryview(codes).cast("B").cast("H")
    return (lambda i: combos[view[i]]), (lambda where: [combos[c] for c in codes[where].tolist()])


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    """The one chunk of a column of a combined table (an empty table has none)."""
    return column.chunk(0) if column.num_chunks else pa.array([], column.type)


def _key_array(
    keys: pa.Array, view: np.ndarray | None, padded: pa.Array | None = None
) -> np.ndarray:
    """Keys as a fixed-width, NUL-padded numpy byte array, checked to be strictly increasing.

    ``view`` is the keys' :func:`_fixed_width` view, when they all have one width; ``padded``
    the keys already padded (:func:`padded_keys`), when they have several.
    """
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        raise SnapshotInvalidError(f"key column must be strings, not {keys.type}")
    if keys.null_count:
        raise SnapshotInvalidError(f"key column has {keys.null_count} nulls")
    if len(keys) == 0:
        return np.empty(0, dtype="S1")
    # Fixed-width keys (the usual ID format) are Arrow's data buffer as is, zero-copy.
    array, same_width = view, keys
    if array is None and padded is not None:
        array, same_width = _given_padding(keys, padded), padded
    if array is None:
        array, same_width = _padded(keys)
    if not _rises_strictly(same_width):
        raise SnapshotInvalidError("keys are not unique and sorted")
    return array


def _padded(keys: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Keys of several lengths NUL-padded to the longest: as a numpy array (a copy), and the
    same bytes as an Arrow array whose values all have that one width."""
    import pyarrow.compute as pc  # on the first load, not at import (issue 10: cold start)

    width = max(1, int(np.diff(_offsets(keys)).max()))
    if pc.all(pc.string_is_ascii(keys)).as_py():
        # Pad in Arrow, then view the data buffer as fixed-width records: no Python objects.
        padded = pc.utf8_rpad(keys, width, "\x00").cast(pa.large_string())
        return np.frombuffer(padded.buffers()[2], dtype=f"S{width}", count=len(keys)), padded
    array = np.array([k.encode() for k in keys.to_pylist()], dtype=f"S{width}")
    return array, pa.Array.from_buffers(pa.binary(width), len(array), [None, pa.py_buffer(array)])


def padded_keys(keys: pa.Array) -> pa.Array | None:
    """String keys of several widths NUL-padded to the longest, as ``fixed_size_binary``.

    None when they all have one width already (the index then views them as they are).
    Made once and stored beside the table, it spares each process that maps the table its
    own padded copy (``KeyIndex(..., padded_keys=)``).
    """
    if keys.null_count or not len(keys) or _fixed_width(keys) is not None:
        return None
    array, _ = _padded(keys)
    return pa.Array.from_buffers(
        pa.binary(array.dtype.itemsize), len(array), [None, pa.py_buffer(array)]
    )


# Values compared one by one when padded keys come from elsewhere: enough to catch keys of
# another table or shifted by a row, at a cost that does not grow with the table.
_PADDING_SAMPLES = 1024


def _given_padding(keys: pa.Array, padded: pa.Array) -> np.ndarray:
    """A numpy view of ``padded``, checked against ``keys`` in shape and by a sample."""
    kind = padded.type
    if not pa.types.is_fixed_size_binary(kind) or len(padded) != len(keys) or padded.null_count:
        raise SnapshotInvalidError(
            f"padded keys must be {len(keys)} non-null fixed_size_binary values, "
            f"got {len(padded)} of {kind}"
        )
    width = kind.byte_width
    if int(np.diff(_offsets(keys)).max()) > width:
        raise SnapshotInvalidError(f"padded keys of width {width} are narrower than the keys")
    array = np.frombuffer(
        padded.buffers()[1], dtype=f"S{width}", count=len(padded), offset=padded.offset * width
    )
    for i in np.linspace(0, len(keys) - 1, min(_PADDING_SAMPLES, len(keys)), dtype=np.int64):
        if array[i] != keys[int(i)].as_py().encode():
            raise SnapshotInvalidError(f"padded keys differ from the keys at row {int(i)}")
    return array


def _rises_strictly(values: pa.Array) -> bool:
    """Whether values that all have one width rise strictly, byte by byte.

    For values of one width that is numpy's order too (the one ``searchsorted`` relies on).
    Arrow compares them about 5x faster than numpy compares byte strings, and without copying.
    """
    import pyarrow.compute as pc

    if len(values) < 2:
        return True
    following = pc.less(values.slice(0, len(values) - 1), values.slice(1))
    return bool(pc.all(following).as_py())


# Rows per step when numpy scans a whole column: the temporaries stay in cache, and a column
# of millions of rows is never copied whole.
_BLOCK_ROWS = 1 << 16


def _offsets(array: pa.Array) -> np.ndarray:
    """A zero-copy view of a string array's ``n + 1`` offsets, moved to its slice."""
    dtype = np.dtype(np.int64 if pa.types.is_large_string(array.type) else np.int32)
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array) + 1, offset=array.offset * dtype.itemsize
    )


def _fixed_width(array: pa.Array) -> np.ndarray | None:
    """A zero-copy fixed-width numpy view of a string array whose values all have one length.

    ``array`` has no nulls. Lengths are checked from the offsets block by block, so a column of
    varying lengths is usually turned down after its first block.
    """
    if len(array) == 0:
        return None
    offsets = _offsets(array)
    width = int(offsets[1] - offsets[0])
    if not width:
        return None
    for first in range(0, len(array), _BLOCK_ROWS):
        if not (np.diff(offsets[first : first + _BLOCK_ROWS + 1]) == width).all():
            return None
    begin = int(offsets[0])
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8, count=len(array) * width, offset=begin)
    if np.count_nonzero(data[width - 1 :: width]) < len(array):
        return None  # a value ends in NUL, which numpy would drop: not exact
    return data.view(f"S{width}")


def _with_nulls(array: pa.Array, get: Callable[[int], Any]) -> Callable[[int], Any]:
    if array.null_count == 0:
        return get
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return lambda i: get(i) if valid[i] else None


def _each(get: Callable[[int], Any]) -> Gather:
    return lambda where: [get(i) for i in where.tolist()]


def _getter(array: pa.Array, fixed: np.ndarray | None = None) -> tuple[Getter, Gather]:
    """How to read ``array`` as JSON-ready values: one row at a time, and many at once.

    ``fixed`` is the array's :func:`_fixed_width` view, if the caller has made it already.
    """
    kind = array.type
    if fixed is None and pa.types.is_string(kind) and not array.null_count:
        fixed = _fixed_width(array)
    if fixed is not None:
        # Same-length strings (IDs, codes): a numpy view reads them ~2x faster than slicing.
        return (lambda i: fixed[i].decode()), (
            lambda where: [b.decode() for b in fixed[where].tolist()]
        )
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind):
        return _ticks(array)
    if _is_nested(kind):
        # Rare and slower: each lookup renders a one-row slice, each batch one taken array.
        return (lambda i: _json_values(array.slice(i, 1))[0]), (
            lambda where: _json_values(array.take(where))
        )
    get = _row_getter(array)
    if array.null_count:
        return get, _each(get)
    if pa.types.is_integer(kind):
        values = array.to_numpy(zero_copy_only=False)
        return get, lambda where: values[where].tolist()
    return get, _each(get)


def _row_getter(array: pa.Array) -> Getter:
    """A function from row number to the JSON-ready value of ``array`` at that row."""
    kind = array.type
    offset = array.offset
    if pa.types.is_dictionary(kind):
        values = _json_values(array.dictionary)
        indices = _view(array.indices)
        return _with_nulls(array, lambda i: values[indices[i]])
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        offsets = memoryview(array.buffers()[1]).cast(
            "q" if pa.types.is_large_string(kind) else "i"
        )
        data = memoryview(array.buffers()[2] or b"")
        return _with_nulls(
            array,
            lambda i: str(data[offsets[offset + i] : offsets[offset + i + 1]], "utf-8"),
        )
    if pa.types.is_boolean(kind):
        bits = array.fill_null(False).to_numpy(zero_copy_only=False).tolist()
        return _with_nulls(array, bits.__getitem__)
    if pa.types.is_integer(kind):
        return _with_nulls(array, _view(array).__getitem__)
    if pa.types.is_floating(kind):
        floats = _view(array)
        return _with_nulls(array, lambda i: to_json_value(floats[i]))
    if pa.types.is_date32(kind):
        days = _view(array.view(pa.int32()))
        return _with_nulls(array, lambda i: (_EPOCH_DATE + timedelta(days=days[i])).isoformat())
    # Anything rarer (decimals, binaries, dates in milliseconds, ...) goes through the generic
    # renderer, one slot at a time.
    return lambda i: _json_values(array.slice(i, 1))[0]


def _view(array: pa.Array) -> Sequence[Any]:
    """Values of an integer or float array as a zero-copy sequence of Python numbers.

    Slots under nulls hold arbitrary values; callers guard them with :func:`_with_nulls`.
    """
    kind = array.type
    if pa.types.is_integer(kind):
        code = _INT_CODES[(kind.bit_width, pa.types.is_signed_integer(kind))]
    elif kind in (pa.float32(), pa.float64()):
        code = "f" if kind == pa.float32() else "d"
    else:
        array, code = array.cast(pa.float64()), "d"
    values = memoryview(array.buffers()[1]).cast(code)
    return values[array.offset : array.offset + len(array)]


def _zone(name: str) -> tzinfo:
    """The tzinfo Arrow means by a timestamp's ``tz``: a fixed offset or an IANA name."""
    if name in ("UTC", "Z", "+00:00", "-00:00"):
        return UTC
    if match := re.fullmatch(r"([+-])(\d\d):?(\d\d)", name):
        sign = -1 if match[1] == "-" else 1
        return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # named zones only: ~3 ms at import

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SnapshotInvalidError(f"unknown time zone {name!r}") from exc


def _ticks(array: pa.Array) -> tuple[Getter, Gather]:
    """Readers of a timestamp or time column as ISO-8601 text, as ``isoformat`` writes it.

    The raw integer ticks are read and rendered by hand: converting them through Arrow's
    ``as_py`` needs pandas for nanoseconds. :func:`_check_range` has already rendered the
    smallest and largest value, so a lookup cannot meet one Python cannot represent.
    """
    render = _renderer(array.type)
    as_int = _tick_type(array.type)
    ticks = _view(array.view(as_int))
    get = _with_nulls(array, lambda i: render(ticks[i]))
    if array.null_count:
        return get, _each(get)
    all_ticks = array.view(as_int).to_numpy()
    return get, lambda where: [render(t) for t in all_ticks[where].tolist()]


def _is_ticks(kind: pa.DataType) -> bool:
    """Whether ``kind`` stores integer ticks we render by hand (and range-check at load)."""
    return (
        pa.types.is_timestamp(kind)
        or pa.types.is_date(kind)
        or pa.types.is_time(kind)
        or pa.types.is_duration(kind)
    )


def _tick_type(kind: pa.DataType) -> pa.DataType:
    return pa.int32() if kind.bit_width == 32 else pa.int64()


def _renderer(kind: pa.DataType) -> Callable[[int], Any]:
    """The JSON-ready value of one raw tick of a date, time, timestamp or duration type."""
    if pa.types.is_timestamp(kind):
        return _timestamp_renderer(kind)
    if pa.types.is_date32(kind):
        return lambda day: (_EPOCH_DATE + timedelta(days=day)).isoformat()
    if pa.types.is_date64(kind):
        return lambda ms: (_EPOCH_DATE + timedelta(days=ms // 86_400_000)).isoformat()
    per_unit = _MICROS_PER_UNIT[kind.unit]
    if pa.types.is_duration(kind):
        return lambda tick: timedelta(
            microseconds=tick * per_unit if per_unit else tick // 1000
        ).total_seconds()
    return _time_renderer(kind.unit)


def _time_renderer(unit: str) -> Callable[[int], str]:
    """ISO text of one time-of-day tick, as ``time.isoformat`` writes it (nanoseconds cut)."""
    per_unit = _MICROS_PER_UNIT[unit]

    def render(tick: int) -> str:
        micros = tick * per_unit if per_unit else tick // 1000
        if not 0 <= micros < 86_400_000_000:
            raise ValueError(f"time of day {tick} ({unit}) is outside 00:00-24:00")
        seconds, fraction = divmod(micros, 1_000_000)
        text = _CLOCK_MINUTES[seconds // 60][1:] + _CLOCK_SECONDS[seconds % 60]
        return f"{text}.{fraction:06d}" if fraction else text

    return render


def _check_range(array: pa.Array) -> None:
    """Render the smallest and largest tick of every date, time and timestamp in ``array``.

    A value Python cannot represent (year 10000, a time of day past midnight) then fails when
    the index is built, not in a lookup.
    """
    kind = array.type
    if _is_ticks(kind):
        import pyarrow.compute as pc

        extremes = pc.min_max(array.view(_tick_type(kind))).as_py()
        render = _renderer(kind)
        for tick in (extremes["min"], extremes["max"]):
            if tick is not None:
                render(tick)
        return
    for child in _children(array):
        _check_range(child)


def _children(array: pa.Array) -> list[pa.Array]:
    """The arrays nested in ``array`` (values of its valid slots where it has slots)."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return [array.dictionary]
    if isinstance(kind, pa.ExtensionType):
        return [array.storage]
    if pa.types.is_struct(kind):
        return list(array.flatten())
    if is_list_like(kind):
        child, _, _ = _slots(array)
        return [child]
    return []


def is_list_like(kind: pa.DataType) -> bool:
    """Whether ``kind`` holds a list of values per slot (lists of every kind, and maps)."""
    return (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_list_view(kind)
        or pa.types.is_large_list_view(kind)
        or pa.types.is_map(kind)
    )


def _is_nested(kind: pa.DataType) -> bool:
    return is_list_like(kind) or pa.types.is_struct(kind) or isinstance(kind, pa.ExtensionType)


def list_bounds(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Where each slot of a list-like array starts and ends in ``array.values``."""
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
        starts = (np.arange(len(array)) + array.offset) * size
        return starts, starts + size
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        starts = array.offsets.to_numpy(zero_copy_only=False)
        return starts, starts + array.sizes.to_numpy(zero_copy_only=False)
    # list, large_list and map: n + 1 offsets, already moved to the slice
    offsets = array.offsets.to_numpy(zero_copy_only=False)
    return offsets[:-1], offsets[1:]


def _slots(array: pa.Array) -> tuple[pa.Array, list[int], list[int]]:
    """A list-like array's child values, and where each slot starts and ends in them.

    The child is cut to the span of the valid slots, and the bounds are relative to that cut,
    so the values behind a slice or a null slot are never rendered.
    """
    starts, ends = list_bounds(array)
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        starts, ends = np.where(valid, starts, 0), np.where(valid, ends, 0)
    spans = ends > starts
    if not spans.any():
        return array.values.slice(0, 0), [0] * len(array), [0] * len(array)
    low, high = int(starts[spans].min()), int(ends[spans].max())
    starts, ends = np.where(spans, starts - low, 0), np.where(spans, ends - low, 0)
    return array.values.slice(low, high - low), starts.tolist(), ends.tolist()


def _json_values(array: pa.Array) -> list[Any]:
    """The JSON-ready value of every slot of ``array``, of any servable type, at any depth.

    Column at a time: each child array is rendered once, then cut back into its slots.
    """
    kind = array.type
    if pa.types.is_dictionary(kind):
        values = _json_values(array.dictionary)
        return [None if j is None else values[j] for j in array.indices.to_pylist()]
    if isinstance(kind, pa.ExtensionType):
        if kind.extension_name == "arrow.uuid":
            return [
                None if b is None else str(uuid.UUID(bytes=b)) for b in array.storage.to_pylist()
            ]
        return _json_values(array.storage)
    if _is_ticks(kind):
        render = _renderer(kind)
        return [None if t is None else render(t) for t in array.view(_tick_type(kind)).to_pylist()]
    if pa.types.is_struct(kind):
        return _struct_values(array)
    if is_list_like(kind):
        return _list_values(array)
    if pa.types.is_floating(kind) and kind.bit_width == 16:
        array = array.cast(pa.float64())
    return [to_json_value(v) for v in array.to_pylist()]


def _struct_values(array: pa.Array) -> list[Any]:
    kind = array.type
    names = [kind.field(i).name for i in range(kind.num_fields)]
    fields = [_json_values(child) for child in array.flatten()]
    rows = list(zip(*fields, strict=True)) if fields else [()] * len(array)
    valid = array.is_valid().to_pylist()
    return [
        dict(zip(names, row, strict=True)) if ok else None
        for ok, row in zip(valid, rows, strict=True)
    ]


def _list_values(array: pa.Array) -> list[Any]:
    child, starts, ends = _slots(array)
    valid = array.is_valid().to_pylist()
    if not pa.types.is_map(array.type):
        values = _json_values(child)
        return [
            values[start:end] if ok else None
            for ok, start, end in zip(valid, starts, ends, strict=True)
        ]
    keys, items = (_json_values(part) for part in child.flatten())
    key_type = array.type.key_type
    if pa.types.is_dictionary(key_type):
        key_type = key_type.value_type
    if _is_text(key_type):
        # JSON objects have string keys: a map keyed by text is the object a reader expects.
        return [
            dict(zip(keys[start:end], items[start:end], strict=True)) if ok else None
            for ok, start, end in zip(valid, starts, ends, strict=True)
        ]
    return [
        [[k, v] for k, v in zip(keys[start:end], items[start:end], strict=True)] if ok else None
        for ok, start, end in zip(valid, starts, ends, strict=True)
    ]


def _is_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def _timestamp_renderer(kind: pa.TimestampType) -> Callable[[int], str]:
    """ISO text of one raw tick value (microseconds kept, nanoseconds truncated).

    UTC and naive timestamps cache the date part per day and join the time from two prepared
    strings: about four times faster than building a ``datetime``.
    """
    per_unit = _MICROS_PER_UNIT[kind.unit]
    zone = None if kind.tz is None else _zone(kind.tz)

    if zone is not None and zone is not UTC:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)

        def render_zoned(tick: int) -> str:
            micros = tick * per_unit if per_unit else tick // 1000
            return (epoch + timedelta(microseconds=micros)).astimezone(zone).isoformat()

        return render_zoned
    suffix = "" if zone is None else "+00:00"
    days: dict[int, str] = {}

    def render(tick: int) -> str:
        micros = tick * per_unit if per_unit else tick // 1000
        seconds, fraction = divmod(micros, 1_000_000)
        day, second = divmod(seconds, 86_400)
        date_text = days.get(day)
        if date_text is None:
            date_text = days[day] = (_EPOCH_DATE + timedelta(days=day)).isoformat()
        minute, sec = divmod(second, 60)
        text = date_text + _CLOCK_MINUTES[minute] + _CLOCK_SECONDS[sec]
        return f"{text}.{fraction:06d}{suffix}" if fraction else text + suffix

    return render
