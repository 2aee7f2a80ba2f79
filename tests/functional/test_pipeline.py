"""The real statemachine/pipeline.asl.json and template.yaml, executed by moto's Step
Functions interpreter through the embedded mode's local stack (infra/local), with the
real Lambda handlers and a fast contract-faithful stand-in for the GPU worker
(fakes/contract_worker.py). The real worker and model run in tests/workflow."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from infra.local.stack import LocalStack, StackSettings, local_definition
from saeflow.core import layout
from saeflow.steps.start_run import run_input_for

pytestmark = pytest.mark.workflow

WORKER = [sys.executable, str(Path(__file__).parent / "fakes" / "contract_worker.py")]
PROMPTS = ["the cat sat on the mat", "Paris is the capital of France", "a dog and a cat"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    settings = StackSettings(
        state_dir=tmp_path / "state",
        worker_command=WORKER,
        function_environment={"SAEFLOW_AUTO_LABELER": "offline"},
        enable_triggers=True,
    )
    with LocalStack(local_definition(), settings) as running:
        yield running


def prompt_file(options: dict) -> bytes:
    lines = [{"saeflow": options}, *({"prompt": p} for p in PROMPTS)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(stack: LocalStack, key: str, body: bytes) -> dict:
    """Upload like a user; the template's EventBridge rule starts the run."""
    bucket = stack.definition.bucket_name
    put = stack.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
    return run_input_for(bucket, key, put.get("VersionId"), put["ETag"])


def finished(stack: LocalStack, run_id: str) -> dict:
    arn = layout_execution_arn(stack, run_id)
    deadline = time.monotonic() + 60
    while True:  # the rule's delivery to start_run is asynchronous
        try:
            return stack.wait_for_execution(arn, timeout_s=120)
        except ClientError as exc:  # only "not started yet" is worth waiting for
            if exc.response["Error"]["Code"] != "ExecutionDoesNotExist":
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def layout_execution_arn(stack: LocalStack, run_id: str) -> str:
    machine = stack.definition.state_machine_arn
    return machine.replace(":stateMachine:", ":execution:") + ":" + layout.execution_name(run_id)


def read_json(stack: LocalStack, key: str) -> dict:
    body = stack.client("s3").get_object(Bucket=stack.definition.bucket_name, Key=key)["Body"]
    return json.loads(body.read())


def capture_report_ready(stack: LocalStack) -> str:
    """An SQS queue subscribed to the stack's event bus, as an automation would be."""
    sqs, events = stack.client("sqs"), stack.client("events")
    queue_url = sqs.create_queue(QueueName="report-ready")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    bus = stack.definition.outputs["EventBusName"]
    events.put_rule(
        Name="report-ready", EventBusName=bus, EventPattern=json.dumps({"source": ["saeflow"]})
    )
    events.put_targets(
        Rule="report-ready", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}]
    )
    return queue_url


def test_upload_trains_extracts_labels_steers_and_reports(stack):
    queue_url = capture_report_ready(stack)
    options = {
        "sae": "train",
        "steer": [{"feature": 3, "strengths": [4.0]}],
        "label": {"backend": "auto", "max_features": 3},
    }
    run_input = upload(stack, "prompts/good.jsonl", prompt_file(options))
    result = finished(stack, run_input["run_id"])
    assert result["status"] == "SUCCEEDED", result.get("cause")

    state = json.loads(result["output"])
    assert state["sae"]["mode"] == "train" and state["registered"]["gate"]["passed"]
    assert state["training"]["job_name"] == state["run"]["names"]["training_job"]
    assert state["training"]["model_artifacts"].endswith("model.tar.gz")
    assert state["extraction"]["job_name"] == state["run"]["names"]["transform_job"]
    assert 0 < len(state["labels"]) <= 3 and state["labeling"] == {"concurrency": 4}
    assert state["steering"]["job_name"] == state["run"]["names"]["steer_job"]
    assert state["report"]["status"] == "succeeded"

    report = read_json(stack, layout.report_json_key(run_input["run_id"]))
    assert report["status"] == "succeeded" and len(report["prompts"]) == len(PROMPTS)
    assert report["steering"] and any(f.get("label") for f in report["features"])

    messages = stack.client("sqs").receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)
    (message,) = messages["Messages"]
    event = json.loads(message["Body"])
    assert event["detail-type"] == "saeflow.ReportReady"
    assert event["detail"]["run_id"] == run_input["run_id"]
    assert event["detail"]["report_prefix"] == layout.report_prefix(run_input["run_id"])

    # The SAE is registered: the same options on a new upload reuse it, no training job.
    again = upload(stack, "prompts/again.jsonl", prompt_file(options))
    second = finished(stack, again["run_id"])
    assert second["status"] == "SUCCEEDED", second.get("cause")
    second_state = json.loads(second["output"])
    assert second_state["sae"]["mode"] == "cached" and "training" not in second_state
    # run.json says so, and no SageMaker model is left behind.
    assert read_json(stack, layout.run_json_key(run_input["run_id"]))["status"] == "succeeded"
    assert stack.client("sagemaker").list_models()["Models"] == []


