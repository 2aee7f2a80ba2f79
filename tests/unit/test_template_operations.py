"""template.yaml, the operational side: spend limits as parameters that reach the code,
IAM scopes narrowed to what each part reads and writes, log retention everywhere, and
alarms on failed runs and dead-letter queues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation short-form tags (!Ref, !Sub, ...) as plain dicts."""


def _tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref": value} if suffix == "Ref" else {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _tag)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def functions(resources: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}


def policy_statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Inline statements of a function (SAM Policies) or an IAM role."""
    statements = []
    for policy in resource["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            statements += policy["Statement"]
        if isinstance(policy, dict) and "PolicyDocument" in policy:
            statements += policy["PolicyDocument"]["Statement"]
    return [s for s in statements if isinstance(s, dict) and "Effect" in s]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)


@pytest.fixture(scope="module")
def resources(template) -> dict[str, Any]:
    return template["Resources"]


def env(resources, logical_id: str) -> dict[str, Any]:
    return resources[logical_id]["Properties"]["Environment"]["Variables"]


# ------------------------------------------------------------------ spend limits


@pytest.mark.parametrize(
    ("parameter", "function", "variable"),
    [
        ("MaxTrainingTokens", "ValidateFunction", "MAX_TRAINING_TOKENS"),
        ("MaxTransformInstances", "ValidateFunction", "MAX_TRANSFORM_INSTANCES"),
        ("MaxTrainingSeconds", "ResolveSaeFunction", "MAX_TRAINING_SECONDS"),
        ("MaxConcurrentRuns", "WaitForCapacityFunction", "MAX_CONCURRENT_RUNS"),
    ],
)
def test_each_spend_limit_is_a_parameter_that_reaches_its_step(
    template, resources, parameter, function, variable
):
    spec = template["Parameters"][parameter]
    assert spec["Type"] == "Number" and spec["MinValue"] >= 1 and "MaxValue" in spec
    assert env(resources, function)[variable] == {"Ref": parameter}


def test_limit_defaults_match_the_code_defaults(template):
    from saeflow.core.run_policy import RunLimits
    from saeflow.steps.resolve_sae import ResolveSaeSettings
    from saeflow.steps.wait_for_capacity import CapacitySettings

    params = template["Parameters"]
    limits = RunLimits()
    assert params["MaxTrainingTokens"]["Default"] == limits.max_training_tokens
    assert params["MaxTransformInstances"]["Default"] == limits.max_transform_instances
    assert params["MaxTrainingSeconds"]["Default"] == ResolveSaeSettings().max_training_seconds
    assert params["MaxConcurrentRuns"]["Default"] == CapacitySettings().max_concurrent_runs
    # SageMaker's own ceiling for MaxRuntimeInSeconds is 28 days.
    assert params["MaxTrainingSeconds"]["MaxValue"] <= 28 * 86400


def test_the_capacity_gate_may_list_this_machines_executions_only(resources):
    machine = resources["PipelineStateMachine"]["Properties"]
    assert machine["Name"] == {"Fn::Sub": "${AWS::StackName}-pipeline"}
    (statement,) = policy_statements(resources["WaitForCapacityFunction"])
    assert statement["Action"] == "states:ListExecutions"
    assert statement["Resource"]["Fn::Sub"].endswith(":stateMachine:${AWS::StackName}-pipeline")


# ------------------------------------------------------------------ IAM scopes


def object_resources(resource: dict[str, Any], action: str) -> set[str]:
    found = set()
    for statement in policy_statements(resource):
        if action in as_list(statement["Action"]):
            for item in as_list(statement["Resource"]):
                text = item.get("Fn::Sub", item) if isinstance(item, dict) else item
                found.add(text if isinstance(text, str) else json.dumps(text))
    return {r.replace("${Bucket.Arn}/", "") for r in found}


def test_the_sagemaker_role_reads_and_writes_only_what_jobs_use(resources):
    role = resources["SageMakerExecutionRole"]
    assert object_resources(role, "s3:GetObject") == {
        "runs/*/input/*",
        "runs/*/steer/input.jsonl",
        "runs/*/sae-ref/*",
        "checkpoints/*",
        "saes/*",
        "corpora/*",
    }
    assert object_resources(role, "s3:PutObject") == {
        "runs/*/train/*",
        "runs/*/extract/*",
        "runs/*/steer/out/*",
        "checkpoints/*",
    }


@pytest.mark.parametrize(
    ("function", "reads", "writes"),
    [
        ("ValidateFunction", {"prompts/*"}, {"runs/*"}),
        ("ResolveSaeFunction", {"saes/*"}, {"runs/*/sae-ref/*"}),
        (
            "RegisterSaeFunction",
            {"runs/*/train/*", "runs/*/sae-candidate/*", "saes/*"},
            {"runs/*/sae-candidate/*", "saes/*"},
        ),
        ("LabelFeatureFunction", {"runs/*/features/*"}, {"runs/*/labels/*"}),
        ("WriteReportFunction", {"runs/*", "saes/*"}, {"reports/*", "runs/*/run.json"}),
        (
            "RecordFailureFunction",
            {"runs/*/run.json", "reports/*"},
            {"runs/*/run.json", "reports/*"},
        ),
    ],
)
def test_each_function_reads_and_writes_only_its_keys(resources, function, reads, writes):
    assert object_resources(resources[function], "s3:GetObject") == reads
    assert object_resources(resources[function], "s3:PutObject") == writes


def test_the_hf_token_secret_is_readable_by_the_jobs_and_resolve_sae_only(resources):
    readers = {
        logical_id
        for logical_id, resource in resources.items()
        if "secretsmanager" in json.dumps(resource.get("Properties", {}))
    }
    assert readers == {"SageMakerExecutionRole", "ResolveSaeFunction"}


# ------------------------------------------------------------------ logs and alarms


def test_every_log_group_has_a_retention_period(resources):
    groups = {k: v for k, v in resources.items() if v["Type"] == "AWS::Logs::LogGroup"}
    assert groups
    for logical_id, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, logical_id
    names = {json.dumps(g["Properties"]["LogGroupName"]) for g in groups.values()}
    assert '"/aws/sagemaker/TrainingJobs"' in names and '"/aws/sagemaker/TransformJobs"' in names


def test_every_function_logs_to_a_group_of_the_stack(resources):
    for logical_id, function in functions(resources).items():
        group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert resources[group]["Type"] == "AWS::Logs::LogGroup", logical_id
    machine = resources["PipelineStateMachine"]["Properties"]["Logging"]
    group = machine["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]
    assert group == {"Fn::GetAtt": "PipelineLogGroup.Arn"}


def alarms(resources) -> dict[str, dict[str, Any]]:
    return {
        k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"
    }


def test_an_alarm_fires_on_a_failed_run(resources):
    failed = [
        a
        for a in alarms(resources).values()
        if a.get("MetricName") == "ExecutionsFailed" and a.get("Namespace") == "AWS/States"
    ]
    (alarm,) = failed
    assert alarm["Dimensions"] == [
        {"Name": "StateMachineArn", "Value": {"Ref": "PipelineStateMachine"}}
    ]
    assert alarm["Threshold"] == 1 and alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


@pytest.mark.parametrize("queue", ["RunTriggerDeadLetterQueue", "StartRunFailedQueue"])
def test_an_alarm_watches_each_dead_letter_queue(resources, queue):
    watching = [
        a
        for a in alarms(resources).values()
        if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"
        and a["Dimensions"]
        == [{"Name": "QueueName", "Value": {"Fn::GetAtt": f"{queue}.QueueName"}}]
    ]
    assert len(watching) == 1 and watching[0]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert resources[queue]["Properties"]["MessageRetentionPeriod"] == 1209600


def test_start_run_failures_go_to_the_watched_queue(resources):
    config = resources["StartRunFunction"]["Properties"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": "StartRunFailedQueue.Arn"
    }
