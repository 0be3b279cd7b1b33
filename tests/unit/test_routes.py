"""Operations: input checks, answers and their errors, over a real SnapshotCache."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from service import routes
from service.errors import BadRequestError, KeyNotFoundError, SnapshotUnavailableError, to_response
from tests.conftest import customers

if TYPE_CHECKING:
    from service.cache import SnapshotCache
    from tests.unit.conftest import InMemorySource

# Every lookup here runs in both serving modes (issue 11).
pytestmark = pytest.mark.usefixtures("serve_mode")

MAX_KEYS = 3
HIT = "C000000002"

BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("A" * 65, id="too-long"),
    pytest.param("bad key", id="space"),
    pytest.param("bad!", id="punctuation"),
    pytest.param("a/b", id="slash"),
    pytest.param("C1\n", id="trailing-newline"),
    pytest.param("Zürich", id="non-ascii"),
    pytest.param("C1\x00", id="nul"),
]
NON_STRINGS = [
    pytest.param(123, id="int"),
    pytest.param(None, id="none"),
    pytest.param(["C1"], id="list"),
    pytest.param(True, id="bool"),
]


@pytest.fixture
def snapshot(cache: SnapshotCache, published: str) -> dict[str, Any]:
    """The status block of the loaded snapshot."""
    return cache.get().snapshot


# --- check_key / check_keys ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["C", "A" * 64, "a_b-C9", "-", "_"])
def test_check_key_accepts_well_formed_keys(key: str) -> None:
    assert routes.check_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_rejects_malformed_keys_without_echoing_them(key: str) -> None:
    with pytest.raises(BadRequestError) as raised:
        routes.check_key(key)

    assert raised.value.message == (
        "customer_id must be 1-64 characters from A-Z, a-z, 0-9, '_' and '-'"
    )


@pytest.mark.parametrize("value", NON_STRINGS)
def test_check_key_rejects_non_strings_naming_the_type(value: object) -> None:
    with pytest.raises(BadRequestError, match=f"must be a string, got {type(value).__name__}"):
        routes.check_key(value)


def test_check_key_names_the_field() -> None:
    with pytest.raises(BadRequestError, match=r"^ids\[7\] must be"):
        routes.check_key("", field="ids[7]")


def test_check_keys_accepts_up_to_max_keys() -> None:
    assert routes.check_keys(["A", "B", "C"], max_keys=MAX_KEYS) == ["A", "B", "C"]


@pytest.mark.parametrize(
    "value",
    [("A", "B"), "A", {"A": 1}, None, 7],
    ids=["tuple", "string", "dict", "none", "int"],
)
def test_check_keys_rejects_a_non_list(value: object) -> None:
    with pytest.raises(BadRequestError, match="customer_ids must be a list"):
        routes.check_keys(value, max_keys=MAX_KEYS)


def test_check_keys_rejects_an_empty_list() -> None:
    with pytest.raises(BadRequestError, match="must not be empty"):
        routes.check_keys([], max_keys=MAX_KEYS)


def test_check_keys_rejects_more_than_max_keys() -> None:
    with pytest.raises(BadRequestError, match="has 4 keys; the most is 3"):
        routes.check_keys(["A", "B", "C", "D"], max_keys=MAX_KEYS)


@pytest.mark.parametrize("bad", ["", "bad!", 5, None], ids=["empty", "punctuation", "int", "none"])
def test_check_keys_rejects_a_bad_element_naming_its_position(bad: object) -> None:
    with pytest.raises(BadRequestError, match=r"^customer_ids\[1\] must be"):
        routes.check_keys(["A", bad, "C"], max_keys=MAX_KEYS)


# --- parse_json_body -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, "", b""], ids=["none", "empty-str", "empty-bytes"])
def test_parse_json_body_rejects_a_missing_body(body: str | bytes | None) -> None:
    with pytest.raises(BadRequestError, match="request body is required"):
        routes.parse_json_body(body)


@pytest.mark.parametrize(
    "body",
    ["{", "customer_ids=C1", "   ", b"\xff\xfe{", "{'customer_ids': []}"],
    ids=["truncated", "form", "blank", "bad-utf8", "single-quotes"],
)
def test_parse_json_body_rejects_a_body_that_is_not_json(body: str | bytes) -> None:
    with pytest.raises(BadRequestError, match="request body is not valid JSON"):
        routes.parse_json_body(body)


def test_parse_json_body_rejects_a_body_nested_too_deeply() -> None:
    with pytest.raises(BadRequestError, match="nested too deeply"):
        routes.parse_json_body("[" * 100_000)


@pytest.mark.parametrize("body", ['{"customer_ids": ["C1"]}', b'{"customer_ids": ["C1"]}'])
def test_parse_json_body_parses_text_and_bytes(body: str | bytes) -> None:
    assert routes.parse_json_body(body) == {"customer_ids": ["C1"]}


# --- get_customer / get_customers -------------------------------------------------------------


def test_get_customer_returns_item_and_snapshot(
    cache: SnapshotCache, snapshot: dict[str, Any]
) -> None:
    answer = routes.get_customer(cache, HIT)

    assert answer == {"item": cache.get().index.get(HIT), "snapshot": snapshot}
    assert answer["item"]["customer_id"] == HIT


def test_get_customer_miss_raises_not_found_carrying_the_snapshot(
    cache: SnapshotCache, snapshot: dict[str, Any]
) -> None:
    with pytest.raises(KeyNotFoundError) as raised:
        routes.get_customer(cache, "C000000404")

    assert to_response(raised.value) == (
        404,
        {"error": {"code": "not_found", "message": "customer not found"}, "snapshot": snapshot},
    )


def test_get_customer_checks_the_key_before_touching_the_cache(
    cache: SnapshotCache, source: InMemorySource, published: str
) -> None:
    with pytest.raises(BadRequestError):
        routes.get_customer(cache, "bad!")

    assert source.pointer_reads == []


def test_get_customer_without_a_snapshot_raises_unavailable(cache: SnapshotCache) -> None:
    with pytest.raises(SnapshotUnavailableError):
        routes.get_customer(cache, HIT)


def test_get_customers_returns_items_in_request_order_and_missing_ids(
    cache: SnapshotCache, snapshot: dict[str, Any]
) -> None:
    payload = {"customer_ids": ["C000000003", "NOPE", "C000000001"]}

    answer = routes.get_customers(cache, payload, max_keys=MAX_KEYS)

    assert [item["customer_id"] for item in answer["items"]] == ["C000000003", "C000000001"]
    assert (answer["missing"], answer["snapshot"]) == (["NOPE"], snapshot)


def test_get_customers_all_missing_is_an_answer_not_an_error(
    cache: SnapshotCache, published: str
) -> None:
    answer = routes.get_customers(cache, {"customer_ids": ["X1", "X2"]}, max_keys=MAX_KEYS)

    assert (answer["items"], answer["missing"]) == ([], ["X1", "X2"])


@pytest.mark.parametrize(
    "payload",
    [["C000000001"], "C000000001", None, {}, {"customer_id": "C000000001"}],
    ids=["list", "string", "none", "empty-object", "singular-key"],
)
def test_get_customers_rejects_a_payload_that_is_not_a_batch_object(
    cache: SnapshotCache, published: str, payload: object
) -> None:
    with pytest.raises(BadRequestError, match=r'expected a JSON object \{"customer_ids"'):
        routes.get_customers(cache, payload, max_keys=MAX_KEYS)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ("C000000001", "must be a list"),
        ([], "must not be empty"),
        (["A", "B", "C", "D"], "the most is 3"),
        (["C000000001", 42], r"customer_ids\[1\] must be a string"),
        (["C000000001", "A" * 65], r"customer_ids\[1\] must be 1-64"),
    ],
    ids=["not-a-list", "empty", "too-large", "non-string-element", "too-long-element"],
)
def test_get_customers_rejects_a_bad_batch(
    cache: SnapshotCache, published: str, ids: object, message: str
) -> None:
    with pytest.raises(BadRequestError, match=message):
        routes.get_customers(cache, {"customer_ids": ids}, max_keys=MAX_KEYS)


# --- direct ----------------------------------------------------------------------------------


def test_direct_single_key_answers_like_get_customer(cache: SnapshotCache, published: str) -> None:
    assert routes.direct(cache, {"customer_id": HIT}, max_keys=MAX_KEYS) == routes.get_customer(
        cache, HIT
    )


def test_direct_batch_answers_like_get_customers(cache: SnapshotCache, published: str) -> None:
    payload = {"customer_ids": [HIT, "NOPE"]}

    assert routes.direct(cache, payload, max_keys=MAX_KEYS) == routes.get_customers(
        cache, payload, max_keys=MAX_KEYS
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"customer_id": HIT, "extra": 1},
        {"customer_ids": [HIT], "customer_id": HIT},
        {"customer_ids": [HIT], "debug": True},
        {},
        {"id": HIT},
        [HIT],
        [{"customer_id": HIT}],
        HIT,
        None,
        7,
    ],
    ids=[
        "extra-key",
        "both-keys",
        "batch-extra-key",
        "empty-object",
        "unknown-key",
        "list-of-ids",
        "list-of-objects",
        "bare-string",
        "null",
        "number",
    ],
)
def test_direct_rejects_unknown_payload_shapes(
    cache: SnapshotCache, published: str, payload: object
) -> None:
    with pytest.raises(BadRequestError, match=re.escape('expected {"customer_id": "..."} or')):
        routes.direct(cache, payload, max_keys=MAX_KEYS)


@pytest.mark.parametrize(
    "payload",
    [{"customer_id": 5}, {"customer_id": None}, {"customer_ids": HIT}, {"customer_ids": [1]}],
    ids=["int-id", "null-id", "string-ids", "int-in-ids"],
)
def test_direct_rejects_wrongly_typed_values(
    cache: SnapshotCache, published: str, payload: object
) -> None:
    with pytest.raises(BadRequestError, match="must be"):
        routes.direct(cache, payload, max_keys=MAX_KEYS)


def test_direct_miss_raises_not_found_carrying_the_snapshot(
    cache: SnapshotCache, snapshot: dict[str, Any]
) -> None:
    with pytest.raises(KeyNotFoundError) as raised:
        routes.direct(cache, {"customer_id": "C000000404"}, max_keys=MAX_KEYS)

    assert raised.value.snapshot == snapshot


# --- health / scheduled_refresh ---------------------------------------------------------------


def test_health_reports_ok_with_the_snapshot(
    cache: SnapshotCache, snapshot: dict[str, Any]
) -> None:
    assert routes.health(cache) == {"status": "ok", "snapshot": snapshot}


def test_health_without_a_snapshot_raises_unavailable(cache: SnapshotCache) -> None:
    with pytest.raises(SnapshotUnavailableError):
        routes.health(cache)


def test_scheduled_refresh_loads_a_new_version_within_ttl(
    cache: SnapshotCache, source: InMemorySource, snapshot: dict[str, Any]
) -> None:
    new = source.publish(customers(["C000000009"]))

    answer = routes.scheduled_refresh(cache)

    assert (answer["refreshed"], answer["snapshot"]["version"]) == (True, new)


def test_scheduled_refresh_of_an_unchanged_pointer_reports_false(
    cache: SnapshotCache, snapshot: dict[str, Any]
) -> None:
    assert routes.scheduled_refresh(cache) == {"refreshed": False, "snapshot": snapshot}


def test_scheduled_refresh_returns_no_customer_data(cache: SnapshotCache, published: str) -> None:
    answer = routes.scheduled_refresh(cache)

    assert set(answer) == {"refreshed", "snapshot"}
    assert "C00000000" not in json.dumps(answer)


def test_scheduled_refresh_without_a_snapshot_raises_unavailable(cache: SnapshotCache) -> None:
    with pytest.raises(SnapshotUnavailableError):
        routes.scheduled_refresh(cache)
