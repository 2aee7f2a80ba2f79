"""template.yaml: the SAM template agrees with the ASL and functions/, is least-privilege,
passes cfn-lint, `sam validate --lint` and `sam build` (without Docker), and carries the
operational side: spend limits that reach the code, log retention, alarms."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import asl_rules

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
ASL_PATH = ROOT / "statemachine" / "pipeline.asl.json"
TOOLS_BIN = ROOT / ".venv-tools" / "bin"
STEP_FUNCTIONS = {
    "ValidateFunction": "validate",
    "ResolveSaeFunction": "resolve_sae",
    "RegisterSaeFunction": "register_sae",
    "AggregateFunction": "aggregate",
    "LabelFeatureFunction": "label_feature",
    "WriteReportFunction": "write_report",
    "RecordFailureFunction": "record_failure",
    "WaitForCapacityFunction": "wait_for_capacity",
    "SummarizeShardFunction": "summarize_shard",
    "MergePartialsFunction": "merge_partials",
}


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


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE_PATH.read_text(), Loader=CfnLoader)


@pytest.fixture(scope="module")
def resources(template) -> dict[str, Any]:
    return template["Resources"]


def tool(name: str) -> str:
    # The project's pinned tools first (make test installs them), then PATH.
    found = str(TOOLS_BIN / name) if (TOOLS_BIN / name).is_file() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (make test installs it in .venv-tools)")
    return found


def run_tool(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def functions(resources) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}


def policy_statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Inline statements of a function/state machine (SAM Policies) or an IAM role."""
    props = resource["Properties"]
    statements = []
    for policy in props.get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            statements += policy["Statement"]
        if isinstance(policy, dict) and "PolicyDocument" in policy:
            statements += policy["PolicyDocument"]["Statement"]
    return [s for s in statements if isinstance(s, dict) and "Effect" in s]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------ tools


def test_cfn_lint_passes():
    done = run_tool(tool("cfn-lint"), str(TEMPLATE_PATH))
    assert done.returncode == 0, done.stdout + done.stderr


def test_sam_validate_lint_passes():
    done = run_tool(tool("sam"), "validate", "--lint", "--template-file", str(TEMPLATE_PATH))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


