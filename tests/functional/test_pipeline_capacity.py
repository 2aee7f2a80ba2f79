"""MaxConcurrentRuns through the real ASL: with a limit of one, a second upload waits in
line while the first runs, then runs itself; neither fails."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.stack import LocalStack, StackSettings, local_definition
from saeflow.adapters.sfn import start_execution
from saeflow.steps.start_run import run_input_for

pytestmark = pytest.mark.workflow

WORKER = [sys.executable, str(Path(__file__).parent / "fakes" / "contract_worker.py")]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    settings = StackSettings(
        state_dir=tmp_path / "state",
        worker_command=WORKER,
        function_environment={"SAEFLOW_AUTO_LABELER": "offline"},
    )
    with LocalStack(
        local_definition(parameter_overrides={"MaxConcurrentRuns": "1"}), settings
    ) as s:
        yield s


def start(stack: LocalStack, name: str) -> str:
    body = "".join(
        json.dumps(line) + "\n"
        for line in ({"saeflow": {"label": {"backend": "none"}}}, {"prompt": f"{name} is here"})
    ).encode()
    bucket = stack.definition.bucket_name
    put = stack.client("s3").put_object(Bucket=bucket, Key=f"prompts/{name}.jsonl", Body=body)
    run_input = run_input_for(bucket, f"prompts/{name}.jsonl", put.get("VersionId"), put["ETag"])
    sfn = stack.client("stepfunctions")
    return start_execution(sfn, stack.definition.state_machine_arn, run_input)["execution_arn"]


def gate_events(stack: LocalStack, arn: str) -> tuple[list[str], object]:
    """Errors the capacity gate raised, and when the run got past it."""
    events = stack.client("stepfunctions").get_execution_history(executionArn=arn, maxResults=1000)[
        "events"
    ]
    errors, passed, in_gate = [], None, False
    for event in events:
        entered = event.get("stateEnteredEventDetails", {}).get("name")
        exited = event.get("stateExitedEventDetails", {}).get("name")
        in_gate = in_gate or entered == "WaitForCapacity"
        if in_gate and "lambdaFunctionFailedEventDetails" in event:
            errors.append(event["lambdaFunctionFailedEventDetails"].get("error"))
        if exited == "WaitForCapacity":
            passed, in_gate = event["timestamp"], False
    return errors, passed


def test_a_run_over_the_limit_waits_then_runs(stack):
    first = start(stack, "first")
    second = start(stack, "second")
    done = {arn: stack.wait_for_execution(arn, timeout_s=600) for arn in (first, second)}
    assert all(d["status"] == "SUCCEEDED" for d in done.values()), done
    first_errors, _ = gate_events(stack, first)
    second_errors, second_passed = gate_events(stack, second)
    assert first_errors == []  # the earlier start goes first
    assert second_errors and set(second_errors) == {"RunQueued"}  # it waited, it did not fail
    # ...and went on only once the first run had ended.
    assert second_passed >= done[first]["stopDate"]
