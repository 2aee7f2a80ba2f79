"""The state machine definition: structure, contracts with the steps, and the validator itself."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from infra import asl_check, asl_rules

ROOT = Path(__file__).resolve().parents[2]
ASL_PATH = ROOT / "statemachine" / "pipeline.asl.json"
LAMBDA_RETRY_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
# Errors of the user's input or of the run itself: retrying cannot help.
NEVER_RETRIED = {
    "InvalidPromptSet",
    "PromptSetTooLarge",
    "UnsupportedPromptFile",
    "InvalidRunOptions",
    "InvalidHook",
    "PromptTooLong",
    "SaeNotFound",
    "QualityGateFailed",
    "States.ALL",
    "States.TaskFailed",
}


@pytest.fixture(scope="module")
def text() -> str:
    return ASL_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def asl(text) -> dict:
    return json.loads(text)


def all_states(asl: dict) -> dict[str, dict]:
    states = dict(asl["States"])
    for state in asl["States"].values():
        if state["Type"] == "Map":
            states.update(state["ItemProcessor"]["States"])
    return states


def path_of(asl: dict, start: str, choose: dict[str, str]) -> list[str]:
    """The happy path from ``start``, taking ``choose[state]`` at Choice states."""
    states, name, seen = asl["States"], start, []
    while True:
        seen.append(name)
        state = states[name]
        if state["Type"] in ("Succeed", "Fail") or state.get("End"):
            return seen
        name = choose[name] if state["Type"] == "Choice" else state["Next"]


def test_the_definition_passes_every_checker(text):
    assert asl_check.problems(text) == []


def test_training_path_runs_every_step_in_order(asl):
    steps = path_of(
        asl,
        asl["StartAt"],
        {
            "NeedsTraining": "HasTrainingCorpus",
            "HasTrainingCorpus": "TrainSae",
            "ManyPartials": "MergePartials",
            "HasSteering": "SteerFeatures",
        },
    )
    assert steps == [
        "Validate",
        "ResolveSae",
        "WaitForCapacity",
        "NeedsTraining",
        "HasTrainingCorpus",
        "TrainSae",
        "RegisterSae",
        "CreateExtractModel",
        "ExtractFeatures",
        "SummarizeShards",
        "ManyPartials",
        "MergePartials",
        "Aggregate",
        "PrepareLabeling",
        "LabelFeatures",
        "HasSteering",
        "SteerFeatures",
        "DeleteExtractModel",
        "WriteReport",
        "EmitReportReady",
        "RunSucceeded",
    ]


def test_cached_sae_without_steering_skips_training_and_steering(asl):
    steps = path_of(
        asl,
        asl["StartAt"],
        {
            "NeedsTraining": "CreateExtractModel",
            "ManyPartials": "Aggregate",
            "HasSteering": "DeleteExtractModel",
        },
    )
    assert "TrainSae" not in steps and "SteerFeatures" not in steps
    assert "MergePartials" not in steps and "SummarizeShards" in steps
    assert steps[-4:] == ["DeleteExtractModel", "WriteReport", "EmitReportReady", "RunSucceeded"]


def test_choices_read_the_pieces_the_steps_return(asl):
    states = asl["States"]
    assert states["NeedsTraining"]["Choices"] == [
        {"Variable": "$.sae.mode", "StringEquals": "train", "Next": "HasTrainingCorpus"}
    ]
    assert states["HasSteering"]["Choices"][0]["Variable"] == "$.aggregate.has_steering"
    assert (
        states["HasTrainingCorpus"]["Choices"][0]["Variable"]
        == "$.sae.training.input_data_config[0]"
    )


def test_lambda_tasks_use_function_arns_and_store_their_piece(asl):
    expected = {
        "Validate": ("ValidateFunctionArn", "$.run"),
        "ResolveSae": ("ResolveSaeFunctionArn", "$.sae"),
        "RegisterSae": ("RegisterSaeFunctionArn", "$.registered"),
        "Aggregate": ("AggregateFunctionArn", "$.aggregate"),
        "WriteReport": ("WriteReportFunctionArn", "$.report"),
        "RecordFailure": ("RecordFailureFunctionArn", "$.recorded"),
    }
    for name, (placeholder, result_path) in expected.items():
        state = asl["States"][name]
        assert state["Resource"] == "${" + placeholder + "}", name
        assert state["ResultPath"] == result_path, name
        assert "Parameters" not in state, f"{name}: Lambda tasks receive the whole state"
    assert asl["States"]["LabelFeatures"]["ResultPath"] == "$.labels"


def test_every_lambda_task_retries_lambda_service_errors_only(asl):
    for name, state in all_states(asl).items():
        if state["Type"] != "Task" or not state["Resource"].endswith("FunctionArn}"):
            continue
        retried = {e for rule in state["Retry"] for e in rule["ErrorEquals"]}
        assert retried >= LAMBDA_RETRY_ERRORS, name
        assert not (retried & NEVER_RETRIED), f"{name} retries {retried & NEVER_RETRIED}"
        for rule in state["Retry"]:
            assert rule["BackoffRate"] >= 2 and rule["JitterStrategy"] == "FULL", name


def test_label_feature_retries_throttling_with_backoff_and_jitter(asl):
    task = asl["States"]["LabelFeatures"]["ItemProcessor"]["States"]["LabelFeature"]
    throttled = next(r for r in task["Retry"] if r["ErrorEquals"] == ["LabelerThrottled"])
    assert throttled["BackoffRate"] >= 2 and throttled["MaxAttempts"] >= 3
    assert throttled["JitterStrategy"] == "FULL" and throttled["MaxDelaySeconds"] <= 300


def test_a_feature_whose_labelling_fails_is_recorded_unlabelled_and_the_map_goes_on(asl):
    processor = asl["States"]["LabelFeatures"]["ItemProcessor"]["States"]
    task = processor["LabelFeature"]
    (catch,) = task["Catch"]
    assert catch == {
        "ErrorEquals": ["States.ALL"],
        "ResultPath": "$.error",
        "Next": "FeatureUnlabelled",
    }
    unlabelled = processor["FeatureUnlabelled"]
    assert unlabelled["Type"] == "Pass" and unlabelled["End"] is True
    assert unlabelled["Parameters"] == {
        "feature_id.$": "$.feature_id",
        "label_key": None,
        "labelled": False,
        "error.$": "$.error",
    }
    # Out of time in one invocation, or a Lambda timeout: retried at once (the step
    # resumes from its saved progress).
    resumed = next(r for r in task["Retry"] if "LabelerOutOfTime" in r["ErrorEquals"])
    assert "Sandbox.Timedout" in resumed["ErrorEquals"] and resumed["JitterStrategy"] == "FULL"


def test_label_items_carry_the_weights_hash_budget_and_refresh(asl):
    selector = asl["States"]["LabelFeatures"]["ItemSelector"]
    for name in ("feature_id", "bundle_key"):
        assert selector[f"{name}.$"] == f"$$.Map.Item.Value.{name}"
    # The run's label settings are the same for every item: read once from the aggregate.
    for name in ("weights_sha256", "max_usd", "refresh", "model_id", "labeler"):
        assert selector[f"{name}.$"] == f"$.aggregate.label_settings.{name}"


def test_sagemaker_tasks_retry_capacity_and_throttling_with_long_backoff(asl):
    for name in (
        "TrainSae",
        "TrainSaeOnCorpus",
        "CreateExtractModel",
        "ExtractFeatures",
        "SteerFeatures",
    ):
        state = asl["States"][name]
        errors = {e for rule in state["Retry"] for e in rule["ErrorEquals"]}
        assert {"SageMaker.ThrottlingException", "SageMaker.ResourceLimitExceeded"} <= errors, name
        assert not (errors & NEVER_RETRIED), name
        assert min(rule["IntervalSeconds"] for rule in state["Retry"]) >= 10, name


CLEANUP = {"DeleteExtractModel": "WriteReport", "DeleteModelAfterFailure": "RunFailed"}


def test_every_failure_is_recorded_then_fails_with_the_recorded_name(asl):
    for name, state in asl["States"].items():
        if state["Type"] in ("Task", "Map", "Parallel") and name not in (
            "RecordFailure",
            *CLEANUP,
        ):
            assert state["Catch"] == [
                {"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": "RecordFailure"}
            ], name
    record = asl["States"]["RecordFailure"]
    assert record["Next"] == "ModelToDelete"
    assert record["Catch"][0]["Next"] == "FailureNotRecorded"
    assert asl["States"]["RunFailed"] == {
        "Type": "Fail",
        "Comment": asl["States"]["RunFailed"]["Comment"],
        "ErrorPath": "$.recorded.error",
        "CausePath": "$.recorded.message",
    }
    assert asl["States"]["FailureNotRecorded"]["Error"] == "FailureNotRecorded"


def test_training_job_request_follows_the_worker_contract(asl):
    plain, on_corpus = asl["States"]["TrainSae"], asl["States"]["TrainSaeOnCorpus"]
    assert plain["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync"
    params = plain["Parameters"]
    assert params["AlgorithmSpecification"] == {
        "TrainingImage": "${WorkerImageUri}",
        "TrainingInputMode": "File",
    }
    assert params["HyperParameters.$"] == "$.sae.training.hyperparameters"
    assert params["TrainingJobName.$"] == "$.run.names.training_job"
    assert params["RoleArn"] == "${SageMakerRoleArn}"
    assert params["OutputDataConfig"] == {"S3OutputPath.$": "$.sae.training.output_path"}
    assert params["CheckpointConfig"]["S3Uri.$"] == "$.sae.training.checkpoint_uri"
    assert params["ResourceConfig"]["InstanceType"] == "${TrainInstanceType}"
    assert "InputDataConfig.$" not in params  # SageMaker rejects an empty list
    assert on_corpus["Parameters"]["InputDataConfig.$"] == "$.sae.training.input_data_config"
    rest = {k: v for k, v in on_corpus["Parameters"].items() if k != "InputDataConfig.$"}
    assert rest == params
    assert (
        plain["ResultSelector"]
        == on_corpus["ResultSelector"]
        == {
            "job_name.$": "$.TrainingJobName",
            "model_artifacts.$": "$.ModelArtifacts.S3ModelArtifacts",
            "billable_seconds.$": "$.BillableTimeInSeconds",
        }
    )
    assert (
        plain["ResultPath"] == "$.training" and plain["Next"] == on_corpus["Next"] == "RegisterSae"
    )


def test_model_and_transform_jobs_follow_the_serve_contract(asl):
    model = asl["States"]["CreateExtractModel"]["Parameters"]
    assert model["PrimaryContainer"]["Image"] == "${WorkerImageUri}"
    assert model["PrimaryContainer"]["Environment.$"] == "$.sae.serve_environment"
    assert model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"] == {
        "S3Uri.$": "$.sae.uri",
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
    }
    extract = asl["States"]["ExtractFeatures"]
    params = extract["Parameters"]
    assert extract["Resource"] == "arn:aws:states:::sagemaker:createTransformJob.sync"
    assert params["BatchStrategy"] == "MultiRecord"
    # Sized from the instance type by validate (saeflow.core.scale.plan_transform).
    assert params["MaxPayloadInMB.$"] == "$.run.transform.max_payload_mb"
    assert params["MaxConcurrentTransforms.$"] == "$.run.transform.max_concurrent_transforms"
    for name in ("SAEFLOW_MAX_BATCH_TOKENS", "SAEFLOW_MAX_PAYLOAD_MB"):
        assert params["Environment"][f"{name}.$"] == f"$.run.transform.environment.{name}"
    assert params["TransformInput"]["SplitType"] == "Line"
    assert params["TransformInput"]["ContentType"] == "application/jsonlines"
    assert params["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri.$"] == "$.run.input_uri"
    assert params["TransformOutput"] == {
        "S3OutputPath.$": "$.run.extract_uri",
        "Accept": "application/jsonlines",
        "AssembleWith": "Line",
    }
    assert params["TransformResources"]["InstanceCount.$"] == "$.run.transform.instance_count"
    assert extract["ResultPath"] == "$.extraction"
    steer = asl["States"]["SteerFeatures"]["Parameters"]
    assert steer["ModelName.$"] == params["ModelName.$"] == "$.run.names.model"
    assert (
        steer["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri.$"] == "$.run.steer_input_uri"
    )
    assert steer["TransformOutput"]["S3OutputPath.$"] == "$.run.steer_output_uri"


def test_label_map_is_bounded_and_items_carry_run_and_bucket(asl):
    label_map = asl["States"]["LabelFeatures"]
    assert label_map["ItemsPath"] == "$.aggregate.features"
    assert label_map["MaxConcurrencyPath"] == "$.labeling.concurrency"
    prepare = asl["States"]["PrepareLabeling"]
    assert prepare["Parameters"] == {"concurrency.$": "States.StringToJson('${LabelConcurrency}')"}
    assert label_map["ItemSelector"]["run_id.$"] == "$.run.run_id"
    assert label_map["ItemSelector"]["bucket.$"] == "$.run.bucket"
    assert label_map["ItemSelector"]["feature_id.$"] == "$$.Map.Item.Value.feature_id"


def test_report_ready_event_names_the_run_and_the_report(asl):
    emit = asl["States"]["EmitReportReady"]
    assert emit["Resource"] == "arn:aws:states:::events:putEvents"
    (entry,) = emit["Parameters"]["Entries"]
    assert entry["Source"] == "saeflow" and entry["DetailType"] == "saeflow.ReportReady"
    assert entry["EventBusName"] == "${EventBusName}"
    assert entry["Detail"]["run_id.$"] == "$.run.run_id"
    assert entry["Detail"]["report_prefix.$"] == "$.report.report_prefix"
    assert emit["Next"] == "RunSucceeded"


def test_every_substitution_is_a_whole_placeholder_and_nothing_is_hard_coded(text):
    assert asl_rules.placeholders(text) == {
        "ValidateFunctionArn",
        "ResolveSaeFunctionArn",
        "RegisterSaeFunctionArn",
        "AggregateFunctionArn",
        "LabelFeatureFunctionArn",
        "WriteReportFunctionArn",
        "RecordFailureFunctionArn",
        "WorkerImageUri",
        "SageMakerRoleArn",
        "TrainInstanceType",
        "TransformInstanceType",
        "LabelConcurrency",
        "EventBusName",
        "HuggingFaceTokenSecretArn",
        "WaitForCapacityFunctionArn",
        "SummarizeShardFunctionArn",
        "MergePartialsFunctionArn",
    }
    assert "amazonaws.com" not in text and "123456789012" not in text


# ------------------------------------------------------------------ the checkers themselves

MINIMAL = {
    "StartAt": "Work",
    "States": {
        "Work": {
            "Type": "Task",
            "Resource": "${WorkFunctionArn}",
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Failed"}],
            "Next": "Done",
        },
        "Done": {"Type": "Succeed"},
        "Failed": {"Type": "Fail", "Error": "Failed"},
    },
}
CHOICE = {
    "Type": "Choice",
    "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": "Done"}],
    "Default": "Done",
}
DISTRIBUTED_MAP = {
    "Type": "Map",
    "ItemBatcher": {"MaxItemsPerBatch": 2},
    "ItemProcessor": {
        "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
        "StartAt": "Inner",
        "States": {"Inner": {"Type": "Pass", "End": True}},
    },
    "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Failed"}],
    "Next": "Done",
}


def text_after(change) -> str:
    definition = copy.deepcopy(MINIMAL)
    change(definition["States"])
    return json.dumps(definition)


def with_choice(states: dict, **changes) -> None:
    """A Choice after Work, with fields changed (None: removed)."""
    choice = {**copy.deepcopy(CHOICE), **changes}
    states["Pick"] = {key: value for key, value in choice.items() if value is not None}
    states["Work"]["Next"] = "Pick"


CHECKERS = {
    "house": lambda text: asl_rules.house_problems(json.loads(text)),
    "statelint": asl_check.statelint_problems,
    "asl-validator": asl_check.asl_validator_problems,
    "moto": asl_check.moto_problems,
}
# Each mistake and the checker kept for it: what the others let through (tried with all four).
MISTAKES = [
    ("house", lambda s: s["Work"].pop("Catch"), "no Catch for States.ALL"),
    (
        "house",
        lambda s: s["Work"].update(Resource="arn:aws:lambda:us-east-1:123456789012:function:f"),
        "hard-coded ARN",
    ),
    (
        "house",
        lambda s: s["Work"].update(Resource="arn:aws:states:::sagemaker:createTrainingJb.sync"),
        "known integration",
    ),
    ("house", lambda s: s["Work"].update(Parameters={"key": "$.a.path"}), "lacks '.$'"),
    ("house", lambda s: s["Work"].update(QueryLanguage="JSONata"), "JSONPath only"),
    ("house", lambda s: with_choice(s, Default=None), "Default"),
    (
        "statelint",
        lambda s: s["Work"]["Catch"].insert(
            0, {"ErrorEquals": ["States.ALL", "X"], "Next": "Failed"}
        ),
        "States.ALL can only appear in the last element",
    ),
    (
        "statelint",
        lambda s: s["Work"].update(Retry=[{"ErrorEquals": ["X"], "JitterStrategy": "SOME"}]),
        "JitterStrategy",
    ),
    (
        "statelint",
        lambda s: s["Work"].update(Retry=[{"ErrorEquals": ["X"], "BackoffRate": 0.5}]),
        "BackoffRate",
    ),
    ("statelint", lambda s: s.update(Orphan={"Type": "Pass", "End": True}), "Orphan"),
    ("statelint", lambda s: s["Work"].update(Next="Nowhere"), "Nowhere"),
    (
        "asl-validator",
        lambda s: s["Work"].update(Parameters={"key": "x", "key.$": "$.y"}),
        "DUPLICATE_FIELD_NAME",
    ),
    (
        "asl-validator",
        lambda s: with_choice(s, Choices=[{"Variable": "x", "IsPresent": True, "Next": "Done"}]),
        "Variable",
    ),
    ("asl-validator", lambda s: s["Work"].update(Parameters={"key.$": "$.a[["}), "key.$"),
    ("asl-validator", lambda s: s["Failed"].update(ErrorPath="$.error"), "ErrorPath"),
    # moto runs Distributed Maps (the embedded mode adds ItemBatcher) but only STANDARD children.
    ("moto", lambda s: s.update(Work=express_children(DISTRIBUTED_MAP)), "EXPRESS"),
]


def express_children(state: dict) -> dict:
    changed = copy.deepcopy(state)
    changed["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] = "EXPRESS"
    return changed


def test_every_checker_accepts_the_minimal_machine():
    for name, check in CHECKERS.items():
        assert check(json.dumps(MINIMAL)) == [], name


def test_every_checker_accepts_a_distributed_map_with_reader_and_batcher():
    """The embedded mode executes ItemBatcher itself (infra/local/moto_patches.py)."""
    batched = {
        **copy.deepcopy(DISTRIBUTED_MAP),
        "ItemReader": {
            "Resource": "arn:aws:states:::s3:getObject",
            "ReaderConfig": {"InputType": "JSON"},
            "Parameters": {"Bucket.$": "$.b", "Key.$": "$.k"},
        },
    }
    text = text_after(lambda s: s.update(Work=batched))
    for name, check in CHECKERS.items():
        assert check(text) == [], name


@pytest.mark.parametrize(("checker", "change", "expected"), MISTAKES)
def test_each_checker_reports_the_mistakes_it_is_kept_for(checker, change, expected):
    found = CHECKERS[checker](text_after(change))
    assert any(expected in problem for problem in found), found


def test_house_rules_reach_into_map_item_processors_without_requiring_their_catch():
    definition = copy.deepcopy(MINIMAL)
    definition["States"]["Work"] = {
        "Type": "Map",
        "ItemProcessor": {
            "StartAt": "Inner",
            "States": {"Inner": {"Type": "Task", "Resource": "arn:aws:states:::nope", "End": True}},
        },
        "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Failed"}],
        "Next": "Done",
    }
    assert asl_rules.house_problems(definition) == [
        "Inner: Resource is neither a ${...} nor a known integration"
    ]


def test_main_reports_invalid_json_with_its_position(tmp_path, capsys):
    bad = tmp_path / "bad.asl.json"
    bad.write_text('{"StartAt": "A",\n "States": {,}}')
    assert asl_check.main([str(bad)]) == 1
    assert "line 2" in capsys.readouterr().err


def test_main_passes_the_real_definition(capsys):
    assert asl_check.main([str(ASL_PATH)]) == 0
    assert "ok (0 problems" in capsys.readouterr().out


# ------------------------------------------------------------------ clean failures, limits


def test_every_task_has_a_timeout(asl):
    for name, state in all_states(asl).items():
        if state["Type"] == "Task":
            assert "TimeoutSeconds" in state or "TimeoutSecondsPath" in state, name
            # Heartbeats need a task that reports in (activities, callbacks): none here.
            assert "HeartbeatSeconds" not in state, name


def test_lambda_task_timeouts_exceed_the_function_timeouts(asl):
    from infra.local.template import load_template

    template = load_template(ROOT / "template.yaml")
    default = template["Globals"]["Function"]["Timeout"]
    for name, state in all_states(asl).items():
        resource = state.get("Resource", "")
        if state["Type"] != "Task" or not resource.endswith("FunctionArn}"):
            continue
        function = template["Resources"][resource[2:-4]]["Properties"]
        assert state["TimeoutSeconds"] > function.get("Timeout", default), name


def test_training_stops_at_the_deployments_limit(asl):
    for name in ("TrainSae", "TrainSaeOnCorpus"):
        state = asl["States"][name]
        assert state["Parameters"]["StoppingCondition"] == {
            "MaxRuntimeInSeconds.$": "$.sae.training.max_runtime_s"
        }
        assert state["TimeoutSecondsPath"] == "$.sae.training.timeout_s"


def test_runs_over_the_concurrency_limit_wait_in_line(asl):
    gate = asl["States"]["WaitForCapacity"]
    assert asl["States"]["ResolveSae"]["Next"] == "WaitForCapacity"
    assert gate["Next"] == "NeedsTraining"  # before any GPU or LLM work
    assert gate["Parameters"] == {
        "execution_arn.$": "$$.Execution.Id",
        "state_machine_arn.$": "$$.StateMachine.Id",
    }
    queued = next(r for r in gate["Retry"] if r["ErrorEquals"] == ["RunQueued"])
    waited = sum(
        min(queued["IntervalSeconds"] * queued["BackoffRate"] ** i, queued["MaxDelaySeconds"])
        for i in range(queued["MaxAttempts"])
    )
    assert waited / 2 > 12 * 3600, "a queued run waits hours (FULL jitter halves the mean)"


def test_the_model_is_deleted_whatever_the_outcome(asl):
    states = asl["States"]
    for name, after in CLEANUP.items():
        state = states[name]
        assert state["Resource"] == "arn:aws:states:::sagemaker:deleteModel"
        assert state["Parameters"] == {"ModelName.$": "$.run.names.model"}
        assert state["Next"] == after and state["Catch"][0]["Next"] == after
        assert state["Catch"][0]["ResultPath"] == "$.model_cleanup"  # keeps $.failure intact
    assert states["SteerFeatures"]["Next"] == "DeleteExtractModel"
    assert states["HasSteering"]["Default"] == "DeleteExtractModel"
    choice = states["ModelToDelete"]
    assert choice["Choices"] == [
        {"Variable": "$.run.names.model", "IsPresent": True, "Next": "DeleteModelAfterFailure"}
    ]
    assert choice["Default"] == "RunFailed"


def test_registration_waits_for_another_run_registering_the_same_sae(asl):
    retry = asl["States"]["RegisterSae"]["Retry"]
    waiting = next(r for r in retry if r["ErrorEquals"] == ["SaeRegistrationInProgress"])
    from saeflow.steps.register_sae import CLAIM_TTL_S

    waited = sum(
        min(waiting["IntervalSeconds"] * waiting["BackoffRate"] ** i, waiting["MaxDelaySeconds"])
        for i in range(waiting["MaxAttempts"])
    )
    assert waited > CLAIM_TTL_S, "long enough to take over a dead claim"


# ------------------------------------------------------------------ scale out (issue 10)


def test_shards_are_summarised_by_a_distributed_map_over_the_manifest(asl):
    summarize = asl["States"]["SummarizeShards"]
    reader = summarize["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["ReaderConfig"] == {"InputType": "JSON"}
    assert reader["Parameters"] == {
        "Bucket.$": "$.run.reduce.manifest.bucket",
        "Key.$": "$.run.reduce.manifest.key",
    }
    assert summarize["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert summarize["MaxConcurrencyPath"] == "$.run.reduce.concurrency"
    # Each child gets its shard and the run; nothing comes back into the state.
    assert summarize["ItemSelector"] == {
        "shard.$": "$$.Map.Item.Value.shard",
        "run_id.$": "$.run.run_id",
        "bucket.$": "$.run.bucket",
        "sample_size.$": "$.run.options.report_max_prompts",
    }
    child = summarize["ItemProcessor"]["States"]["SummarizeShard"]
    assert child["Resource"] == "${SummarizeShardFunctionArn}"
    assert child["OutputPath"] is None and summarize["ResultPath"] is None
    assert summarize["Next"] == "ManyPartials"


def test_many_partials_are_merged_in_batches_before_the_final_merge(asl):
    choice = asl["States"]["ManyPartials"]
    assert choice["Choices"] == [
        {"Variable": "$.run.reduce.batched", "BooleanEquals": True, "Next": "MergePartials"}
    ]
    assert choice["Default"] == "Aggregate"
    merge = asl["States"]["MergePartials"]
    assert merge["ItemReader"] == asl["States"]["SummarizeShards"]["ItemReader"]
    assert merge["ItemBatcher"] == {
        "MaxItemsPerBatchPath": "$.run.reduce.batch_size",
        "BatchInput": {"run_id.$": "$.run.run_id", "bucket.$": "$.run.bucket"},
    }
    # Step Functions applies ItemSelector to each item of a batch; the embedded mode does
    # not emulate that, so the merge map has none (BatchInput carries the run).
    assert "ItemSelector" not in merge and "Parameters" not in merge
    child = merge["ItemProcessor"]["States"]["MergePartialBatch"]
    assert child["Resource"] == "${MergePartialsFunctionArn}"
    assert child["OutputPath"] is None and merge["ResultPath"] is None
    assert merge["Next"] == "Aggregate"
