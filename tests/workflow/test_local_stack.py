"""The local stack's machinery on a tiny template: stub handler, stub worker, real moto.

Checks what the embedded mode adds to moto: template-driven wiring, Lambda tasks run
in-process, SageMaker .sync tasks run as worker processes (success and FailureReason),
EventBridge rules delivering S3 uploads to a Lambda, and state persisted between stacks.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.stack import LocalStack, StackSettings
from infra.local.template import build_stack_definition

STUBS = Path(__file__).parent / "stubs"
BUCKET = "stub-bucket"


def _definition():
    return build_stack_definition(
        STUBS / "template.yaml",
        stack_name="stubstack",
        bucket_name=BUCKET,
        region="us-east-1",
        account_id="123456789012",
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    settings = StackSettings(
        state_dir=tmp_path / "state",
        worker_command=[sys.executable, str(STUBS / "stub_worker.py")],
        enable_triggers=True,
    )
    with LocalStack(_definition(), settings) as running:
        s3 = running.client("s3")
        s3.put_object(Bucket=BUCKET, Key="corpus/a.txt", Body=b"hello")
        s3.put_object(Bucket=BUCKET, Key="sae/cfg.json", Body=b"{}")
        s3.put_object(Bucket=BUCKET, Key="input/shard-0.jsonl", Body=b'{"a": 1}\n{"a": 2}\n')
        yield running


def _run(stack: LocalStack, name: str, payload: dict) -> dict:
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=stack.definition.state_machine_arn, name=name, input=json.dumps(payload)
    )["executionArn"]
    return stack.wait_for_execution(arn, timeout_s=120)


def test_template_is_read_not_restated() -> None:
    definition = _definition()
    (echo,) = definition.functions
    assert echo.environment == {
        "STUB_STAGE": "stub",
        "BUCKET": BUCKET,
        "TABLE": "stubstack-Registry",
        "MACHINE": "stubstack-machine",
    }
    assert echo.code_dir == (STUBS / "functions" / "echo").resolve()
    assert "${" not in definition.definition
    assert echo.arn in definition.definition
    assert definition.outputs["BucketName"] == BUCKET
    assert definition.rules[0].pattern["detail"]["object"]["key"] == [{"prefix": "prompts/"}]


def test_lambda_training_and_transform_tasks_run_locally(stack: LocalStack) -> None:
    result = _run(stack, "good", {"job": "good", "hyperparameters": {"width": "8"}})
    assert result["status"] == "SUCCEEDED", result
    output = json.loads(result["output"])
    # The Lambda task ran the handler in functions/echo/app.py with the template's env.
    assert output["echo"]["stage"] == "stub"
    assert output["echo"]["function"] == "stubstack-EchoFunction"
    # createTrainingJob.sync returned DescribeTrainingJob (ResultSelector picked from it).
    assert output["training"]["model_artifacts"] == f"s3://{BUCKET}/train/good/output/model.tar.gz"
    assert output["training"]["billable_seconds"] >= 1
    s3 = stack.client("s3")
    archive = s3.get_object(Bucket=BUCKET, Key="train/good/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        cfg = json.load(tar.extractfile("cfg.json"))  # type: ignore[arg-type]
    assert cfg == {"hyperparameters": {"width": "8"}, "channels": ["corpus"]}
    assert s3.get_object(Bucket=BUCKET, Key="checkpoints/step-1.pt")["Body"].read() == b"checkpoint"
    # createTransformJob.sync: every line posted to the served model, <object>.out written.
    lines = s3.get_object(Bucket=BUCKET, Key="output/shard-0.jsonl.out")["Body"].read().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["a"] for r in records] == [1, 2]
    assert all(r["echo"] and r["model_files"] == ["cfg.json"] for r in records)


def test_progress_reads_the_steps_from_the_history(stack: LocalStack) -> None:
    from saeflow.cli.progress import read_progress, timed_states

    result = _run(stack, "timed", {"job": "timed", "hyperparameters": {}})
    assert result["status"] == "SUCCEEDED", result
    states = timed_states(stack.definition.definition)
    progress = read_progress(stack.client("stepfunctions"), result["executionArn"], states)
    assert [s.name for s in progress.steps] == [
        "Echo", "Train", "CreateModel", "Transform", "DeleteModel", "Announce",
    ]  # fmt: skip
    assert progress.status == "SUCCEEDED"
    assert all(s.seconds is not None and s.seconds >= 0 for s in progress.steps)
    assert stack.jobs is not None
    jobs = {j.job_name: j for j in stack.jobs.progress()}
    assert jobs["timed"].status == "Completed"


def test_failed_training_job_reaches_the_catch_with_its_failure_reason(stack: LocalStack) -> None:
    result = _run(stack, "bad", {"job": "bad", "hyperparameters": {"fail": "k must be > 0"}})
    assert result["status"] == "FAILED"
    assert result["error"] == "StubFailed"
    described = json.loads(result["cause"])
    assert described["TrainingJobStatus"] == "Failed"
    assert described["FailureReason"] == "AlgorithmError: InvalidHyperparameter: k must be > 0"


def test_handler_exception_is_a_named_lambda_error(stack: LocalStack) -> None:
    result = _run(stack, "raise", {"job": "raise", "raise": "boom"})
    assert result["status"] == "FAILED"
    cause = json.loads(result["cause"])
    assert cause["errorType"] == "StubFailure"
    assert cause["errorMessage"] == "boom"
    history = stack.client("stepfunctions").get_execution_history(
        executionArn=result["executionArn"]
    )["events"]
    failed = [e for e in history if e["type"] == "LambdaFunctionFailed"]
    assert failed[0]["lambdaFunctionFailedEventDetails"]["error"] == "StubFailure"


def test_s3_upload_reaches_the_rule_target(stack: LocalStack) -> None:
    assert stack.dispatcher is not None
    before = len(stack.dispatcher.invocations)
    s3 = stack.client("s3")
    s3.put_object(Bucket=BUCKET, Key="reports/ignored.json", Body=b"{}")  # not under prompts/
    s3.put_object(Bucket=BUCKET, Key="prompts/p.jsonl", Body=b'{"prompt": "hi"}\n')
    deadline = time.monotonic() + 20
    while len(stack.dispatcher.invocations) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a wrongly delivered second event would show up here
    assert len(stack.dispatcher.invocations) == before + 1
    assert stack.dispatcher.invocations[-1].error_type is None


def test_state_persists_between_stacks(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path / "state")
    with LocalStack(_definition(), settings) as first:
        first.client("s3").put_object(Bucket=BUCKET, Key="saes/m/h/x/cfg.json", Body=b"sae")
        first.client("s3").put_object(Bucket=BUCKET, Key="runs/r/scratch", Body=b"tmp")
        first.client("dynamodb").put_item(
            TableName="stubstack-Registry", Item={"pk": {"S": "feature-1"}}
        )
    with LocalStack(_definition(), settings) as second:
        s3 = second.client("s3")
        assert s3.get_object(Bucket=BUCKET, Key="saes/m/h/x/cfg.json")["Body"].read() == b"sae"
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/").get("KeyCount") == 0
        items = second.client("dynamodb").scan(TableName="stubstack-Registry")["Items"]
        assert items == [{"pk": {"S": "feature-1"}}]


def test_saved_items_of_an_older_key_schema_are_left_out(tmp_path: Path) -> None:
    # A state dir saved before a table's key changed (the label registry's did) must not
    # stop the stack from starting: those items stay out, the others come back.
    settings = StackSettings(state_dir=tmp_path / "state")
    saved = tmp_path / "state" / "dynamodb" / "stubstack-Registry.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(
        json.dumps([{"sae_id": {"S": "old"}, "feature": {"N": "1"}}, {"pk": {"S": "kept"}}])
    )
    with LocalStack(_definition(), settings) as stack:
        items = stack.client("dynamodb").scan(TableName="stubstack-Registry")["Items"]
        assert items == [{"pk": {"S": "kept"}}]


def test_the_real_template_builds_a_local_stack_definition() -> None:
    from infra.local.stack import LOCAL_BUCKET, local_definition

    definition = local_definition()
    assert definition.bucket_name == LOCAL_BUCKET and definition.bucket_eventbridge
    assert "${" not in definition.definition
    names = {f.logical_id for f in definition.functions}
    assert {"StartRunFunction", "ValidateFunction", "RecordFailureFunction"} <= names
    for function in definition.functions:
        assert (function.code_dir / "app.py").exists(), function
        assert function.environment["POWERTOOLS_SERVICE_NAME"]
    # Every Lambda ARN the definition names is a function the stack creates.
    arns = {f.arn for f in definition.functions}
    states = json.loads(definition.definition)["States"]
    for state in states.values():
        if state.get("Resource", "").startswith("arn:aws:lambda:"):
            assert state["Resource"] in arns
    (rule,) = definition.rules
    assert rule.target_arn == definition.functions[0].arn or rule.target_arn in arns
    assert definition.outputs["BucketName"] == LOCAL_BUCKET
