"""Every AWS client the builder and ``snapshotctl`` create is bounded: explicit timeouts,
standard retry mode and a fixed number of attempts, from settings with builder defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import loaders.build
from loaders.build import make_engine, make_store
from loaders.cli import main
from loaders.engines import AthenaEngine
from loaders.settings import BuildConfigError, BuildSettings
from loaders.store import S3Store, StorageBudget, make_s3_client
from tests.conftest import BUCKET, PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = f"s3://{BUCKET}/{PREFIX}"
ATHENA = {
    "SNAPSHOT_URI": ROOT,
    "QUERY_SQL": "SELECT 1 AS customer_id",
    "ENGINE": "athena",
    "ATHENA_STAGING_URI": f"s3://{BUCKET}/staging",
}


def _bounds(client: Any) -> tuple[float, float, dict[str, Any]]:
    config = client.meta.config
    return config.connect_timeout, config.read_timeout, config.retries


def test_builder_store_client_defaults_to_5s_connect_30s_read_5_attempts(aws_env: None) -> None:
    store = make_store(ROOT)

    assert isinstance(store, S3Store)
    assert _bounds(store.client) == (5.0, 30.0, {"mode": "standard", "total_max_attempts": 5})


def test_athena_engine_clients_have_explicit_timeouts(aws_env: None) -> None:
    engine = make_engine(BuildSettings.from_env(ATHENA))

    assert isinstance(engine, AthenaEngine)
    assert _bounds(engine.athena) == (5.0, 30.0, {"mode": "standard", "total_max_attempts": 6})
    assert _bounds(engine.s3) == (5.0, 30.0, {"mode": "standard", "total_max_attempts": 5})


def test_budgets_come_from_the_environment(aws_env: None) -> None:
    settings = BuildSettings.from_env(
        ATHENA
        | {
            "S3_CONNECT_TIMEOUT_SECONDS": "2",
            "S3_READ_TIMEOUT_SECONDS": "10",
            "S3_MAX_ATTEMPTS": "3",
            "ATHENA_CONNECT_TIMEOUT_SECONDS": "1.5",
            "ATHENA_READ_TIMEOUT_SECONDS": "20",
            "ATHENA_MAX_ATTEMPTS": "4",
        }
    )
    engine = make_engine(settings)

    assert settings.storage == StorageBudget(2.0, 10.0, 3)
    assert isinstance(engine, AthenaEngine)
    assert _bounds(engine.athena) == (1.5, 20.0, {"mode": "standard", "total_max_attempts": 4})
    assert _bounds(engine.s3) == (2.0, 10.0, {"mode": "standard", "total_max_attempts": 3})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("S3_CONNECT_TIMEOUT_SECONDS", "0"),
        ("S3_READ_TIMEOUT_SECONDS", "soon"),
        ("S3_MAX_ATTEMPTS", "2.5"),
        ("ATHENA_READ_TIMEOUT_SECONDS", "-1"),
        ("ATHENA_MAX_ATTEMPTS", "0"),
    ],
)
def test_bad_budget_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(BuildConfigError, match=name):
        BuildSettings.from_env(ATHENA | {name: value})


@pytest.fixture
def budgets_used(mock_s3: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[StorageBudget]]:
    """The budget of every S3 client ``loaders.build`` makes (each still a real client)."""
    used: list[StorageBudget] = []

    def recording(budget: StorageBudget) -> Any:
        used.append(budget)
        return make_s3_client(budget)

    monkeypatch.setattr(loaders.build, "make_s3_client", recording)
    yield used


@pytest.mark.parametrize("command", [["list", "--root", ROOT], ["show", "--root", ROOT]])
def test_snapshotctl_reads_through_a_client_bounded_by_the_environment(
    budgets_used: list[StorageBudget], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("S3_READ_TIMEOUT_SECONDS", "7")
    if command[0] == "show":
        command = ["show", "20261123T120000Z-0a1b2c3d", *command[1:]]

    main(command)

    assert budgets_used == [StorageBudget(5.0, 7.0, 5)]
