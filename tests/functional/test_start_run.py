import json
import time

import boto3
import pytest

from saeflow.adapters.sfn import execution_arn, start_execution, workflow_starter
from saeflow.core import layout
from saeflow.steps import start_run

BUCKET = "saeflow-test"  # events only name it; start_run reads nothing from S3
REGION = "us-east-1"
PASS_MACHINE = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}


@pytest.fixture
def sfn(moto_aws):
    client = boto3.client("stepfunctions", region_name=REGION)
    arn = client.create_state_machine(
        name="saeflow-test",
        definition=json.dumps(PASS_MACHINE),
        roleArn="arn:aws:iam::123456789012:role/saeflow-test",
    )["stateMachineArn"]
    return client, arn


def s3_event(key: str, version: str | None = "v-1", etag: str = "0f0f") -> dict:
    obj = {"key": key, "size": 10, "etag": etag, "sequencer": "1"}
    if version is not None:
        obj["version-id"] = version
    return {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": obj,
            "reason": "PutObject",
        },
    }


def test_an_upload_starts_one_named_execution(sfn):
    client, arn = sfn
    result = start_run.run(
        s3_event("prompts/demo.jsonl"), start_workflow=workflow_starter(client, arn)
    )
    expected_id = layout.run_id(BUCKET, "prompts/demo.jsonl", "v-1", "0f0f")
    assert result["started"] is True
    assert result["duplicate"] is False
    assert result["run_id"] == expected_id
    execution = client.describe_execution(executionArn=result["execution_arn"])
    assert execution["name"] == expected_id
    assert json.loads(execution["input"]) == {
        "run_id": expected_id,
        "bucket": BUCKET,
        "key": "prompts/demo.jsonl",
        "version_id": "v-1",
        "etag": "0f0f",
        "overrides": {},
    }


def test_duplicate_delivery_gives_one_execution(sfn):
    client, arn = sfn
    starter = workflow_starter(client, arn)
    event = s3_event("prompts/demo.jsonl")
    first = start_run.run(event, start_workflow=starter)
    # While the first runs, Step Functions answers a same-name, same-input start with the
    # same execution; once it has closed, with ExecutionAlreadyExists. Both: one execution.
    second = start_run.run(event, start_workflow=starter)
    third = start_run.run(event, start_workflow=starter)
    executions = client.list_executions(stateMachineArn=arn)["executions"]
    assert len(executions) == 1
    assert second["run_id"] == third["run_id"] == first["run_id"]
    assert second["execution_arn"] == first["execution_arn"]
    wait_until_closed(client, first["execution_arn"])
    fourth = start_run.run(event, start_workflow=starter)
    assert fourth["duplicate"] is True
    assert fourth["started"] is False
    assert len(client.list_executions(stateMachineArn=arn)["executions"]) == 1


def test_new_version_is_a_new_run(sfn):
    client, arn = sfn
    starter = workflow_starter(client, arn)
    a = start_run.run(s3_event("prompts/demo.jsonl", "v-1"), start_workflow=starter)
    b = start_run.run(s3_event("prompts/demo.jsonl", "v-2"), start_workflow=starter)
    assert a["run_id"] != b["run_id"]
    assert len(client.list_executions(stateMachineArn=arn)["executions"]) == 2


def test_unversioned_bucket_uses_the_etag(sfn):
    client, arn = sfn
    result = start_run.run(
        s3_event("prompts/demo.txt", version=None, etag='"abc"'),
        start_workflow=workflow_starter(client, arn),
    )
    assert result["run_id"] == layout.run_id(BUCKET, "prompts/demo.txt", None, "abc")


@pytest.mark.parametrize("key", ["prompts/demo.options.json", "prompts/", "elsewhere/demo.jsonl"])
def test_not_a_run(sfn, key):
    client, arn = sfn
    result = start_run.run(s3_event(key), start_workflow=workflow_starter(client, arn))
    assert result["started"] is False
    assert result["reason"]
    assert client.list_executions(stateMachineArn=arn)["executions"] == []


def test_unsupported_suffix_still_starts_a_run(sfn):
    client, arn = sfn
    result = start_run.run(
        s3_event("prompts/data.csv"), start_workflow=workflow_starter(client, arn)
    )
    assert result["started"] is True  # validate will write error.json explaining the formats


def test_detail_alone_is_accepted(sfn):
    client, arn = sfn
    result = start_run.run(
        s3_event("prompts/d.json")["detail"], start_workflow=workflow_starter(client, arn)
    )
    assert result["started"] is True


def wait_until_closed(client, execution_arn_: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = client.describe_execution(executionArn=execution_arn_)["status"]
        if status != "RUNNING":
            return status
        time.sleep(0.05)
    raise AssertionError("the Pass execution did not finish")


def test_start_after_the_run_finished_is_a_duplicate(sfn):
    client, arn = sfn
    run_input = {"run_id": "x-0123456789ab", "overrides": {}}
    first = start_execution(client, arn, run_input)
    assert first["duplicate"] is False
    assert wait_until_closed(client, first["execution_arn"]) == "SUCCEEDED"
    again = start_execution(client, arn, run_input)
    assert again == {
        "duplicate": True,
        "execution_arn": execution_arn(arn, "x-0123456789ab"),
        "run_id": "x-0123456789ab",
    }
    assert again["execution_arn"] == first["execution_arn"]
    assert len(client.list_executions(stateMachineArn=arn)["executions"]) == 1


def test_start_while_the_run_is_still_running_is_a_duplicate(moto_aws):
    """Step Functions answers a same-name, same-input start of a RUNNING execution with
    that execution: no error, so the duplicate shows in its startDate."""
    client = boto3.client("stepfunctions", region_name=REGION)
    waiting = {"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 5, "End": True}}}
    arn = client.create_state_machine(
        name="saeflow-wait",
        definition=json.dumps(waiting),
        roleArn="arn:aws:iam::123456789012:role/saeflow-test",
    )["stateMachineArn"]
    run_input = {"run_id": "w-0123456789ab", "overrides": {}}
    first = start_execution(client, arn, run_input)
    assert first["duplicate"] is False
    time.sleep(1.0)  # past the clock tolerance
    assert client.describe_execution(executionArn=first["execution_arn"])["status"] == "RUNNING"
    again = start_execution(client, arn, run_input)
    assert again["duplicate"] is True
    assert again["execution_arn"] == first["execution_arn"]
    assert len(client.list_executions(stateMachineArn=arn)["executions"]) == 1
