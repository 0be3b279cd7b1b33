"""template.yaml, checked offline: SAM transform, cfn-lint on the result, and the IAM rules."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
PARAMS = {
    "SnapshotBucketName": "acme-customer-snapshots",
    "SnapshotPrefix": "customer-mapping",
    "AthenaDatabase": "warehouse",
    "SourceDataBucket": "acme-warehouse",
    "SourceDataPrefix": "tables/customers",
}
SNAPSHOTS = "arn:${AWS::Partition}:s3:::${SnapshotBucketName}/${SnapshotPrefix}/snapshots/*"
POINTER = "arn:${AWS::Partition}:s3:::${SnapshotBucketName}/${SnapshotPrefix}/CURRENT"


class _NoManagedPolicies:
    """SAM asks for the account's managed policy map; offline there is none to fetch."""

    def load(self) -> dict[str, str]:
        return {}


def _source() -> dict[str, Any]:
    template = yaml_parse(TEMPLATE.read_text())
    # SAM packages a local CodeUri before transforming; stand in an S3 location for it.
    template["Globals"]["Function"]["CodeUri"] = "s3://artifacts/lookup.zip"
    return template


def _transformed(**params: str) -> dict[str, Any]:
    return transform(copy.deepcopy(_source()), {**PARAMS, **params}, _NoManagedPolicies())


@pytest.fixture(scope="module", autouse=True)
def _region() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture(scope="module")
def output() -> dict[str, Any]:
    return _transformed()


def _resources(output: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in output["Resources"].items() if v["Type"] == kind}


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        statement
        for policy in role["Properties"].get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _sub_text(resource: Any) -> str:
    return resource["Fn::Sub"] if isinstance(resource, dict) and "Fn::Sub" in resource else resource


@pytest.mark.parametrize("auth", ["IAM", "JWT"])
def test_transformed_template_passes_cfn_lint(auth: str) -> None:
    output = _transformed(HttpAuth=auth, JwtIssuer="https://issuer.example.com")
    matches = lint(json.dumps(output), config=ManualArgs(regions=["us-east-1"]))
    errors = [f"{m.rule.id} {m.message} at {m.path}" for m in matches if m.rule.severity == "error"]
    assert errors == []


