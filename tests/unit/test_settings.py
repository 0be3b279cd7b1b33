"""Settings.from_env: defaults, each variable, and a ConfigError naming each bad one."""

from __future__ import annotations

import pytest

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
