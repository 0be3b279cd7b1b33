"""Checks a built table must pass before it is published, and the change report beside it.

After Hollow's validators: each check looks at the new table (and the previous manifest) and
returns problems; any problem blocks the publish and leaves the pointer where it was. Each
problem line gives a count and up to 20 example keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loaders.errors import SnapshotInvalidError
from loaders.index import is_list_like, list_bounds
from loaders.manifest import Column
from loaders.snapshot import MAX_EXAMPLES, check_keys, examples_text, sort_by_key, value_type

if TYPE_CHECKING:
    from loaders.manifest import Manifest

KEY_FORMAT = r"^[A-Za-z0-9_-]{1,64}$"
DEFAULT_MAX_ROW_CHANGE = 0.10


@dataclass(frozen=True, slots=True)
class Rules:
    """What a build must satisfy.

    Attributes
    ----------
    key_column : str
    contract : tuple of Column, optional
        Expected columns and types; when empty, the previous snapshot's columns are the contract.
    min_rows : int, default 1
    max_row_change : float, default 0.10
        Largest allowed relative change of the row count against the previous version.
    allow_row_change : bool, default False
        Operator override for a deliberate large change.
    key_format : str
        Regular expression every key must match (the lookup API's key rule).
    """

    key_column: str
    contract: tuple[Column, ...] = ()
    min_rows: int = 1
    max_row_change: float = DEFAULT_MAX_ROW_CHANGE
    allow_row_change: bool = False
    key_format: str = KEY_FORMAT


@dataclass(frozen=True, slots=True)
class Changes:
    """Rows added, removed and changed against the previous version."""

    previous_version: str | None
    added: int
    removed: int
    changed: int
    examples: dict[str, list[str]] = field(default_factory=dict)
    retyped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "previous_version": self.previous_version,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "type_changed": self.retyped,
            "examples": self.examples,
        }


def parse_contract(text: str) -> tuple[Column, ...]:
    """Parse ``"name:type,name:type"`` (types as Arrow prints them) into a contract.

    >>> parse_contract("customer_id:string, updated_at:timestamp[us, tz=UTC]")[1]
    Column(name='updated_at', type='timestamp[us, tz=UTC]')
    """
    columns = []
    # Split on commas that start a new "name:" so types like timestamp[us, tz=UTC] stay whole.
    for part in re.split(r",\s*(?=[A-Za-z_][A-Za-z0-9_]*\s*:)", text.strip()):
        name, sep, kind = part.partition(":")
        if not sep or not name.strip() or not kind.strip():
            raise ValueError(f"expected name:type, got {part!r}")
        columns.append(Column(name.strip(), kind.strip()))
    return tuple(columns)


def conform(table: pa.Table, contract: Sequence[Column]) -> tuple[pa.Table, list[str]]:
    """Cast ``table`` to the contract's types where that is lossless; report what is not.

    Engines spell types differently (Athena UNLOAD gives ``timestamp[ns]`` where DuckDB gives
    ``timestamp[us, tz=UTC]``), so a safe cast is not a schema change; a failed one is.
    """

    def cast(name: str, target: pa.DataType) -> None:
        nonlocal table
        converted = pc.cast(table.column(name), target, safe=True)
        table = table.set_column(table.column_names.index(name), name, converted)

    _, problems = conform_types(table.schema, contract, cast)
    if contract and not problems:
        table = table.select([c.name for c in contract])
    return table, problems


def conform_types(
    schema: pa.Schema, contract: Sequence[Column], cast: Callable[[str, pa.DataType], None]
) -> tuple[pa.Schema, list[str]]:
    """The contract's rules over a schema, with the values' check left to ``cast``.

    ``cast(name, target)`` must raise (an Arrow error) when a column's values do not cast
    safely: :func:`conform` casts the column it holds; the out-of-core build scans its files.

    Returns
    -------
    (pa.Schema, list of str)
        The schema with every column that casts given its contract type (in the contract's
        order when there are no problems), and the problems.
    """
    problems: list[str] = []
    if not contract:  # the first build of a root with no configured contract
        return schema, problems
    names = set(schema.names)
    expected = {c.name for c in contract}
    if missing := [c.name for c in contract if c.name not in names]:
        problems.append(f"missing columns: {', '.join(missing)}")
    if extra := [n for n in schema.names if n not in expected]:
        problems.append(f"unexpected columns: {', '.join(extra)}")
    for column in contract:
        if column.name not in names:
            continue
        current = schema.field(column.name).type
        if str(value_type(current)) == column.type:
            continue
        try:
            target = _parse_type(column.type)
            if not _same_family(value_type(current), target):
                raise TypeError("different kind")
            cast(column.name, target)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            problems.append(
                f"column {column.name}: type {value_type(current)}, expected {column.type}"
                f" ({type(exc).__name__})"
            )
            continue
        index = schema.get_field_index(column.name)
        schema = schema.set(index, schema.field(index).with_type(target))
    if not problems:
        schema = pa.schema([schema.field(c.name) for c in contract], metadata=schema.metadata)
    return schema, problems


_FAMILIES = (
    pa.types.is_timestamp,
    lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
)


def _same_family(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether a cast only re-spells a type (unit, zone, width), rather than changing its kind."""
    return any(family(source) and family(target) for family in _FAMILIES)


def _parse_type(text: str) -> pa.DataType:
    simple = {
        "string": pa.string(), "large_string": pa.large_string(), "bool": pa.bool_(),
        "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
        "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(),
        "uint64": pa.uint64(), "float": pa.float32(), "double": pa.float64(),
        "date32[day]": pa.date32(), "binary": pa.binary(),
    }  # fmt: skip
    if text in simple:
        return simple[text]
    if match := re.fullmatch(r"timestamp\[(s|ms|us|ns)(?:, tz=([^\]]+))?\]", text):
        return pa.timestamp(match[1], tz=match[2])
    if match := re.fullmatch(r"decimal128\((\d+), (\d+)\)", text):
        return pa.decimal128(int(match[1]), int(match[2]))
    raise ValueError(f"unsupported contract type {text!r}")


def check_key_format(table: pa.Table, rules: Rules) -> list[str]:
    keys = table.column(rules.key_column).drop_null()
    if not pa.types.is_string(value_type(keys.type)):
        return []  # check_keys already reports a key column that is not strings
    bad = pc.invert(pc.match_substring_regex(keys, rules.key_format))
    count = pc.sum(bad).as_py() or 0
    examples = pc.filter(keys, bad).slice(0, MAX_EXAMPLES).to_pylist() if count else []
    return key_format_problems(count, rules.key_format, examples)


def key_format_problems(count: int, key_format: str, examples: Sequence[object]) -> list[str]:
    """The problem line of ``count`` keys outside ``key_format`` (examples in key order)."""
    if not count:
        return []
    return [f"{count} keys outside {key_format}, e.g. {examples_text(examples)}"]


def check_row_count(table: pa.Table, rules: Rules, previous: Manifest | None) -> list[str]:
    return row_count_problems(table.num_rows, rules, previous)


def row_count_problems(rows: int, rules: Rules, previous: Manifest | None) -> list[str]:
    """The row-count rules: at least ``min_rows``, and a bounded move against ``previous``."""
    problems = []
    if rows < rules.min_rows:
        problems.append(f"{rows} rows, fewer than MIN_ROWS={rules.min_rows}")
    if previous is not None and previous.row_count and not rules.allow_row_change:
        change = abs(rows - previous.row_count) / previous.row_count
        if change > rules.max_row_change:
            problems.append(
                f"row count moved {change:.1%} ({previous.row_count} -> {rows}) against "
                f"{previous.version}, more than MAX_ROW_CHANGE={rules.max_row_change:.0%}; "
                "pass the row-change override if this is intended"
            )
    return problems


def validate(table: pa.Table, rules: Rules, previous: Manifest | None) -> pa.Table:
    """Run every check; return the table conformed to the contract.

    Raises
    ------
    SnapshotInvalidError
        Listing every problem, with counts and example keys.
    """
    contract = rules.contract or (previous.columns if previous is not None else ())
    table, problems = conform(table, contract)
    if rules.key_column in table.column_names:
        # Snapshots are sorted by key; sorting here also lets the key checks run in one pass.
        table = sort_by_key(table, rules.key_column)
    if rules.key_column not in table.column_names:
        problems.append(f"key column {rules.key_column!r} is missing")
    else:
        problems.extend(_key_problems(table, rules.key_column))
        problems.extend(check_key_format(table, rules))
    problems.extend(check_row_count(table, rules, previous))
    if problems:
        raise SnapshotInvalidError("build rejected", tuple(problems))
    return table


def _key_problems(table: pa.Table, key_column: str) -> list[str]:
    try:
        check_keys(table, key_column)
    except SnapshotInvalidError as exc:
        return list(exc.problems) or [str(exc)]
    return []


def diff(new: pa.Table, old: pa.Table | None, *, key_column: str, previous_version: str | None
         ) -> Changes:  # fmt: skip
    """Count keys added, removed, and present in both with any other value changed.

    Every column type is compared, nested ones included: lists element by element, maps entry
    by entry in their order, structs field by field. A null equals only a null, and NaN equals
    NaN (both render as null).
    """
    if old is None:
        return Changes(previous_version, new.num_rows, 0, 0)
    new_keys, old_keys = new.column(key_column), old.column(key_column)
    added = pc.filter(new_keys, pc.invert(pc.is_in(new_keys, value_set=old_keys)))
    removed = pc.filter(old_keys, pc.invert(pc.is_in(old_keys, value_set=new_keys)))
    # Pair rows by key through positions: Arrow's join cannot carry list, map or struct columns.
    old_rows = pc.index_in(new_keys, value_set=old_keys)
    new_rows = pc.indices_nonzero(old_rows.is_valid())
    old_rows = old_rows.drop_null()
    shared = [n for n in new.column_names if n != key_column and n in old.column_names]
    changed_mask = np.zeros(len(new_rows), dtype=bool)
    retyped = []
    for name in shared:
        left = new.column(name).take(new_rows).combine_chunks()
        right = old.column(name).take(old_rows).combine_chunks()
        if value_type(left.type) != value_type(right.type):
            # A deliberate contract change: values of two types don't compare, so every row
            # counts as changed and the report names the column.
            retyped.append(name)
            changed_mask[:] = True
            continue
        changed_mask |= _differs(left, right)
    changed = new_keys.take(new_rows).filter(pa.array(changed_mask))
    return Changes(
        previous_version,
        len(added),
        len(removed),
        len(changed),
        {
            "added": added.slice(0, MAX_EXAMPLES).to_pylist(),
            "removed": removed.slice(0, MAX_EXAMPLES).to_pylist(),
            "changed": changed.slice(0, MAX_EXAMPLES).to_pylist(),
        },
        retyped,
    )


def _differs(left: pa.Array, right: pa.Array) -> np.ndarray:
    """Per row of two aligned arrays of one type, whether their values differ."""
    left, right = _plain(left), _plain(right)
    left_null = left.is_null().to_numpy(zero_copy_only=False)
    right_null = right.is_null().to_numpy(zero_copy_only=False)
    both = ~left_null & ~right_null
    differs = left_null != right_null
    if not both.any():
        return differs
    kind = left.type
    if pa.types.is_struct(kind):
        for left_field, right_field in zip(left.flatten(), right.flatten(), strict=True):
            differs |= both & _differs(left_field, right_field)
    elif is_list_like(kind):
        differs |= _lists_differ(left, right, both)
    else:
        differs |= both & _values_differ(left, right)
    return differs


def _plain(array: pa.Array) -> pa.Array:
    """``array`` without dictionary or extension wrapping, and half floats widened."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return _plain(array.dictionary_decode())
    if isinstance(kind, pa.ExtensionType):
        return _plain(array.storage)
    if pa.types.is_float16(kind):
        return array.cast(pa.float32())
    return array


def _bounds(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Where each slot of a list-like array starts in ``array.values``, and its length."""
    starts, ends = list_bounds(array)
    return starts, ends - starts


def _lists_differ(left: pa.Array, right: pa.Array, both: np.ndarray) -> np.ndarray:
    """Rows of two list-like arrays that differ in length or in any element (maps: entry)."""
    left_starts, left_lengths = _bounds(left)
    right_starts, right_lengths = _bounds(right)
    differs = both & (left_lengths != right_lengths)
    rows = np.flatnonzero(both & (left_lengths == right_lengths) & (left_lengths > 0))
    if not len(rows):
        return differs
    # One flat index per element of the compared rows, into each side's values.
    lengths = left_lengths[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    step = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    left_values = left.values.take(pa.array(np.repeat(left_starts[rows], lengths) + step))
    right_values = right.values.take(pa.array(np.repeat(right_starts[rows], lengths) + step))
    element_differs = _differs(left_values, right_values)
    differs[rows] |= np.bincount(owner, weights=element_differs, minlength=len(rows)) > 0
    return differs


def _values_differ(left: pa.Array, right: pa.Array) -> np.ndarray:
    """Elementwise inequality of two flat arrays; slots where either is null are arbitrary."""
    if pa.types.is_null(left.type):
        return np.zeros(len(left), dtype=bool)
    try:
        differs = pc.not_equal(left, right)
    except pa.ArrowNotImplementedError:
        # No kernel for this type (intervals, unions): compare Python values instead.
        pairs = zip(left.to_pylist(), right.to_pylist(), strict=True)
        return np.array([a != b for a, b in pairs], dtype=bool)
    if pa.types.is_floating(left.type):
        differs = pc.and_(differs, pc.invert(pc.and_(pc.is_nan(left), pc.is_nan(right))))
    return differs.fill_null(False).to_numpy(zero_copy_only=False)