def test_lookup_role_may_only_get_snapshots_and_pointer(output: dict[str, Any]) -> None:
    role = output["Resources"]["LookupFunctionRole"]
    statements = _statements(role)
    actions = {a for s in statements for a in _as_list(s["Action"])}
    resources = {_sub_text(r) for s in statements for r in _as_list(s["Resource"])}
    assert actions == {"s3:GetObject"}
    assert resources == {SNAPSHOTS, POINTER}
    assert role["Properties"]["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    ]


def test_no_role_grants_a_wildcard_resource(output: dict[str, Any]) -> None:
    for name, role in _resources(output, "AWS::IAM::Role").items():
        for statement in _statements(role):
            for resource in _as_list(statement["Resource"]):
                assert _sub_text(resource) != "*", f"{name}: {statement}"
                assert not str(_sub_text(resource)).endswith(":::*"), f"{name}: {statement}"


def test_builder_writes_only_staging_results_snapshots_and_pointer(output: dict[str, Any]) -> None:
    statements = _statements(output["Resources"]["BuilderFunctionRole"])
    writable = {
        _sub_text(r)
        for s in statements
        if "s3:PutObject" in _as_list(s["Action"])
        for r in _as_list(s["Resource"])
    }
    root = "arn:${AWS::Partition}:s3:::${SnapshotBucketName}/${SnapshotPrefix}"
    assert writable == {
        f"{root}/staging/*",
        f"{root}/athena-results/*",
        SNAPSHOTS,
        POINTER,
    }


def test_builder_runs_athena_only_in_its_workgroup(output: dict[str, Any]) -> None:
    statements = _statements(output["Resources"]["BuilderFunctionRole"])
    athena = [s for s in statements if any(a.startswith("athena:") for a in _as_list(s["Action"]))]
    assert {a for s in athena for a in _as_list(s["Action"])} == {
        "athena:StartQueryExecution",
        "athena:GetQueryExecution",
        "athena:StopQueryExecution",
    }
    assert [_sub_text(s["Resource"]) for s in athena] == [
        "arn:${AWS::Partition}:athena:${AWS::Region}:${AWS::AccountId}"
        ":workgroup/${AthenaWorkGroupName}"
    ]


def test_builder_reads_only_its_glue_table(output: dict[str, Any]) -> None:
    statements = _statements(output["Resources"]["BuilderFunctionRole"])
    glue = {
        _sub_text(r)
        for s in statements
        if any(a.startswith("glue:") for a in _as_list(s["Action"]))
        for r in _as_list(s["Resource"])
    }
    table = "table/${AthenaDatabase}/${AthenaTable}"
    assert all(r.endswith((":catalog", "database/${AthenaDatabase}", table)) for r in glue)
    assert any(r.endswith(table) for r in glue)


def test_list_bucket_is_always_prefix_scoped(output: dict[str, Any]) -> None:
    for role in _resources(output, "AWS::IAM::Role").values():
        for statement in _statements(role):
            if "s3:ListBucket" in _as_list(statement["Action"]):
                assert "s3:prefix" in statement["Condition"]["StringLike"]


def test_bucket_is_encrypted_private_and_tls_only(output: dict[str, Any]) -> None:
    bucket = output["Resources"]["SnapshotBucket"]["Properties"]
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    policy = output["Resources"]["SnapshotBucketPolicy"]["Properties"]["PolicyDocument"]
    deny = [s for s in policy["Statement"] if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_rest_api_methods_use_iam_auth(output: dict[str, Any]) -> None:
    body = output["Resources"]["RestApi"]["Properties"]["Body"]
    for path, methods in body["paths"].items():
        for method, spec in methods.items():
            assert spec["security"] == [{"AWS_IAM": []}], f"{method} {path}"


@pytest.mark.parametrize(("auth", "scheme"), [("IAM", "sigv4"), ("JWT", "jwt")])
def test_http_api_authorizer_follows_the_parameter(auth: str, scheme: str) -> None:
    body = _transformed(HttpAuth=auth)["Resources"]["HttpApi"]["Properties"]["Body"]
    routes = {(p, m) for p, ms in body["paths"].items() for m in ms}
    assert routes == {
        ("/customers/{customer_id}", "get"),
        ("/customers/batch", "post"),
        ("/health", "get"),
    }
    for methods in body["paths"].values():
        for spec in methods.values():
            condition, if_jwt, if_iam = spec["security"]["Fn::If"]
            assert condition == "UseJwt"
            chosen = if_jwt if auth == "JWT" else if_iam
            assert chosen == [{scheme: []}]
            assert "x-amazon-apigateway-integration" in spec


def test_both_functions_run_on_the_tested_python(output: dict[str, Any]) -> None:
    tested = f"python{sys.version_info.major}.{sys.version_info.minor}"
    functions = _resources(output, "AWS::Lambda::Function")
    assert {f["Properties"]["Runtime"] for f in functions.values()} == {tested}
    handlers = {f["Properties"]["Handler"] for f in functions.values()}
    assert handlers == {"service.handler.handler", "loaders.build.handler"}


def test_schedules_reach_both_functions(output: dict[str, Any]) -> None:
    rules = _resources(output, "AWS::Events::Rule")
    targets = {json.dumps(t["Arn"]) for r in rules.values() for t in r["Properties"]["Targets"]}
    assert any("LookupFunction" in t for t in targets)
    assert any("BuilderFunction" in t for t in targets)


def test_builder_runs_one_at_a_time_without_async_retries(output: dict[str, Any]) -> None:
    builder = output["Resources"]["BuilderFunction"]["Properties"]
    assert builder["ReservedConcurrentExecutions"] == 1
    configs = _resources(output, "AWS::Lambda::EventInvokeConfig")
    assert [c["Properties"]["MaximumRetryAttempts"] for c in configs.values()] == [0]


def test_lookup_timeout_is_above_every_storage_budget(output: dict[str, Any]) -> None:
    from service.settings import Settings

    function = output["Resources"]["LookupFunction"]["Properties"]
    env = {k: v for k, v in function["Environment"]["Variables"].items() if isinstance(v, str)}
    settings = Settings.from_env({**env, "SNAPSHOT_URI": "s3://bucket/prefix"})
    storage = settings.storage
    one_s3_call = storage.max_attempts * (
        storage.connect_timeout_seconds + storage.read_timeout_seconds
    )

    # The first answer (a 503 at worst) comes well inside the timeout, and a warm request's
    # wait stays near 3 s; a single S3 call is bounded too.
    assert settings.cold_load_wait_seconds + 1 < function["Timeout"] <= 10
    assert settings.refresh_wait_seconds <= 3
    assert one_s3_call < function["Timeout"]
