"""Every Lambda handler in functions/ invoked as Lambda would: a realistic event, a
LambdaContext, the template's environment, AWS emulated by moto (Bedrock by a real-HTTP
fake). The handlers are thin, so these check the wiring: events parsed, settings read
from the environment, adapters built, plain JSON returned, named errors propagated."""

from __future__ import annotations

import importlib
import io
import json
import tarfile
import time
import uuid
from types import ModuleType, SimpleNamespace

import boto3
import pytest
from fakes.bedrock_server import claude_like_responder, running_fake_bedrock
from fakes.run_data import RUN_ID, seed_run

from saeflow.core import layout
from saeflow.core.errors import PromptSetTooLarge, QualityGateFailed, UnsupportedPromptFile

REGION = "us-east-1"
BUCKET = "saeflow-test"  # the conftest's moto bucket
TABLE = "saeflow-labels"
MODEL_ID = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
HANDLERS = (
    "start_run",
    "validate",
    "resolve_sae",
    "register_sae",
    "aggregate",
    "label_feature",
    "write_report",
    "record_failure",
)
PROMPTS = [
    {"prompt": "The capital of France is Paris.", "id": "france"},
    {"prompt": "My cat sleeps on the sofa all day.", "id": "cat"},
    {"prompt": "Tokyo is a huge city in Japan.", "id": "tokyo"},
]


def app(name: str) -> ModuleType:
    return importlib.import_module(f"functions.{name}.app")


def context(name: str) -> SimpleNamespace:
    """What the Lambda runtime passes (the fields Powertools reads)."""
    return SimpleNamespace(
        function_name=f"saeflow-{name}",
        function_version="$LATEST",
        memory_limit_in_mb=1024,
        invoked_function_arn=f"arn:aws:lambda:{REGION}:123456789012:function:saeflow-{name}",
        aws_request_id=str(uuid.uuid4()),
        get_remaining_time_in_millis=lambda: 300_000,
    )


def invoke(name: str, event: dict) -> dict:
    result = app(name).lambda_handler(event, context(name))
    json.dumps(result)  # a Lambda must return plain JSON
    return result


@pytest.fixture(autouse=True)
def lambda_environment(monkeypatch):
    """Globals of template.yaml, tracing off (no X-Ray daemon here), fresh containers."""
    for key, value in {
        "POWERTOOLS_SERVICE_NAME": "saeflow",
        "POWERTOOLS_METRICS_NAMESPACE": "saeflow",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "LOG_LEVEL": "INFO",
        "BUCKET_NAME": BUCKET,
    }.items():
        monkeypatch.setenv(key, value)
    for name in HANDLERS:  # each test is a cold start: settings and clients rebuilt
        module = app(name)
        for value in vars(module).values():
            if hasattr(value, "cache_clear"):
                value.cache_clear()
    yield


def s3_event(
    key: str, version: str = "3sL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY", etag: str = "d41d8cd9"
) -> dict:
    """An S3 "Object Created" event as EventBridge delivers it."""
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-25T13:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": {
                "key": key,
                "size": 5,
                "etag": etag,
                "version-id": version,
                "sequencer": "00617F08299329D189",
            },
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": "PutObject",
        },
    }


def upload_prompts(s3_client, key: str = "prompts/demo.jsonl") -> dict:
    body = "".join(json.dumps(p) + "\n" for p in PROMPTS).encode()
    put = s3_client.put_object(Bucket=BUCKET, Key=key, Body=body)
    from saeflow.steps.start_run import run_input_for

    return run_input_for(BUCKET, key, put.get("VersionId"), put["ETag"])


# ------------------------------------------------------------------ start_run


@pytest.fixture
def state_machine(moto_aws, monkeypatch):
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = sfn.create_state_machine(
        name="saeflow-pipeline",
        definition=json.dumps(
            {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}
        ),
        roleArn="arn:aws:iam::123456789012:role/saeflow",
    )["stateMachineArn"]
    monkeypatch.setenv("STATE_MACHINE_ARN", arn)
    return sfn, arn


def test_start_run_starts_one_execution_named_by_the_run_id(state_machine):
    sfn, arn = state_machine
    event = s3_event("prompts/demo.jsonl")
    first = invoke("start_run", event)
    again = invoke("start_run", event)  # EventBridge delivered the same upload twice
    assert first["started"] is True and first["duplicate"] is False
    # Step Functions answers a repeated start of a still-running execution (same name,
    # same input) with that execution, and a finished one with ExecutionAlreadyExists:
    # either way there is one execution.
    assert again["run_id"] == first["run_id"]
    assert again["execution_arn"] == first["execution_arn"]
    executions = sfn.list_executions(stateMachineArn=arn)["executions"]
    assert [e["name"] for e in executions] == [first["run_id"]]
    run_input = json.loads(sfn.describe_execution(executionArn=first["execution_arn"])["input"])
    assert run_input["key"] == "prompts/demo.jsonl" and run_input["bucket"] == BUCKET
    assert run_input["version_id"] == event["detail"]["object"]["version-id"]


