"""The fault catalogue: bad versions and pointers planted in moto, and storage faults on the wire.

Each bad version is published and announced the way a broken builder or a bit flip would leave
it; each storage fault is injected on the cache's client (botocore ``before-send``) or in the
proxy. The class tests, the cold fallback tests and the no-500 sweep all draw from here.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

from loaders.blocks import write_blocks
from loaders.manifest import BLOCK_INDEX_NAME, BLOCKS_NAME
from tests.conftest import SERVE_MODES, customers
from tests.faults.conftest import (
    MEMORY_BUDGET_MB,
    V2_IDS,
    Mode,
    edit_manifest,
    error_response,
    manifest_key,
    nested,
    raises,
)
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.faults.conftest import FaultProxy, Lookup, Versions

# --- bad versions: the snapshot itself is wrong (permanent) ----------------------------------


@dataclass(frozen=True, slots=True)
class BadVersion:
    """A way to publish a version that readers must reject."""

    name: str
    plant: Callable[[Versions], str]  # publishes and announces it; returns the version
    # Bad only for a reader that holds the whole table: a tiered one serves it (issue 11).
    memory_only: bool = False

    def __str__(self) -> str:
        return self.name

    def is_bad_in(self, serve_mode: str) -> bool:
        """Whether a reader in ``serve_mode`` must reject it (a tiered one serves memory_only)."""
        return serve_mode == "memory" or not self.memory_only


def bad_in_each_mode(cases: list[BadVersion]) -> Any:
    """``parametrize`` over (bad version, serving mode) where a reader in that mode rejects it:
    the cases a mode serves by design are not collected there (see the tiered test of them)."""
    return pytest.mark.parametrize(
        ("bad", "serve_mode"),
        [
            pytest.param(bad, mode, id=f"{bad}-{mode}")
            for bad in cases
            for mode in SERVE_MODES
            if bad.is_bad_in(mode)
        ],
        indirect=["serve_mode"],
    )


def _with_data(versions: Versions, change: Callable[[bytes], bytes]) -> str:
    """``change`` applied to what a load reads in the test's mode (data, or block index)."""
    version = versions.publish(V2_IDS, segment="enterprise")
    store, key = versions.publisher, versions.loaded_key(version)
    raw_write(store, key, change(raw_read(store, key)))
    return version


def _with_manifest(versions: Versions, **fields: Any) -> str:
    version = versions.publish(V2_IDS, segment="enterprise")
    edit_manifest(versions.publisher, version, lambda doc: doc.update(fields))
    return version


def _with_manifest_body(versions: Versions, body: bytes) -> str:
    version = versions.publish(V2_IDS, segment="enterprise")
    raw_write(versions.publisher, f"snapshots/{version}/manifest.json", body)
    return version


def _with_consistent_data(versions: Versions, body: bytes, rows: int | None = None) -> str:
    """Data replaced by ``body`` with a manifest that vouches for it (size and sha256 match);
    in tiered mode, the block index."""
    version = versions.publish(V2_IDS, segment="enterprise")
    raw_write(versions.publisher, versions.loaded_key(version), body)
    digest = hashlib.sha256(body).hexdigest()
    fields: dict[str, Any] = {"bytes": len(body), "sha256": digest}
    if versions.serve_mode != "memory":
        fields = {"blocks": {**_blocks_of(versions, version), "index_bytes": len(body)}}
        fields["blocks"]["index_sha256"] = digest
    if rows is not None:
        fields["row_count"] = rows
    edit_manifest(versions.publisher, version, lambda doc: doc.update(fields))
    return version


def _blocks_of(versions: Versions, version: str) -> dict[str, Any]:
    return dict(json.loads(raw_read(versions.publisher, manifest_key(version)))["blocks"])


def _with_consistent_rows(versions: Versions, table: pa.Table) -> str:
    """Rows replaced by ``table``'s, as they are, with a manifest that vouches for them."""
    if versions.serve_mode == "memory":
        return _with_consistent_data(versions, _parquet(table), table.num_rows)
    version = versions.publish(V2_IDS, segment="enterprise")
    sink = io.BytesIO()
    blocks, index = write_blocks(table, "customer_id", sink)
    raw_write(versions.publisher, f"snapshots/{version}/{BLOCKS_NAME}", sink.getvalue())
    raw_write(versions.publisher, f"snapshots/{version}/{BLOCK_INDEX_NAME}", index)
    fields = {"blocks": blocks.to_dict(), "row_count": table.num_rows}
    edit_manifest(versions.publisher, version, lambda doc: doc.update(fields))
    return version


def _unsorted() -> pa.Table:
    table = customers(["C000000001", "C000000004", "C000000007"])
    return table.take(pa.array([2, 0, 1]))  # keys out of order: no builder does that


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _no_rows(versions: Versions) -> str:
    return _with_consistent_data(versions, _parquet(customers(V2_IDS).slice(0, 0)), rows=0)


def _in_the_future(versions: Versions) -> str:
    hours_ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
    return versions.publish(V2_IDS, at=hours_ahead)