def test_invalid_input_ends_in_error_json_and_the_named_failure(stack):
    run_input = upload(stack, "prompts/bad.jsonl", b'{"prompt": "fine"}\nnot json\n')
    result = finished(stack, run_input["run_id"])
    assert result["status"] == "FAILED" and result["error"] == "InvalidPromptSet"
    error = read_json(stack, layout.error_key(run_input["run_id"]))
    assert error["error"] == "InvalidPromptSet" and error["line"] == 2
    assert error["run_id"] == run_input["run_id"]


def test_a_failing_training_job_reports_its_failure_reason(stack):
    options = {"sae": "train", "train": {"lr": 0.5}, "label": {"backend": "offline"}}
    run_input = upload(stack, "prompts/diverges.jsonl", prompt_file(options))
    result = finished(stack, run_input["run_id"])
    assert result["status"] == "FAILED" and result["error"] == "TrainingFailed"
    error = read_json(stack, layout.error_key(run_input["run_id"]))
    assert error["error"] == "TrainingFailed" and "loss diverged" in error["message"]
    assert read_json(stack, layout.run_json_key(run_input["run_id"]))["status"] == "failed"


def test_a_failed_extraction_still_deletes_the_model(stack):
    options = {"sae": "train", "label": {"backend": "offline"}}
    # The stand-in worker's serve dies on this prompt: the transform job fails.
    body = prompt_file(options) + json.dumps({"prompt": "CRASH the server"}).encode() + b"\n"
    run_input = upload(stack, "prompts/crash.jsonl", body)
    result = finished(stack, run_input["run_id"])
    assert result["status"] == "FAILED" and result["error"] == "ExtractionFailed"
    history = stack.client("stepfunctions").get_execution_history(
        executionArn=result["executionArn"], maxResults=1000
    )["events"]
    entered = [
        e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e
    ]
    assert entered[-3:] == ["ModelToDelete", "DeleteModelAfterFailure", "RunFailed"]
    assert stack.client("sagemaker").list_models()["Models"] == []


def test_a_duplicated_event_gives_one_execution(stack):
    run_input = upload(stack, "prompts/twice.jsonl", prompt_file({"label": {"backend": "none"}}))
    finished(stack, run_input["run_id"])
    event = {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-25T13:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "id": "redelivered",
        "detail": {
            "version": "0",
            "bucket": {"name": run_input["bucket"]},
            "object": {
                "key": run_input["key"],
                "version-id": run_input["version_id"],
                "etag": run_input["etag"],
            },
            "request-id": "R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }
    start_run = next(f for f in stack.definition.functions if f.logical_id == "StartRunFunction")
    outcome = stack.invoke_lambda(start_run.function_name, event)  # EventBridge redelivers
    assert outcome.error_type is None
    assert json.loads(outcome.payload)["duplicate"] is True
    names = [e["name"] for e in stack.list_executions()]
    assert names.count(run_input["run_id"]) == 1
    keys = stack.client("s3").list_objects_v2(
        Bucket=run_input["bucket"], Prefix=layout.report_prefix(run_input["run_id"])
    )["Contents"]
    assert {k["Key"].rsplit("/", 1)[-1] for k in keys} >= {"report.json", "index.html"}
