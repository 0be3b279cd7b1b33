"""Operations of the lookup function: check input, ask the cache and index, shape the answer.

No boto3, no HTTP envelopes: each operation takes plain values and returns a JSON-ready body,
or raises a :mod:`service.errors` error. Customer keys are checked here, before any use.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from loaders.metrics import Metric
from service.errors import BadRequestError, KeyNotFoundError, RowsUnavailableError

if TYPE_CHECKING:
    from loaders.metrics import MetricsRecorder
    from service.cache import SnapshotCache

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY_RULE = "1-64 characters from A-Z, a-z, 0-9, '_' and '-'"


def check_key(value: object, *, field: str = "customer_id") -> str:
    """Return ``value`` if it is a well-formed key.

    Raises
    ------
    BadRequestError
        Naming the field and the rule; the bad value itself is not echoed back.
    """
    if not isinstance(value, str):
        raise BadRequestError(f"{field} must be a string, got {type(value).__name__}")
    if not KEY_PATTERN.fullmatch(value):
        raise BadRequestError(f"{field} must be {_KEY_RULE}")
    return value


def check_keys(values: object, *, max_keys: int) -> list[str]:
    """Return a batch of keys if it is a non-empty list of at most ``max_keys`` good keys."""
    if not isinstance(values, list):
        raise BadRequestError(f"customer_ids must be a list, got {type(values).__name__}")
    if not values:
        raise BadRequestError("customer_ids must not be empty")
    if len(values) > max_keys:
        raise BadRequestError(f"customer_ids has {len(values)} keys; the most is {max_keys}")
    return [check_key(v, field=f"customer_ids[{i}]") for i, v in enumerate(values)]


def parse_json_body(body: str | bytes | None) -> Any:
    """Parse a request body as JSON.

    Raises
    ------
    BadRequestError
        If the body is missing or is not JSON.
    """
    if body is None or body in ("", b""):
        raise BadRequestError("request body is required: a JSON object")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("request body is nested too deeply") from None


def get_customer(
    cache: SnapshotCache, customer_id: object, *, metrics: MetricsRecorder | None = None
) -> dict[str, Any]:
    """``{"item", "snapshot"}`` for one key; ``KeyNotFoundError`` (with snapshot) if absent."""
    key = check_key(customer_id)
    serving = cache.get()
    try:
        row = serving.index.get(key)
    except RowsUnavailableError as exc:  # tiered mode: this request only, with its snapshot
        exc.snapshot = serving.snapshot
        raise
    if metrics is not None:
        metrics.count(Metric.LOOKUPS)
        if row is None:
            metrics.count(Metric.MISSES)
    if row is None:
        raise KeyNotFoundError("customer not found", snapshot=serving.snapshot)
    return {"item": row, "snapshot": serving.snapshot}


def get_customers(
    cache: SnapshotCache,
    payload: object,
    *,
    max_keys: int,
    metrics: MetricsRecorder | None = None,
) -> dict[str, Any]:
    """``{"items", "missing", "snapshot"}`` for a ``{"customer_ids": [...]}`` payload."""
    if not isinstance(payload, dict) or "customer_ids" not in payload:
        raise BadRequestError('expected a JSON object {"customer_ids": [...]}')
    keys = check_keys(payload["customer_ids"], max_keys=max_keys)
    serving = cache.get()
    try:
        items, missing = serving.index.get_many(keys)
    except RowsUnavailableError as exc:
        exc.snapshot = serving.snapshot
        raise
    if metrics is not None:
        metrics.count(Metric.LOOKUPS, len(keys))
        metrics.count(Metric.MISSES, len(missing))
        metrics.sample(Metric.BATCH_SIZE, len(keys))
    return {"items": items, "missing": missing, "snapshot": serving.snapshot}


def health(cache: SnapshotCache) -> dict[str, Any]:
    """``{"status": "ok", "snapshot"}``; ``SnapshotUnavailableError`` when none is loaded."""
    return {"status": "ok", "snapshot": cache.get().snapshot}


def scheduled_refresh(cache: SnapshotCache) -> dict[str, Any]:
    """Check the pointer now; never returns customer data."""
    refreshed = cache.refresh()
    return {"refreshed": refreshed, "snapshot": cache.serving().snapshot}


def direct(
    cache: SnapshotCache,
    payload: object,
    *,
    max_keys: int,
    metrics: MetricsRecorder | None = None,
) -> dict[str, Any]:
    """Answer a direct invocation: ``{"customer_id"}`` or ``{"customer_ids"}``."""
    if isinstance(payload, dict):
        if set(payload) == {"customer_id"}:
            return get_customer(cache, payload["customer_id"], metrics=metrics)
        if set(payload) == {"customer_ids"}:
            return get_customers(cache, payload, max_keys=max_keys, metrics=metrics)
    raise BadRequestError(
        'expected {"customer_id": "..."} or {"customer_ids": ["...", ...]} as the payload'
    )