def test_sam_build_without_docker_packages_saeflow_and_no_torch(tmp_path):
    sam = tool("sam")
    done = run_tool(
        sam,
        "build",
        "--template-file",
        str(TEMPLATE_PATH),
        "--build-dir",
        str(tmp_path / "build"),
        "--cache-dir",
        str(tmp_path / "cache"),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    build = tmp_path / "build"
    layer = build / "SaeflowCoreLayer" / "python"
    assert (layer / "saeflow" / "steps" / "validate.py").is_file()
    assert (layer / "aws_lambda_powertools").is_dir() and (layer / "pydantic_core").is_dir()
    # resolve_sae's pretrained-SAE check: SAELens's registry as data, and the hub client.
    assert (layer / "saeflow" / "data" / "pretrained_saes.yaml").stat().st_size > 100_000
    assert (layer / "yaml").is_dir()
    assert list(layer.glob("pydantic_core/*aarch64*.so")), "wheels must match the arm64 runtime"
    # write_report and record_failure render from package data with jinja2.
    assert (layer / "saeflow/core/report/templates/sections/cards.html.j2").is_file()
    assert list(layer.glob("markupsafe/*aarch64*.so")) and (layer / "jinja2").is_dir()
    for logical_id in [*STEP_FUNCTIONS, "StartRunFunction"]:
        assert (build / logical_id / "app.py").is_file(), logical_id
    found = [p for p in build.rglob("torch") if p.is_dir()]
    assert not found, f"a Lambda package holds torch: {found}"
    size_mb = sum(p.stat().st_size for p in layer.rglob("*") if p.is_file()) / 2**20
    assert size_mb < 200, f"layer is {size_mb:.0f} MB unzipped (Lambda allows 250 with code)"
    # validate counts tokens: the tokenizers library and the default model's tokenizer.
    (binary,) = layer.glob("tokenizers/*.so")
    assert binary.read_bytes()[18:20] == b"\xb7\x00", "tokenizers must be built for arm64"
    assert (layer / "saeflow" / "data" / "smollm2-135m-instruct.tokenizer.json.gz").is_file()
    # summarize_shard writes Parquet: pyarrow in a layer of its own, pruned, and the two
    # layers together within Lambda's 250 MB.
    parquet = build / "ParquetLayer" / "python"
    assert list(parquet.glob("pyarrow/_parquet*aarch64*.so"))
    assert not list(parquet.glob("pyarrow/*flight*")) and not (parquet / "pyarrow/tests").exists()
    parquet_mb = sum(p.stat().st_size for p in parquet.rglob("*") if p.is_file()) / 2**20
    assert size_mb + parquet_mb < 240, f"{size_mb:.0f} + {parquet_mb:.0f} MB unzipped"


# ------------------------------------------------------------------ wiring


def test_definition_substitutions_match_the_asl_placeholders_exactly(resources):
    machine = resources["PipelineStateMachine"]["Properties"]
    assert machine["DefinitionUri"] == "statemachine/pipeline.asl.json"
    placeholders = asl_rules.placeholders(ASL_PATH.read_text())
    assert set(machine["DefinitionSubstitutions"]) == placeholders


def test_every_function_arn_substitution_names_a_function_with_a_handler(resources):
    substitutions = resources["PipelineStateMachine"]["Properties"]["DefinitionSubstitutions"]
    for key, value in substitutions.items():
        if not key.endswith("FunctionArn"):
            continue
        logical_id = key.removesuffix("Arn")
        assert value == {"Fn::GetAtt": f"{logical_id}.Arn"}, key
        assert logical_id in resources, key
    referenced = {k.removesuffix("Arn") for k in substitutions if k.endswith("FunctionArn")}
    assert referenced == set(STEP_FUNCTIONS)


def test_every_function_has_code_and_a_handler_and_every_handler_a_function(resources):
    declared = set()
    for logical_id, function in functions(resources).items():
        props = function["Properties"]
        code = ROOT / props["CodeUri"]
        module_file, attribute = props["Handler"].split(".")
        assert (code / f"{module_file}.py").is_file(), logical_id
        module = importlib.import_module(f"functions.{code.name}.{module_file}")
        assert callable(getattr(module, attribute)), logical_id
        declared.add(code.name)
    on_disk = {p.parent.name for p in (ROOT / "functions").glob("*/app.py")}
    assert declared == on_disk
    assert {v for v in STEP_FUNCTIONS.values()} | {"start_run"} == declared


def test_the_layer_takes_the_registry_of_the_workers_sae_lens():
    makefile = (ROOT / "infra" / "lambda_layer" / "Makefile").read_text()
    pinned = re.search(r'"sae-lens==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and f"SAE_LENS_VERSION = {pinned.group(1)}" in makefile


def test_lambda_packages_never_import_torch():
    code = "\n".join(p.read_text() for p in (ROOT / "functions").glob("*/app.py"))
    assert "torch" not in code and "gpu_worker" not in code
    requirements = (ROOT / "functions" / "requirements.txt").read_text()
    assert "torch" not in requirements.split("#")[0] and "aws-lambda-powertools" in requirements


def test_globals_set_runtime_service_name_and_log_level(template):
    function = template["Globals"]["Function"]
    assert function["Runtime"] == "python3.11"
    assert function["Tracing"] == "Active"
    variables = function["Environment"]["Variables"]
    assert variables["POWERTOOLS_SERVICE_NAME"] == "saeflow"
    assert variables["LOG_LEVEL"] == "INFO"


def test_parameters_and_outputs(template):
    assert {
        "WorkerImageUri",
        "TrainInstanceType",
        "TransformInstanceType",
        "MaxTransformInstances",
        "BedrockModelId",
        "LabelModelIds",
        "LabelConcurrency",
        "LabelMaxFeatures",
        "LabelMaxUsd",
        "MaxPrompts",
        "MaxFileMB",
        "MaxPromptTokens",
        "HuggingFaceTokenSecretArn",
    } <= set(template["Parameters"])
    assert template["Parameters"]["MaxPrompts"]["Default"] == 10000
    assert template["Parameters"]["MaxFileMB"]["Default"] == 50
    assert template["Parameters"]["MaxPromptTokens"]["Default"] == 512
    assert template["Parameters"]["HuggingFaceTokenSecretArn"]["Default"] == ""
    assert {"BucketName", "StateMachineArn", "LabelTableName", "EventBusName"} <= set(
        template["Outputs"]
    )


def test_every_template_parameter_reaches_a_resource(template):
    body = json.dumps(template["Resources"]) + json.dumps(template.get("Conditions", {}))
    for name in template["Parameters"]:
        assert re.search(rf'"Ref": "{name}"|\$\{{{name}\}}', body), f"{name} is unused"


def test_the_trigger_is_s3_object_created_under_prompts_to_start_run(resources):
    rule = resources["PromptUploadedRule"]["Properties"]
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["bucket"]["name"] == [{"Ref": "Bucket"}]
    assert pattern["detail"]["object"]["key"] == [{"prefix": "prompts/"}]
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": "StartRunFunction.Arn"}
    # Undeliverable events are kept in a queue the rule (and only it) may write to.
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": "RunTriggerDeadLetterQueue.Arn"}
    policy = resources["RunTriggerDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    (statement,) = policy["Statement"]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": "PromptUploadedRule.Arn"
    }
    permission = resources["StartRunInvokedByRule"]["Properties"]
    assert permission["SourceArn"] == {"Fn::GetAtt": "PromptUploadedRule.Arn"}
    env = resources["StartRunFunction"]["Properties"]["Environment"]["Variables"]
    assert env["STATE_MACHINE_ARN"] == {"Ref": "PipelineStateMachine"}


# ------------------------------------------------------------------ storage


def test_bucket_is_private_encrypted_versioned_and_emits_events(resources):
    props = resources["Bucket"]["Properties"]
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["NotificationConfiguration"]["EventBridgeConfiguration"] == {
        "EventBridgeEnabled": True
    }
    runs_rule = next(
        r for r in props["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "runs/"
    )
    assert runs_rule["Status"] == "Enabled" and "ExpirationInDays" in runs_rule


def test_bucket_policy_denies_every_request_without_tls(resources):
    (statement,) = resources["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert len(statement["Resource"]) == 2  # the bucket and its objects


def test_label_table_is_keyed_by_weights_model_prompt_and_feature(resources):
    props = resources["LabelTable"]["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "sae_key", "KeyType": "HASH"},
        {"AttributeName": "feature", "KeyType": "RANGE"},
    ]
    assert {"AttributeName": "feature", "AttributeType": "N"} in props["AttributeDefinitions"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    # The runs' spend counters expire; labels carry no expires_at and stay.
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert resources["LabelTable"]["UpdateReplacePolicy"] == "Retain"


# ------------------------------------------------------------------ least privilege


def all_statements(resources) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for logical_id, resource in resources.items():
        if resource["Type"] in (
            "AWS::Serverless::Function",
            "AWS::Serverless::StateMachine",
            "AWS::IAM::Role",
        ):
            found += [(logical_id, s) for s in policy_statements(resource)]
    return found


def resource_strings(statement: dict[str, Any]) -> list[str]:
    return [json.dumps(r) for r in as_list(statement.get("Resource", []))]


def test_no_statement_allows_every_action_or_a_service_wildcard(resources):
    for logical_id, statement in all_statements(resources):
        actions = as_list(statement["Action"])
        assert "*" not in actions, logical_id
        assert not any(a.endswith(":*") for a in actions), f"{logical_id}: {actions}"


def test_star_resources_only_for_actions_without_resource_level_permissions(resources):
    allowed_on_star = {
        "ecr:GetAuthorizationToken",
        "cloudwatch:PutMetricData",
        "logs:CreateLogDelivery",
        "logs:GetLogDelivery",
        "logs:UpdateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
    }
    for logical_id, statement in all_statements(resources):
        if "*" in as_list(statement.get("Resource")):
            assert set(as_list(statement["Action"])) <= allowed_on_star, logical_id


def test_object_access_is_scoped_to_prefixes(resources):
    expected = {
        "ValidateFunction": {"prompts", "runs"},
        "ResolveSaeFunction": {"saes", "runs"},
        "RegisterSaeFunction": {"saes", "runs"},
        "AggregateFunction": {"saes", "runs"},
        "LabelFeatureFunction": {"runs"},
        "WriteReportFunction": {"saes", "runs", "reports"},
        "RecordFailureFunction": {"runs", "reports"},
        "SageMakerExecutionRole": {"saes", "runs", "corpora", "checkpoints"},
    }
    writes = {
        "ValidateFunction": {"runs"},
        "RegisterSaeFunction": {"saes", "runs"},
        "WriteReportFunction": {"reports", "runs"},  # runs/*/run.json: status only
        "RecordFailureFunction": {"runs", "reports"},
        "SageMakerExecutionRole": {"runs", "checkpoints"},
    }
    for logical_id, prefixes in expected.items():
        seen, written = set(), set()
        for statement in policy_statements(resources[logical_id]):
            actions = as_list(statement["Action"])
            for resource in resource_strings(statement):
                match = re.search(r"Bucket\.Arn\}/([a-z]+)/\*", resource)
                if "Bucket.Arn}/*" in resource:
                    pytest.fail(f"{logical_id}: object access to the whole bucket")
                if match:
                    seen.add(match.group(1))
                    if "s3:PutObject" in actions:
                        written.add(match.group(1))
        assert seen == prefixes, logical_id
        if logical_id in writes:
            assert written == writes[logical_id], logical_id
        if logical_id in ("ResolveSaeFunction", "AggregateFunction", "LabelFeatureFunction"):
            assert "saes" not in written and "reports" not in written, logical_id


def test_state_machine_role_is_scoped(resources):
    machine = resources["PipelineStateMachine"]["Properties"]
    invoked = {
        p["LambdaInvokePolicy"]["FunctionName"]["Ref"]
        for p in machine["Policies"]
        if isinstance(p, dict) and "LambdaInvokePolicy" in p
    }
    assert invoked == set(STEP_FUNCTIONS)
    statements = {s["Sid"]: s for s in policy_statements(resources["PipelineStateMachine"])}
    for resource in resource_strings(statements["SageMakerJobs"]):
        assert re.search(r":(training-job|transform-job|model)/sf-\*", resource), resource
    pass_role = statements["PassSageMakerRole"]
    assert pass_role["Resource"] == {"Fn::GetAtt": "SageMakerExecutionRole.Arn"}
    assert pass_role["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }
    rules = " ".join(resource_strings(statements["SyncManagedRules"]))
    assert "StepFunctionsGetEventsForSageMakerTrainingJobsRule" in rules
    assert "StepFunctionsGetEventsForSageMakerTransformJobsRule" in rules
    assert statements["ReportReadyEvent"]["Resource"] == {"Fn::GetAtt": "ReportEventBus.Arn"}


def test_state_machine_logs_and_traces(resources):
    machine = resources["PipelineStateMachine"]["Properties"]
    assert machine["Tracing"] == {"Enabled": True}
    assert machine["Logging"]["Level"] in ("ERROR", "ALL")
    assert machine["Type"] == "STANDARD"  # .sync jobs run for hours


def resolved_statements(logical_id: str, **parameters: str) -> dict[str, dict[str, Any]]:
    """A function's policy statements with every intrinsic resolved, as CloudFormation
    would for these parameter values (the embedded mode's resolver)."""
    from infra.local.template import _physical_names, _Resolver, load_template

    template = load_template(TEMPLATE_PATH)
    values = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    values.update(parameters)
    pseudo = {
        "AWS::Region": "us-east-1",
        "AWS::AccountId": "123456789012",
        "AWS::Partition": "aws",
        "AWS::StackName": "s",
        "AWS::NoValue": "",
    }
    refs, arns = _physical_names(template["Resources"], "s", "b", "us-east-1", "123456789012")
    resolver = _Resolver(template, values, refs, arns, pseudo)
    resolved = resolver.value(template["Resources"][logical_id])
    return {s["Sid"]: s for s in policy_statements(resolved) if "Sid" in s}


PROFILE = "us.anthropic.claude-haiku-4-5-20251001-v1:0"


def test_label_function_may_invoke_exactly_the_configured_models():
    statements = resolved_statements("LabelFeatureFunction")
    invoke = statements["InvokeLabelModels"]
    assert invoke["Action"] == "bedrock:InvokeModel"
    assert set(invoke["Resource"]) == {
        f"arn:aws:bedrock:us-east-1::foundation-model/{PROFILE}",
        f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}",
    }
    routed = statements["InvokeThroughLabelProfiles"]
    assert routed["Resource"] == "arn:aws:bedrock:*::foundation-model/*"
    assert set(routed["Condition"]["StringEquals"]["bedrock:InferenceProfileArn"]) == {
        f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}"
    }
    # With an allow-list and another Bedrock Region: those models too, and nothing else.
    extra = "anthropic.claude-sonnet-4-5-20250929-v1:0,eu.anthropic.claude-3-haiku-20240307-v1:0"
    statements = resolved_statements(
        "LabelFeatureFunction", LabelModelIds=extra, BedrockRegion="eu-west-1"
    )
    models = {PROFILE, *extra.split(",")}
    assert set(statements["InvokeLabelModels"]["Resource"]) == {
        f"arn:aws:bedrock:eu-west-1:{a}/{m}"
        for m in models
        for a in (":foundation-model", "123456789012:inference-profile")
    }
    assert set(
        statements["InvokeThroughLabelProfiles"]["Condition"]["StringEquals"][
            "bedrock:InferenceProfileArn"
        ]
    ) == {f"arn:aws:bedrock:eu-west-1:123456789012:inference-profile/{m}" for m in models}


def test_validate_gets_the_allow_list_of_label_models():
    from infra.local.stack import local_definition

    extra = "anthropic.claude-sonnet-4-5-20250929-v1:0"
    definition = local_definition(parameter_overrides={"LabelModelIds": extra})
    validate = next(f for f in definition.functions if f.logical_id == "ValidateFunction")
    assert validate.environment["LABEL_MODEL_IDS"] == f"{PROFILE},{extra}"


def test_model_parameters_accept_claude_ids_only(template):
    pattern = re.compile(template["Parameters"]["BedrockModelId"]["AllowedPattern"])
    assert pattern.match(PROFILE) and pattern.match("anthropic.claude-3-5-haiku-20241022-v1:0")
    assert not pattern.match("*") and not pattern.match("meta.llama3-70b-instruct-v1:0")
    assert not pattern.match("anthropic.*")
    ids = re.compile(template["Parameters"]["LabelModelIds"]["AllowedPattern"])
    assert ids.match("") and ids.match(f"{PROFILE},anthropic.claude-3-haiku-20240307-v1:0")
    assert not ids.match(",".join([PROFILE] * 4))  # at most three more
    assert not ids.match("anthropic.claude-x,*")


def test_label_function_registry_access_and_timeout(resources):
    from saeflow.adapters.bedrock_labeler import worst_case_request_s

    props = resources["LabelFeatureFunction"]["Properties"]
    statements = {s["Sid"]: s for s in policy_statements(resources["LabelFeatureFunction"])}
    # Only the DynamoDB actions saeflow.adapters.dynamo_registry uses, on the one table:
    # get and conditional put of labels, atomic adds to the run's spend counter.
    registry = statements["LabelRegistry"]
    assert sorted(registry["Action"]) == [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ]
    assert registry["Resource"] == {"Fn::GetAtt": "LabelTable.Arn"}
    dynamodb = {
        a for _, st in all_statements(resources) for a in as_list(st["Action"]) if "dynamodb" in a
    }
    assert dynamodb == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"}
    policies = [p for f in functions(resources).values() for p in f["Properties"]["Policies"]]
    assert not [p for p in policies if isinstance(p, dict) and "DynamoDBCrudPolicy" in p]
    # The client gives up (and the step stops starting requests) before Lambda does.
    assert props["Timeout"] > worst_case_request_s() + 30


def test_sagemaker_role_is_assumed_by_sagemaker_only(resources):
    trust = resources["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}


def test_the_scale_and_cost_notes_quote_the_parameters_defaults(template):
    """The notes at the top of template.yaml and in the README estimate from the defaults;
    a default changed without them would make the estimates wrong."""
    comments = TEMPLATE_PATH.read_text().split("Parameters:")[0].replace("#", " ")
    notes = " ".join(comments.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    default = {name: spec.get("Default") for name, spec in template["Parameters"].items()}
    prompts, megabytes = default["MaxPrompts"], default["MaxFileMB"]
    assert f"defaults ({prompts // 1000}k prompts, {megabytes} MB)" in notes
    assert f"default limits ({prompts:,} prompts, {megabytes} MB)" in readme
    assert f"a 2B model on {default['TransformInstanceType']}" in notes
    assert f"MaxTransformInstances={default['MaxTransformInstances']}" in notes
    assert f"{default['LabelMaxFeatures']} features on Claude Haiku" in notes


# ------------------------------------------------------------------ operations: limits,
# IAM scopes narrowed to what each part reads and writes, log retention, alarms


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
        ("PromptsPerShard", "ValidateFunction", "PROMPTS_PER_SHARD"),
        ("ReduceBatchSize", "ValidateFunction", "REDUCE_BATCH_SIZE"),
        ("MapConcurrency", "ValidateFunction", "MAP_CONCURRENCY"),
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
    from saeflow.steps.validate import ValidateSettings
    from saeflow.steps.wait_for_capacity import CapacitySettings

    params = template["Parameters"]
    limits = RunLimits()
    assert params["MaxTrainingTokens"]["Default"] == limits.max_training_tokens
    assert params["MaxTransformInstances"]["Default"] == limits.max_transform_instances
    assert params["MaxTrainingSeconds"]["Default"] == ResolveSaeSettings().max_training_seconds
    assert params["MaxConcurrentRuns"]["Default"] == CapacitySettings().max_concurrent_runs
    validate = ValidateSettings()
    assert params["PromptsPerShard"]["Default"] == validate.shard_size
    assert params["ReduceBatchSize"]["Default"] == validate.reduce_batch_size
    assert params["MapConcurrency"]["Default"] == validate.map_concurrency
    assert params["TransformInstanceType"]["Default"] == validate.transform_instance_type
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
        # Its labels and progress files are read back when a Map item is retried.
        (
            "LabelFeatureFunction",
            {"runs/*/features/*", "runs/*/labels/*"},
            {"runs/*/labels/*"},
        ),
        (
            "SummarizeShardFunction",
            {"runs/*/extract/*"},
            {"runs/*/partials/*", "tables/*"},
        ),
        ("MergePartialsFunction", {"runs/*/partials/*"}, {"runs/*/partials/batches/*"}),
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
    # validate counts long prompts with the model's tokenizer (gated on the hub).
    assert readers == {"SageMakerExecutionRole", "ResolveSaeFunction", "ValidateFunction"}


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


# ------------------------------------------------------------------ scale out (issue 10)


def test_the_glue_tables_declare_the_columns_the_parquet_files_have(resources):
    from saeflow.core import layout
    from saeflow.core.tables import PARTITION_COLUMN, PROMPT_COLUMNS, TOKEN_FEATURE_COLUMNS

    tables = {
        "TokenFeaturesTable": (layout.TOKEN_FEATURES_TABLE, TOKEN_FEATURE_COLUMNS),
        "PromptsTable": (layout.PROMPTS_TABLE, PROMPT_COLUMNS),
    }
    for logical_id, (name, columns) in tables.items():
        table = resources[logical_id]["Properties"]
        assert table["DatabaseName"] == {"Ref": "GlueDatabase"}
        spec = table["TableInput"]
        assert spec["Name"] == name
        storage = spec["StorageDescriptor"]
        assert [(c["Name"], c["Type"]) for c in storage["Columns"]] == list(columns)
        assert [(c["Name"], c["Type"]) for c in spec["PartitionKeys"]] == [PARTITION_COLUMN]
        assert storage["Location"] == {"Fn::Sub": f"s3://${{Bucket}}/{layout.table_prefix(name)}"}
        assert "parquet" in storage["SerdeInfo"]["SerializationLibrary"].lower()
        # Partition projection: a run's files are queryable as soon as they exist.
        parameters = spec["Parameters"]
        assert parameters["projection.enabled"] == "true"
        assert parameters["projection.run_id.type"] == "injected"
        location = layout.table_partition_prefix(name, "${!run_id}")
        assert parameters["storage.location.template"] == {
            "Fn::Sub": f"s3://${{Bucket}}/{location}"
        }


def test_queries_have_a_workgroup_whose_results_expire(resources):
    group = resources["QueryWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert group["ResultConfiguration"]["OutputLocation"] == {
        "Fn::Sub": "s3://${Bucket}/athena-results/"
    }
    rules = resources["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(r.get("Prefix") == "athena-results/" and r["ExpirationInDays"] <= 30 for r in rules)


def test_only_the_shard_function_carries_pyarrow(resources):
    with_parquet = {
        logical_id
        for logical_id, function in functions(resources).items()
        if {"Ref": "ParquetLayer"} in function["Properties"].get("Layers", [])
    }
    assert with_parquet == {"SummarizeShardFunction"}
    assert resources["ParquetLayer"]["Metadata"]["BuildMethod"] == "makefile"


def test_the_distributed_maps_may_read_the_manifest_and_run_their_children(resources):
    statements = {s["Sid"]: s for s in policy_statements(resources["PipelineStateMachine"])}
    assert statements["DistributedMapItems"]["Action"] == "s3:GetObject"
    assert statements["DistributedMapItems"]["Resource"] == {
        "Fn::Sub": "${Bucket.Arn}/runs/*/shards.json"
    }
    children = statements["DistributedMapChildren"]
    assert children["Action"] == "states:StartExecution"
    assert children["Resource"]["Fn::Sub"].endswith(":stateMachine:${AWS::StackName}-pipeline")
    executions = statements["DistributedMapChildExecutions"]
    assert executions["Resource"]["Fn::Sub"].endswith(":execution:${AWS::StackName}-pipeline/*")