def _drop_last_column(doc: dict[str, Any]) -> None:
    doc["columns"] = doc["columns"][:-1]


def _schema_differs(versions: Versions) -> str:
    version = versions.publish(V2_IDS, segment="enterprise")
    edit_manifest(versions.publisher, version, _drop_last_column)
    return version


BAD_VERSIONS = (
    BadVersion("flipped byte in data", lambda v: _with_data(v, flip_bytes)),
    BadVersion("truncated data", lambda v: _with_data(v, lambda b: b[: len(b) // 2])),
    BadVersion("data not Parquet", lambda v: _with_consistent_data(v, b"not parquet " * 64)),
    BadVersion("keys out of order", lambda v: _with_consistent_rows(v, _unsorted())),
    BadVersion("schema differs from manifest", _schema_differs),
    BadVersion("manifest format 2", lambda v: _with_manifest(v, format=2)),
    BadVersion(
        "created year 0001", lambda v: _with_manifest(v, created_at="0001-01-01T00:00:00+01:00")
    ),
    BadVersion("created year 9999", lambda v: _with_manifest(v, created_at="9999-12-31T23:59:59Z")),
    BadVersion(
        "query started year 9999 west of UTC",
        lambda v: _with_manifest(v, query_started_at="9999-12-31T23:59:59-01:00"),
    ),
    BadVersion("created_at unparseable", lambda v: _with_manifest(v, created_at="yesterday")),
    BadVersion("manifest not JSON", lambda v: _with_manifest_body(v, b"{not json")),
    BadVersion(
        "manifest nested 100000 deep",
        lambda v: _with_manifest_body(v, b'{"version":' + nested(100_000) + b"}"),
    ),
    BadVersion(
        "table_bytes far above the memory budget",
        lambda v: _with_manifest(v, table_bytes=1000 * MEMORY_BUDGET_MB << 20),
        memory_only=True,
    ),
    BadVersion("keyed by another column", lambda v: v.publish(V2_IDS, key_column="account_id")),
    # Last: no builder announces past a version from the future.
    BadVersion("created hours in the future", _in_the_future),
)

# A consistent snapshot of no rows: the builder refuses one (``check_keys``: "table has no
# rows"), so a reader that gets one has been handed a broken or hostile version.
NO_ROWS = BadVersion("no rows", _no_rows)

# --- bad pointers: CURRENT itself is wrong (permanent) ---------------------------------------

BAD_POINTERS = {
    "not JSON": b"CURRENT is not JSON {",
    "a list": b'["20261123T120000Z-0a1b2c3d"]',
    "a malformed version": b'{"version": "../../etc/passwd"}',
    "a malformed previous": b'{"version": "20261123T120000Z-0a1b2c3d", "previous": "x"}',
    "nested 100000 deep": b'{"version":' + nested(100_000) + b"}",
}

# --- storage faults on the wire (transient) and bugs -----------------------------------------


@dataclass(frozen=True, slots=True)
class StorageFault:
    """A fault on requests for keys ending with a suffix: a botocore hook or a proxy mode."""

    name: str
    inject: Callable[[Lookup, FaultProxy, str], None]

    def __str__(self) -> str:
        return self.name


def _hook(fault: Callable[[Any], Any]) -> Callable[[Lookup, FaultProxy, str], None]:
    def inject(lookup: Lookup, _proxy: FaultProxy, key_suffix: str) -> None:
        lookup.faults.add(fault, key_suffix=key_suffix)

    return inject


def _proxy(mode: Mode) -> Callable[[Lookup, FaultProxy, str], None]:
    def inject(_lookup: Lookup, proxy: FaultProxy, key_suffix: str) -> None:
        proxy.set_mode(mode, only=key_suffix.encode() or None)

    return inject


def lift(lookup: Lookup, proxy: FaultProxy) -> None:
    """Remove every storage fault."""
    lookup.faults.clear()
    proxy.set_mode(Mode.PASS)


TRANSIENT_FAULTS = (
    StorageFault("503 SlowDown", _hook(error_response(503, "SlowDown"))),
    StorageFault("500 InternalError", _hook(error_response(500, "InternalError"))),
    StorageFault("403 AccessDenied", _hook(error_response(403, "AccessDenied"))),
    StorageFault("read timeout", _hook(raises(lambda r: ReadTimeoutError(endpoint_url=r.url)))),
    StorageFault(
        "connection closed", _hook(raises(lambda r: ConnectionClosedError(endpoint_url=r.url)))
    ),
    StorageFault("MemoryError", _hook(raises(lambda _r: MemoryError()))),
    StorageFault("TCP reset", _proxy(Mode.RESET)),
    StorageFault("closed without an answer", _proxy(Mode.CLOSE)),
    StorageFault("black hole", _proxy(Mode.BLACK_HOLE)),
)


class UnexpectedError(Exception):
    """Stands for a bug: an exception no layer knows about."""


BUG = StorageFault("unexpected exception", _hook(raises(lambda _r: UnexpectedError("boom"))))
