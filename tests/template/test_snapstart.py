"""template.yaml, transformed offline as in test_template.py: SnapStart on published versions,
and every caller of the lookup function (both APIs, the schedule, the invoke policy) on the
alias SAM publishes, never on the unqualified function ($LATEST)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.template.test_template import _transformed

ALIAS = "LookupFunctionAliaslive"
ALIAS_REF = {"Ref": ALIAS}
UNQUALIFIED_SUBS = ("${LookupFunction}", "${LookupFunction.Arn}")


def _of_type(output: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in output["Resources"].items() if v["Type"] == kind}


def _resolve_if(value: Any, conditions: dict[str, bool]) -> Any:
    """``value`` with each ``Fn::If`` on a known condition replaced by its chosen branch."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        name, when_true, when_false = value["Fn::If"]
        return _resolve_if(when_true if conditions[name] else when_false, conditions)
    if isinstance(value, dict):
        return {k: _resolve_if(v, conditions) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_if(v, conditions) for v in value]
    return value


def _references(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every place under ``value`` that names the unqualified lookup function."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        if value in ({"Ref": "LookupFunction"}, {"Fn::GetAtt": ["LookupFunction", "Arn"]}):
            return [(path, value)]
        for key, child in value.items():
            found += _references(child, f"{path}/{key}")
    elif isinstance(value, list):
        for n, child in enumerate(value):
            found += _references(child, f"{path}/{n}")
    elif isinstance(value, str) and any(n in value for n in UNQUALIFIED_SUBS):
        found.append((path, value))
    return found


@pytest.mark.parametrize(("switch", "apply_on"), [("on", "PublishedVersions"), ("off", "None")])
def test_snapstart_applies_to_published_versions_unless_switched_off(
    switch: str, apply_on: str
) -> None:
    output = _transformed(LookupSnapStart=switch)
    snap_start = output["Resources"]["LookupFunction"]["Properties"]["SnapStart"]

    assert _resolve_if(snap_start, {"UseSnapStart": switch == "on"}) == {"ApplyOn": apply_on}


def test_snapstart_is_on_by_default(output: dict[str, Any]) -> None:
    assert output["Parameters"]["LookupSnapStart"]["Default"] == "on"
    assert output["Conditions"]["UseSnapStart"] == {
        "Fn::Equals": [{"Ref": "LookupSnapStart"}, "on"]
    }


def test_each_deploy_publishes_a_version_behind_the_alias_live(output: dict[str, Any]) -> None:
    [version] = _of_type(output, "AWS::Lambda::Version").values()
    alias = output["Resources"][ALIAS]

    assert version["Properties"]["FunctionName"] == {"Ref": "LookupFunction"}
    assert alias["Type"] == "AWS::Lambda::Alias"
    assert alias["Properties"]["Name"] == "live"
    assert alias["Properties"]["FunctionVersion"]["Fn::GetAtt"][1] == "Version"


@pytest.mark.parametrize("api", ["RestApi", "HttpApi"])
def test_every_api_integration_invokes_the_alias(output: dict[str, Any], api: str) -> None:
    paths = output["Resources"][api]["Properties"]["Body"]["paths"]
    uris = [
        operation["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
        for operations in paths.values()
        for operation in operations.values()
        if isinstance(operation, dict) and "x-amazon-apigateway-integration" in operation
    ]

    assert len(uris) == 3
    assert all(f"/functions/${{{ALIAS}}}/invocations" in uri for uri in uris), uris


def test_every_invoke_permission_names_the_alias(output: dict[str, Any]) -> None:
    permissions = {
        name: p["Properties"]
        for name, p in _of_type(output, "AWS::Lambda::Permission").items()
        if name.startswith("LookupFunction")
    }

    # Three routes on each API, and the schedule.
    assert len(permissions) == 7
    assert {name: p["FunctionName"] for name, p in permissions.items()} == dict.fromkeys(
        permissions, ALIAS_REF
    )


def test_the_schedule_targets_the_alias(output: dict[str, Any]) -> None:
    targets = [
        target
        for name, rule in _of_type(output, "AWS::Events::Rule").items()
        if name.startswith("LookupFunction")
        for target in rule["Properties"]["Targets"]
    ]

    assert [t["Arn"] for t in targets] == [ALIAS_REF]


def test_nothing_invokes_the_unqualified_function(output: dict[str, Any]) -> None:
    # Allowed: the version and alias are published from it, alarms and the dashboard read its
    # metrics (by function name), and an output names it as what not to invoke.
    allowed_types = {"AWS::Lambda::Version", "AWS::Lambda::Alias", "AWS::CloudWatch::Alarm",
                     "AWS::CloudWatch::Dashboard"}  # fmt: skip
    found = [
        (name, path, value)
        for name, resource in output["Resources"].items()
        if resource["Type"] not in allowed_types
        for path, value in _references(resource.get("Properties", {}))
    ]
    outputs = [name for name, out in output["Outputs"].items() if _references(out["Value"])]

    assert found == []
    assert outputs == ["LookupFunctionArn"]


def test_invoke_policy_allows_only_invoking_the_alias(output: dict[str, Any]) -> None:
    [policy] = _of_type(output, "AWS::IAM::ManagedPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]

    assert [(s["Effect"], s["Action"], s["Resource"]) for s in statements] == [
        ("Allow", "lambda:InvokeFunction", ALIAS_REF)
    ]
    assert not any("Condition" in s or "NotAction" in s or "NotResource" in s for s in statements)


def test_invoke_policy_is_attached_to_no_role_of_this_stack(output: dict[str, Any]) -> None:
    text = json.dumps(_of_type(output, "AWS::IAM::Role"))

    assert "LookupInvokePolicy" not in text


def test_outputs_give_the_alias_arn_and_the_invoke_policy(output: dict[str, Any]) -> None:
    outputs = output["Outputs"]

    assert outputs["LookupAliasArn"]["Value"] == ALIAS_REF
    assert outputs["LookupInvokePolicyArn"]["Value"] == {"Ref": "LookupInvokePolicy"}
