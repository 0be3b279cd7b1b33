"""Settings.from_env: defaults, each variable, and a ConfigError naming each bad one."""

from __future__ import annotations

import pytest

from loaders.store import StorageBudget
from service.settings import ConfigError, Settings, in_lambda

URI = "s3://snapshots-test/customer-mapping"


def env(**overrides: str) -> dict[str, str]:
    return {"SNAPSHOT_URI": URI, **overrides}


def test_defaults_apply_when_only_snapshot_uri_is_set() -> None:
    assert Settings.from_env({"SNAPSHOT_URI": URI}) == Settings(
        snapshot_uri=URI,
        key_column="customer_id",
        refresh_ttl_seconds=300.0,
        max_staleness_seconds=172800.0,
        max_batch_keys=100,
    )


@pytest.mark.parametrize(
    ("name", "raw", "field", "expected"),
    [
        (
            "SNAPSHOT_URI",
            "file:///var/task/snapshots",
            "snapshot_uri",
            "file:///var/task/snapshots",
        ),
        ("SNAPSHOT_URI", "file://localhost/srv/snap", "snapshot_uri", "file://localhost/srv/snap"),
        ("SNAPSHOT_URI", "s3://bucket", "snapshot_uri", "s3://bucket"),
        ("SNAPSHOT_URI", "  s3://bucket/prefix  ", "snapshot_uri", "s3://bucket/prefix"),
        ("KEY_COLUMN", "account_id", "key_column", "account_id"),
        ("KEY_COLUMN", "_K" + "x" * 126, "key_column", "_K" + "x" * 126),
        ("REFRESH_TTL_SECONDS", "60", "refresh_ttl_seconds", 60.0),
        ("REFRESH_TTL_SECONDS", "0.5", "refresh_ttl_seconds", 0.5),
        ("REFRESH_TTL_SECONDS", "0", "refresh_ttl_seconds", 0.0),
        ("MAX_STALENESS_SECONDS", "86400", "max_staleness_seconds", 86400.0),
        ("MAX_STALENESS_SECONDS", "1", "max_staleness_seconds", 1.0),
        ("MAX_BATCH_KEYS", "25", "max_batch_keys", 25),
        ("MAX_BATCH_KEYS", " 1 ", "max_batch_keys", 1),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_each_variable_is_parsed(name: str, raw: str, field: str, expected: object) -> None:
    value = getattr(Settings.from_env(env(**{name: raw})), field)

    assert (value, type(value)) == (expected, type(expected))


@pytest.mark.parametrize("name", ["REFRESH_TTL_SECONDS", "MAX_STALENESS_SECONDS", "MAX_BATCH_KEYS"])
def test_blank_number_uses_the_default(name: str) -> None:
    assert Settings.from_env(env(**{name: "  "})) == Settings.from_env(env())


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        pytest.param({}, "SNAPSHOT_URI", id="missing-uri"),
        pytest.param({"SNAPSHOT_URI": "   "}, "SNAPSHOT_URI", id="blank-uri"),
        pytest.param({"SNAPSHOT_URI": "file://relative/path"}, "SNAPSHOT_URI", id="file-host"),
        pytest.param({"SNAPSHOT_URI": "file:relative/path"}, "SNAPSHOT_URI", id="file-relative"),
        pytest.param({"SNAPSHOT_URI": "/var/task/snapshots"}, "SNAPSHOT_URI", id="bare-path"),
        pytest.param({"SNAPSHOT_URI": "http://example.com/snap"}, "SNAPSHOT_URI", id="http"),
        pytest.param({"SNAPSHOT_URI": "https://bucket.s3.aws/x"}, "SNAPSHOT_URI", id="https"),
        pytest.param({"SNAPSHOT_URI": "s3:///prefix"}, "SNAPSHOT_URI", id="s3-no-bucket"),
        pytest.param(env(KEY_COLUMN="customer-id"), "KEY_COLUMN", id="column-dash"),
        pytest.param(env(KEY_COLUMN="1st"), "KEY_COLUMN", id="column-digit-first"),
        pytest.param(env(KEY_COLUMN="a b"), "KEY_COLUMN", id="column-space"),
        pytest.param(env(KEY_COLUMN=""), "KEY_COLUMN", id="column-empty"),
        pytest.param(env(KEY_COLUMN="id\n"), "KEY_COLUMN", id="column-newline"),
        pytest.param(env(KEY_COLUMN="k" * 129), "KEY_COLUMN", id="column-too-long"),
        pytest.param(env(REFRESH_TTL_SECONDS="five"), "REFRESH_TTL_SECONDS", id="ttl-word"),
        pytest.param(env(REFRESH_TTL_SECONDS="-1"), "REFRESH_TTL_SECONDS", id="ttl-negative"),
        pytest.param(env(REFRESH_TTL_SECONDS="inf"), "REFRESH_TTL_SECONDS", id="ttl-inf"),
        pytest.param(env(REFRESH_TTL_SECONDS="nan"), "REFRESH_TTL_SECONDS", id="ttl-nan"),
        pytest.param(env(REFRESH_TTL_SECONDS="300s"), "REFRESH_TTL_SECONDS", id="ttl-unit"),
        pytest.param(env(MAX_STALENESS_SECONDS="0"), "MAX_STALENESS_SECONDS", id="stale-zero"),
        pytest.param(env(MAX_STALENESS_SECONDS="-5"), "MAX_STALENESS_SECONDS", id="stale-neg"),
        pytest.param(env(MAX_STALENESS_SECONDS="inf"), "MAX_STALENESS_SECONDS", id="stale-inf"),
        pytest.param(env(MAX_STALENESS_SECONDS="2d"), "MAX_STALENESS_SECONDS", id="stale-unit"),
        pytest.param(env(MAX_BATCH_KEYS="0"), "MAX_BATCH_KEYS", id="batch-zero"),
        pytest.param(env(MAX_BATCH_KEYS="-1"), "MAX_BATCH_KEYS", id="batch-negative"),
        pytest.param(env(MAX_BATCH_KEYS="1.5"), "MAX_BATCH_KEYS", id="batch-fraction"),
        pytest.param(env(MAX_BATCH_KEYS="ten"), "MAX_BATCH_KEYS", id="batch-word"),
        pytest.param(env(MAX_BATCH_KEYS="inf"), "MAX_BATCH_KEYS", id="batch-inf"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(
    environ: dict[str, str], name: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{name}"):
        Settings.from_env(environ)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_first_bad_variable_is_the_one_named() -> None:
    with pytest.raises(ConfigError, match=r"^KEY_COLUMN"):
        Settings.from_env(env(KEY_COLUMN="bad-name", MAX_BATCH_KEYS="0"))


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env(env(AWS_REGION="eu-west-1", KEYCOLUMN="x")) == Settings(URI)


def test_without_an_argument_os_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPSHOT_URI", "s3://from-environ")
    monkeypatch.setenv("MAX_BATCH_KEYS", "7")
    for name in ("KEY_COLUMN", "REFRESH_TTL_SECONDS", "MAX_STALENESS_SECONDS"):
        monkeypatch.delenv(name, raising=False)

    assert Settings.from_env() == Settings("s3://from-environ", max_batch_keys=7)


def test_in_lambda_follows_the_runtime_variable() -> None:
    assert in_lambda({"AWS_LAMBDA_FUNCTION_NAME": "customer-lookup"})
    assert not in_lambda({})


def test_storage_budgets_are_read_from_their_variables() -> None:
    settings = Settings.from_env(
        env(
            S3_CONNECT_TIMEOUT_SECONDS="0.5",
            S3_READ_TIMEOUT_SECONDS="1.5",
            S3_MAX_ATTEMPTS="3",
            REFRESH_WAIT_SECONDS="1",
            COLD_LOAD_WAIT_SECONDS="4",
        )
    )

    assert settings.storage == StorageBudget(0.5, 1.5, 3)
    assert (settings.refresh_wait_seconds, settings.cold_load_wait_seconds) == (1.0, 4.0)


def test_storage_budgets_default_to_bounded_values() -> None:
    settings = Settings.from_env(env())

    assert settings.storage == StorageBudget(1.0, 2.0, 2)
    assert (settings.refresh_wait_seconds, settings.cold_load_wait_seconds) == (2.5, 7.0)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("S3_CONNECT_TIMEOUT_SECONDS", "0"),
        ("S3_READ_TIMEOUT_SECONDS", "forever"),
        ("S3_MAX_ATTEMPTS", "0"),
        ("REFRESH_WAIT_SECONDS", "-1"),
        ("COLD_LOAD_WAIT_SECONDS", "inf"),
        ("MEMORY_BUDGET_MB", "lots"),
    ],
)
def test_bad_budget_raises_config_error_naming_it(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env(**{name: raw}))


@pytest.mark.parametrize(
    ("extra", "budget_mb"),
    [
        ({}, None),  # outside Lambda: no budget unless asked for
        ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}, 768),
        ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256"}, 128),  # never below half the function
        ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024", "MEMORY_BUDGET_MB": "500"}, 500),
        ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024", "MEMORY_BUDGET_MB": "0"}, None),
    ],
)
def test_memory_budget_defaults_to_the_function_memory_less_a_margin(
    extra: dict[str, str], budget_mb: int | None
) -> None:
    settings = Settings.from_env(env(**extra))

    assert settings.memory_budget_mb == budget_mb
    assert settings.memory_budget_bytes == (None if budget_mb is None else budget_mb << 20)