def test_start_run_ignores_sidecars_and_rejects_malformed_events(state_machine):
    sfn, arn = state_machine
    result = invoke("start_run", s3_event("prompts/demo.options.json"))
    assert result["started"] is False and "sidecar" in result["reason"]
    assert sfn.list_executions(stateMachineArn=arn)["executions"] == []
    broken = s3_event("prompts/demo.jsonl")
    del broken["detail"]["bucket"]
    with pytest.raises(Exception) as caught:  # the parser's validation error, not a KeyError
        invoke("start_run", broken)
    assert "bucket" in str(caught.value) and not isinstance(caught.value, KeyError)


# ------------------------------------------------------------------ validate, resolve_sae


def test_validate_then_resolve_sae_with_settings_from_the_environment(s3_client, monkeypatch):
    monkeypatch.setenv("MAX_TRANSFORM_INSTANCES", "3")
    monkeypatch.setenv("MAX_PROMPT_TOKENS", "256")
    run_input = upload_prompts(s3_client)
    state = {**run_input, "run": invoke("validate", run_input)}
    run = state["run"]
    assert run["run_id"] == run_input["run_id"] and run["n_prompts"] == 3
    assert run["names"]["training_job"].startswith("sf-")
    assert run["input_uri"] == f"s3://{BUCKET}/{layout.input_prefix(run['run_id'])}"
    shard = s3_client.get_object(Bucket=BUCKET, Key=layout.input_shard_key(run["run_id"], 0))
    assert [json.loads(line)["id"] for line in shard["Body"].read().splitlines()] == [
        "france",
        "cat",
        "tokyo",
    ]
    assert 1 <= run["transform_instance_count"] <= 3

    sae = invoke("resolve_sae", state)
    assert sae["mode"] == "train"
    assert all(isinstance(v, str) for v in sae["training"]["hyperparameters"].values())
    assert sae["serve_environment"]["SAEFLOW_MAX_PROMPT_TOKENS"] == "256"


def test_validate_limits_come_from_the_environment_and_errors_keep_their_name(
    s3_client, monkeypatch
):
    monkeypatch.setenv("MAX_PROMPTS", "2")
    run_input = upload_prompts(s3_client)
    with pytest.raises(PromptSetTooLarge):
        invoke("validate", run_input)
    app("validate").settings.cache_clear()
    monkeypatch.setenv("MAX_PROMPTS", "100")
    csv_input = upload_prompts(s3_client, "prompts/table.csv")
    with pytest.raises(UnsupportedPromptFile) as caught:
        invoke("validate", csv_input)
    # Lambda reports errorType = the class name; the state machine's Catch matches it.
    assert type(caught.value).__name__ == "UnsupportedPromptFile"


# ------------------------------------------------------------------ register_sae

GOOD_METRICS = {
    "explained_variance": 0.82,
    "mse": 0.01,
    "l0": 32.0,
    "dead_fraction": 0.05,
    "never_fired_fraction": 0.02,
    "ce_loss_recovered": 0.97,
    "d_in": 576,
    "d_sae": 4608,
    "architecture": "topk",
}


