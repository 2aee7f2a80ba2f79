"""moto's Distributed Map with the embedded mode's patches: ItemReader over a JSON object in
S3, ItemBatcher, and a failed child failing the Map as Step Functions does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from infra.local import moto_patches

CHILD_OK = {"Type": "Pass", "End": True}
CHILD_FAILS = {"Type": "Fail", "Error": "Boom", "Cause": "a child failed"}


def machine(child: dict, batcher: dict | None) -> dict:
    work = {
        "Type": "Map",
        "ItemReader": {
            "Resource": "arn:aws:states:::s3:getObject",
            "ReaderConfig": {"InputType": "JSON"},
            "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"},
        },
        "MaxConcurrency": 2,
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
            "StartAt": "Child",
            "States": {"Child": child},
        },
        "ResultPath": "$.results",
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": "Caught"}],
        "End": True,
    }
    if batcher is not None:
        work["ItemBatcher"] = batcher
    return {"StartAt": "Work", "States": {"Work": work, "Caught": {"Type": "Pass", "End": True}}}


@pytest.fixture
def patched(moto_aws) -> Iterator[None]:
    from moto.core.config import default_user_config

    moto_patches.install(object())  # only the Step Functions patches are reached here
    saved = dict(default_user_config.get("stepfunctions", {}))
    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    try:
        yield
    finally:
        default_user_config["stepfunctions"] = saved
        moto_patches.uninstall()


def execute(definition: dict, items: list, **state) -> dict:
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="saeflow-map-test")
    s3.put_object(Bucket="saeflow-map-test", Key="items.json", Body=json.dumps(items))
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    arn = sfn.create_state_machine(
        name="map-test",
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/test",
    )["stateMachineArn"]
    execution = sfn.start_execution(
        stateMachineArn=arn,
        input=json.dumps({"bucket": "saeflow-map-test", "key": "items.json", **state}),
    )["executionArn"]
    deadline = time.monotonic() + 60
    while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert described["status"] == "SUCCEEDED", described
    return json.loads(described["output"])


def test_items_come_from_the_json_object_one_child_each(patched):
    output = execute(machine(CHILD_OK, None), [{"shard": i} for i in range(5)])
    assert output["results"] == [{"shard": i} for i in range(5)]


def test_the_item_batcher_groups_items_and_adds_the_batch_input(patched):
    batcher = {"MaxItemsPerBatchPath": "$.size", "BatchInput": {"run.$": "$.run", "fixed": 1}}
    output = execute(machine(CHILD_OK, batcher), [{"shard": i} for i in range(7)], size=3, run="R")
    assert output["results"] == [
        {
            "Items": [{"shard": 0}, {"shard": 1}, {"shard": 2}],
            "BatchInput": {"run": "R", "fixed": 1},
        },
        {
            "Items": [{"shard": 3}, {"shard": 4}, {"shard": 5}],
            "BatchInput": {"run": "R", "fixed": 1},
        },
        {"Items": [{"shard": 6}], "BatchInput": {"run": "R", "fixed": 1}},
    ]


def test_a_failed_child_fails_the_map_as_on_aws(patched):
    output = execute(machine(CHILD_FAILS, None), [{"shard": i} for i in range(3)])
    assert output["failure"]["Error"] == "States.ExceedToleratedFailureThreshold"
    assert "results" not in output


def test_failures_within_the_tolerance_do_not(patched):
    definition = machine(CHILD_FAILS, None)
    definition["States"]["Work"]["ToleratedFailureCount"] = 3
    output = execute(definition, [{"shard": i} for i in range(3)])
    assert "failure" not in output and output["results"] == [None, None, None]
