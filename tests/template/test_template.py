"""template.yaml, checked offline: SAM transform, cfn-lint on the result, the IAM rules, and the
alarms and dashboard against the metric table in loaders/metrics.py."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from loaders.metrics import (
    BUILDER_METRICS,
    BUILDER_SERVICE,
    DEFAULT_NAMESPACE,
    LOOKUP_METRICS,
    LOOKUP_SERVICE,
    Metric,
)

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
NAMESPACE = {"Ref": "MetricsNamespace"}
METRICS_BY_SERVICE = {LOOKUP_SERVICE: LOOKUP_METRICS, BUILDER_SERVICE: BUILDER_METRICS}
NO_VALUE = {"Ref": "AWS::NoValue"}
TOPIC = "arn:aws:sns:us-east-1:123456789012:customer-lookup-pages"


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


def test_builder_writes_only_staging_results_snapshots_pointer_and_records(
    output: dict[str, Any],
) -> None:
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
        f"{root}/builds/*",
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


def test_builder_duckdb_limit_leaves_room_in_the_function_and_tmp_is_set(
    output: dict[str, Any],
) -> None:
    parameters = output["Parameters"]
    function = output["Resources"]["BuilderFunction"]["Properties"]
    limit = parameters["BuilderDuckDBMemoryLimit"]["Default"]
    limit_mb = float(limit[:-2]) * (1024 if limit.endswith("GB") else 1)

    assert function["Environment"]["Variables"]["DUCKDB_MEMORY_LIMIT"] == {
        "Ref": "BuilderDuckDBMemoryLimit"
    }
    # DuckDB spills past its limit; the function must hold it plus batches and the read-back.
    assert limit_mb <= parameters["BuilderMemorySize"]["Default"] * 0.6
    assert function["EphemeralStorage"] == {"Size": {"Ref": "BuilderTmpMb"}}
    assert parameters["BuilderTmpMb"]["Default"] == 10240


# Alarms and the dashboard. A custom metric is (namespace, name, dimensions); the namespace must
# be the MetricsNamespace parameter, and the one dimension, service, picks the function whose
# metric set the name must come from.


def _check_custom_metric(
    namespace: Any, name: str, dimensions: dict[str, Any], where: str, *, expected: Any = NAMESPACE
) -> str:
    """Assert one custom metric matches loaders.metrics; return its name."""
    assert namespace == expected, f"{where}: {name} is in {namespace!r}, not MetricsNamespace"
    assert list(dimensions) == ["service"], f"{where}: {name} has dimensions {dimensions}"
    service = dimensions["service"]
    assert service in METRICS_BY_SERVICE, f"{where}: {name} has service {service!r}"
    assert name in {m.value for m in METRICS_BY_SERVICE[service]}, (
        f"{where}: {name!r} is not a {service} metric in loaders.metrics.Metric"
    )
    return name


def _alarm_metrics(alarm: dict[str, Any]) -> list[tuple[Any, str, dict[str, Any]]]:
    """Every metric an alarm reads: its own, or each MetricStat of its metric math."""
    props = alarm["Properties"]
    metrics = (
        [q["MetricStat"]["Metric"] for q in props["Metrics"] if "MetricStat" in q]
        if "Metrics" in props
        else [props]
    )
    return [
        (m["Namespace"], m["MetricName"], {d["Name"]: d["Value"] for d in m.get("Dimensions", [])})
        for m in metrics
    ]


def _alarms(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return _resources(output, "AWS::CloudWatch::Alarm")


def _placeholder(value: Any) -> str:
    """How a ``Ref`` reads in the dashboard body once ``_dashboard`` has filled it in."""
    return f"<{value['Ref']}>" if isinstance(value, dict) else value


def _dashboard(output: dict[str, Any]) -> dict[str, Any]:
    """The dashboard body as JSON: each ``${Name}`` becomes ``<Name>``, numbers their default."""
    (dashboard,) = _resources(output, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    # The plain-string form: no variable map can shadow ${MetricsNamespace}.
    assert isinstance(body, str)
    numbers = {
        k: str(p["Default"]) for k, p in output["Parameters"].items() if p["Type"] == "Number"
    }
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: numbers.get(m[1], f"<{m[1]}>"), body))


def _dashboard_metrics(output: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    rows = [
        row
        for widget in _dashboard(output)["widgets"]
        if widget["type"] == "metric"
        for row in widget["properties"]["metrics"]
    ]
    fields = [row[:-1] if isinstance(row[-1], dict) else row for row in rows]
    return [(f[0], f[1], dict(zip(f[2::2], f[3::2], strict=True))) for f in fields]


def _condition_values(output: dict[str, Any], params: dict[str, str]) -> dict[str, bool]:
    """Evaluate the template's Conditions as CloudFormation would for these parameters."""
    values = {k: p.get("Default") for k, p in output["Parameters"].items()} | params
    conditions = output["Conditions"]

    def evaluate(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return values[arg]
        if fn == "Condition":
            return evaluate(conditions[arg])
        if fn == "Fn::Equals":
            return evaluate(arg[0]) == evaluate(arg[1])
        if fn == "Fn::Not":
            return not evaluate(arg[0])
        raise AssertionError(f"no evaluator for {fn}")

    return {name: evaluate(condition) for name, condition in conditions.items()}


def _resolve(node: Any, conditions: dict[str, bool]) -> Any:
    """Pick each ``Fn::If`` branch and drop ``AWS::NoValue``, as CloudFormation does."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        name, if_true, if_false = node["Fn::If"]
        return _resolve(if_true if conditions[name] else if_false, conditions)
    if isinstance(node, dict):
        resolved = {k: _resolve(v, conditions) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v != NO_VALUE}
    if isinstance(node, list):
        return [v for v in (_resolve(v, conditions) for v in node) if v != NO_VALUE]
    return node


def test_functions_emit_under_the_service_names_and_namespace_the_alarms_read(
    output: dict[str, Any],
) -> None:
    functions = _resources(output, "AWS::Lambda::Function").values()
    env = {
        f["Properties"]["Handler"]: f["Properties"]["Environment"]["Variables"] for f in functions
    }
    assert env["service.handler.handler"]["POWERTOOLS_SERVICE_NAME"] == LOOKUP_SERVICE
    assert env["loaders.build.handler"]["POWERTOOLS_SERVICE_NAME"] == BUILDER_SERVICE
    assert {json.dumps(e["POWERTOOLS_METRICS_NAMESPACE"]) for e in env.values()} == {
        json.dumps(NAMESPACE)
    }
    assert output["Parameters"]["MetricsNamespace"]["Default"] == DEFAULT_NAMESPACE


def test_alarms_read_custom_metrics_by_their_names_in_the_code(output: dict[str, Any]) -> None:
    read = set()
    for name, alarm in _alarms(output).items():
        for namespace, metric, dimensions in _alarm_metrics(alarm):
            if isinstance(namespace, str) and namespace.startswith("AWS/"):
                continue
            read.add(_check_custom_metric(namespace, metric, dimensions, name))
    assert read == {
        Metric.SNAPSHOT_AGE,
        Metric.BUILDS_ANNOUNCED,
        Metric.BUILDS_UNCHANGED,
        Metric.POINTER_CHECKS_REJECTED,
        Metric.POINTER_CHECKS_DEGRADED,
        Metric.POINTER_CHECKS_FAILED,
        Metric.BUILDS_REJECTED,
        Metric.BUILDS_FAILED,
    }


def test_dashboard_shows_every_metric_by_its_name_in_the_code(output: dict[str, Any]) -> None:
    # A literal namespace (say "CustomerLookup") is checked too, and fails: it would not follow
    # the parameter.
    shown = {
        _check_custom_metric(
            namespace, metric, dimensions, "dashboard", expected=_placeholder(NAMESPACE)
        )
        for namespace, metric, dimensions in _dashboard_metrics(output)
        if not namespace.startswith("AWS/")
    }
    assert shown == {m.value for m in Metric}


def test_dashboard_fills_in_region_and_this_stacks_resources(output: dict[str, Any]) -> None:
    widgets = [w for w in _dashboard(output)["widgets"] if w["type"] == "metric"]
    assert {w["properties"]["region"] for w in widgets} == {"<AWS::Region>"}
    functions = {d["FunctionName"] for ns, _, d in _dashboard_metrics(output) if ns == "AWS/Lambda"}
    assert functions == {"<LookupFunction>", "<BuilderFunction>"}
    # The API figures watch what the 5xx alarms watch.
    alarmed = {
        (metric, tuple((k, _placeholder(v)) for k, v in dimensions.items()))
        for alarm in _alarms(output).values()
        for namespace, metric, dimensions in _alarm_metrics(alarm)
        if namespace == "AWS/ApiGateway"
    }
    shown = {
        (metric, tuple(dimensions.items()))
        for namespace, metric, dimensions in _dashboard_metrics(output)
        if namespace == "AWS/ApiGateway"
    }
    assert shown == alarmed


def test_function_and_api_alarms_watch_this_stacks_resources(output: dict[str, Any]) -> None:
    resources = output["Resources"]
    rest_stage = next(
        s["Properties"]["StageName"]
        for s in _resources(output, "AWS::ApiGateway::Stage").values()
        if s["Properties"]["RestApiId"] == {"Ref": "RestApi"}
    )
    http_stage = next(
        s["Properties"]["StageName"]
        for s in _resources(output, "AWS::ApiGatewayV2::Stage").values()
        if s["Properties"]["ApiId"] == {"Ref": "HttpApi"}
    )
    rest = resources["RestApi"]["Properties"]
    rest_name = rest.get("Name", rest["Body"]["info"]["title"])
    lookup = {"Ref": "LookupFunction"}
    watched = sorted(
        (namespace, metric, dimensions)
        for alarm in _alarms(output).values()
        for namespace, metric, dimensions in _alarm_metrics(alarm)
        if isinstance(namespace, str) and namespace.startswith("AWS/")
    )
    assert watched == [
        ("AWS/ApiGateway", "5XXError", {"ApiName": rest_name, "Stage": rest_stage}),
        ("AWS/ApiGateway", "5xx", {"ApiId": {"Ref": "HttpApi"}, "Stage": http_stage}),
        ("AWS/Lambda", "Errors", {"FunctionName": lookup}),
        ("AWS/Lambda", "Throttles", {"FunctionName": lookup}),
    ]


def test_heartbeat_breaches_on_missing_data_and_the_others_do_not(output: dict[str, Any]) -> None:
    missing = {n: a["Properties"]["TreatMissingData"] for n, a in _alarms(output).items()}
    assert missing.pop("BuilderHeartbeatAlarm") == "breaching"
    assert missing["SnapshotTooOldAlarm"] == "notBreaching"
    assert set(missing.values()) == {"notBreaching"}


def test_staleness_alarm_reads_the_oldest_snapshot_served(output: dict[str, Any]) -> None:
    alarm = _alarms(output)["SnapshotTooOldAlarm"]["Properties"]
    assert alarm["MetricName"] == Metric.SNAPSHOT_AGE
    assert alarm["Statistic"] == "Maximum"  # a gauge: the oldest container counts, not a sum
    assert alarm["Threshold"] == {"Ref": "MaxStalenessSeconds"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def _schedule_hours(expression: str) -> float:
    """The period of a daily ``cron(M H * * ? *)`` or a ``rate(N unit)`` schedule, in hours."""
    if re.fullmatch(r"cron\(\d+ \d+ \* \* \? \*\)", expression):
        return 24
    count, unit = re.fullmatch(r"rate\((\d+) (minute|hour|day)s?\)", expression).groups()
    return int(count) * {"minute": 1 / 60, "hour": 1, "day": 24}[unit]


def test_heartbeat_window_outlasts_the_build_schedule(output: dict[str, Any]) -> None:
    alarm = _alarms(output)["BuilderHeartbeatAlarm"]["Properties"]
    (expression,) = [q["Expression"] for q in alarm["Metrics"] if q.get("ReturnData")]
    ids = {
        q["Id"]: q["MetricStat"]["Metric"]["MetricName"]
        for q in alarm["Metrics"]
        if "MetricStat" in q
    }
    # SUM over an array, not "a + b": a plus is missing wherever either series is.
    assert expression == f"SUM([{', '.join(ids)}])"
    assert set(ids.values()) == {Metric.BUILDS_ANNOUNCED, Metric.BUILDS_UNCHANGED}
    assert {q["MetricStat"]["Period"] for q in alarm["Metrics"] if "MetricStat" in q} == {3600}
    # Every hourly period of the window must be empty: "nothing for N hours".
    hours = {"Ref": "BuilderHeartbeatHours"}
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == hours
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "LessThanThreshold")
    params = output["Parameters"]
    builder_hours = output["Resources"]["BuilderFunction"]["Properties"]["Timeout"] / 3600
    schedule_hours = _schedule_hours(params["BuildSchedule"]["Default"])
    assert params["BuilderHeartbeatHours"]["Default"] > schedule_hours + builder_hours
    # CloudWatch refuses an evaluation range over 7 days.
    assert params["BuilderHeartbeatHours"]["MaxValue"] * 3600 <= 7 * 24 * 3600


@pytest.mark.parametrize("topic", ["", TOPIC])
def test_only_the_composite_alarm_notifies_and_only_to_a_given_topic(
    output: dict[str, Any], topic: str
) -> None:
    assert re.fullmatch(output["Parameters"]["AlarmTopicArn"]["AllowedPattern"], topic)
    conditions = _condition_values(output, {**PARAMS, "AlarmTopicArn": topic})
    alarms = _alarms(output) | _resources(output, "AWS::CloudWatch::CompositeAlarm")
    actions = {
        (name, key): value
        for name, alarm in alarms.items()
        for key, value in _resolve(alarm["Properties"], conditions).items()
        if key.endswith("Actions")
    }
    expected = [{"Ref": "AlarmTopicArn"}]
    assert actions == (
        {("PageAlarm", "AlarmActions"): expected, ("PageAlarm", "OKActions"): expected}
        if topic
        else {}
    )


def test_composite_alarm_is_an_or_of_every_other_alarm(output: dict[str, Any]) -> None:
    (composite,) = _resources(output, "AWS::CloudWatch::CompositeAlarm").values()
    rule = composite["Properties"]["AlarmRule"]["Fn::Sub"]
    term = r'ALARM\("\$\{(\w+)\.Arn\}"\)'
    assert re.fullmatch(f"{term}( OR {term})*", rule), rule
    named = re.findall(term, rule)
    assert sorted(named) == sorted(_alarms(output))