def training_state(s3_client, metrics: dict) -> dict:
    """The state after TrainSae: model.tar.gz where SageMaker's OutputDataConfig puts it."""
    from saeflow.core.options import RunOptions

    job = "sf-0123456789ab-train"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in {
            "cfg.json": b'{"d_in": 576, "d_sae": 4608}',
            "sae_weights.safetensors": b"weights",
            "metrics.json": json.dumps(metrics).encode(),
            "feature_data.jsonl": b'{"id": 0}\n',
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    key = layout.train_model_artifact_key(RUN_ID, job)
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
    options = RunOptions.from_dict({})
    sae_prefix = layout.sae_prefix(options.model, options.hook, "0123456789abcdef")
    return {
        "run_id": RUN_ID,
        "bucket": BUCKET,
        "run": {"run_id": RUN_ID, "bucket": BUCKET, "options": options.to_dict()},
        "sae": {
            "mode": "train",
            "uri": f"s3://{BUCKET}/{sae_prefix}",
            "sae_id": sae_prefix.rstrip("/"),
        },
        "training": {
            "job_name": job,
            "model_artifacts": f"s3://{BUCKET}/{key}",
            "billable_seconds": 61,
        },
    }


def test_register_sae_registers_a_good_sae_and_gates_a_bad_one(s3_client):
    state = training_state(s3_client, GOOD_METRICS)
    registered = invoke("register_sae", state)
    assert registered["uri"] == state["sae"]["uri"] and registered["gate"]["passed"] is True
    prefix = state["sae"]["uri"].removeprefix(f"s3://{BUCKET}/")
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert prefix + "metrics.json" in keys and prefix + "sae_weights.safetensors" in keys

    bad = training_state(s3_client, {**GOOD_METRICS, "explained_variance": 0.1})
    bad["sae"]["uri"] += "bad/"
    with pytest.raises(QualityGateFailed, match="explained_variance"):
        invoke("register_sae", bad)


# ------------------------------------------------------------------ aggregate, label, report


@pytest.fixture
def label_table(moto_aws, monkeypatch):
    client = boto3.client("dynamodb", region_name=REGION)
    client.create_table(
        TableName=TABLE,
        KeySchema=[
            {"AttributeName": "sae_key", "KeyType": "HASH"},
            {"AttributeName": "feature", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "sae_key", "AttributeType": "S"},
            {"AttributeName": "feature", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.setenv("LABEL_TABLE_NAME", TABLE)
    return client


@pytest.fixture
def fake_bedrock(monkeypatch):
    with running_fake_bedrock(claude_like_responder) as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
        monkeypatch.setenv("BEDROCK_MODEL_ID", MODEL_ID)
        yield fake


def map_items(state: dict) -> list[dict]:
    """What the LabelFeatures Map's ItemSelector hands each iteration."""
    return [
        {
            "feature_id": item["feature_id"],
            "bundle_key": item["bundle_key"],
            **state["aggregate"]["label_settings"],
            "run_id": state["run"]["run_id"],
            "bucket": state["run"]["bucket"],
        }
        for item in state["aggregate"]["features"]
    ]


def test_aggregate_label_with_bedrock_and_write_report(
    store, label_table, fake_bedrock, monkeypatch
):
    monkeypatch.setenv("LABEL_MAX_FEATURES", "3")  # the deployment's cap beats the run's 24
    state = seed_run(store, label_backend="bedrock", max_features=24)
    state["aggregate"] = invoke("aggregate", state)
    assert 0 < len(state["aggregate"]["features"]) <= 3
    assert state["aggregate"]["n_tokens"] > 0

    state["labels"] = [invoke("label_feature", item) for item in map_items(state)]
    first_label = store.get_json(state["labels"][0]["label_key"])
    assert (
        first_label["label_source"].startswith("bedrock:")
        and MODEL_ID in first_label["label_source"]
    )
    asked = len(fake_bedrock.requests)
    assert asked >= len(state["labels"])
    again = invoke("label_feature", map_items(state)[0])  # a retried item: Bedrock not asked
    assert again == state["labels"][0] and len(fake_bedrock.requests) == asked
    items = label_table.scan(TableName=TABLE)["Items"]
    stored = [i for i in items if not i["sae_key"]["S"].startswith("run|")]
    assert len(stored) == len(state["labels"])
    (counter,) = [i for i in items if i["sae_key"]["S"] == f"run|{RUN_ID}"]
    assert int(counter["requests"]["N"]) == asked

    report = invoke("write_report", state)
    assert report == {"report_prefix": layout.report_prefix(RUN_ID), "status": "succeeded"}
    body = store.get_json(layout.report_json_key(RUN_ID))
    assert body["run_id"] == RUN_ID and body["status"] == "succeeded"
    labelled = [f for f in body["features"] if f.get("label")]
    assert labelled and all(f["label_source"].startswith("bedrock:") for f in labelled)
    assert store.exists(layout.report_html_key(RUN_ID)) and store.exists(layout.summary_key(RUN_ID))


def test_offline_labels_need_no_llm(store, monkeypatch):
    monkeypatch.delenv("LABEL_TABLE_NAME", raising=False)
    monkeypatch.setenv("SAEFLOW_AUTO_LABELER", "offline")  # the embedded mode's meaning of auto
    state = seed_run(store, label_backend="auto", max_features=2)
    state["aggregate"] = invoke("aggregate", state)
    labels = [invoke("label_feature", item) for item in map_items(state)]
    assert len(labels) == 2
    assert "heuristic" in store.get_json(labels[0]["label_key"])["label_source"]


# ------------------------------------------------------------------ record_failure


def test_record_failure_writes_error_json_and_names_the_error(s3_client):
    cause = {"errorType": "InvalidPromptSet", "errorMessage": "line 3: not JSON", "stackTrace": []}
    state = {
        "run_id": RUN_ID,
        "bucket": BUCKET,
        "key": "prompts/demo.jsonl",
        "version_id": "v1",
        "etag": "e",
        "overrides": {},
        "failure": {"Error": "InvalidPromptSet", "Cause": json.dumps(cause)},
    }
    started = time.time()
    recorded = invoke("record_failure", state)
    assert recorded["error"] == "InvalidPromptSet" and recorded["message"]
    body = json.loads(
        s3_client.get_object(Bucket=BUCKET, Key=layout.error_key(RUN_ID))["Body"].read()
    )
    assert body["run_id"] == RUN_ID and body["error"] == "InvalidPromptSet"
    assert time.time() - started < 30