@pytest.mark.parametrize(
    ("name", "raw", "field", "expected"),
    [
        ("SERVE_MODE", "memory", "serve_mode", "memory"),
        ("SERVE_MODE", " Tiered ", "serve_mode", "tiered"),
        ("SERVE_MODE", "", "serve_mode", "auto"),
        ("TIERED_CACHE_MB", "64", "tiered_cache_mb", 64),
        ("TIERED_FETCH_WORKERS", "2", "tiered_fetch_workers", 2),
        ("SHARE_SNAPSHOTS", "OFF", "share_mode", "off"),
        ("SHARE_DIR", " /mnt/share ", "share_dir", "/mnt/share"),
        ("SHARE_DIR", "", "share_dir", "/tmp/snapshot-share"),
        ("SHARE_MAX_MB", "512", "share_max_mb", 512),
        ("SHARE_MAX_MB", "0", "share_max_mb", None),
    ],
)
def test_serving_variables_are_parsed(name: str, raw: str, field: str, expected: object) -> None:
    value = getattr(Settings.from_env(env(**{name: raw})), field)

    assert (value, type(value)) == (expected, type(expected))


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        pytest.param(env(SERVE_MODE="disk"), "SERVE_MODE", id="serve-mode-unknown"),
        pytest.param(env(TIERED_CACHE_MB="0"), "TIERED_CACHE_MB", id="cache-zero"),
        pytest.param(env(TIERED_CACHE_MB="1.5"), "TIERED_CACHE_MB", id="cache-fraction"),
        pytest.param(env(TIERED_FETCH_WORKERS="0"), "TIERED_FETCH_WORKERS", id="workers-zero"),
        pytest.param(env(SHARE_SNAPSHOTS="yes"), "SHARE_SNAPSHOTS", id="share-unknown"),
        pytest.param(env(SHARE_MAX_MB="-1"), "SHARE_MAX_MB", id="share-max-negative"),
    ],
)
def test_bad_serving_value_raises_config_error_naming_it(
    environ: dict[str, str], name: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{name}"):
        Settings.from_env(environ)


@pytest.mark.parametrize(
    ("overrides", "shared"),
    [
        pytest.param({}, False, id="auto-one-process"),
        pytest.param({"AWS_LAMBDA_MAX_CONCURRENCY": "4"}, True, id="auto-managed-instances"),
        pytest.param({"SHARE_SNAPSHOTS": "on"}, True, id="on"),
        pytest.param(
            {"SHARE_SNAPSHOTS": "off", "AWS_LAMBDA_MAX_CONCURRENCY": "4"}, False, id="off"
        ),
    ],
)
def test_snapshots_are_shared_where_processes_share_tmp(
    overrides: dict[str, str], shared: bool
) -> None:
    assert Settings.from_env(env(**overrides)).shares_snapshots is shared
