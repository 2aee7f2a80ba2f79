"""The ways a run starts besides ``saeflow run``: an upload (deduplicated), the real AWS
CLI against ``saeflow local serve``, and ``saeflow submit`` against a "deployed" stack
(moto's CloudFormation holding the outputs, the local stack behind them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import LocalStack, StackSettings, local_definition

pytestmark = [pytest.mark.workflow]

REPO = Path(__file__).resolve().parents[2]
AWS_CLI = Path(sys.executable).parent / "aws"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[LocalStack]:
    settings = StackSettings(state_dir=tmp_path / "state", enable_triggers=True)
    with LocalStack(local_definition(), settings) as stack:
        yield stack


def test_duplicate_events_start_one_execution(local_stack: LocalStack) -> None:
    bucket = local_stack.definition.bucket_name
    s3 = local_stack.client("s3")
    # Invalid on purpose: the run ends at validate, quickly.
    put = s3.put_object(Bucket=bucket, Key="prompts/dup.jsonl", Body=b'{"prompt": 1}\n')
    executions = _wait(local_stack.list_executions, 30, "the upload's execution")
    # EventBridge is at-least-once: deliver the same upload twice more.
    event = {
        "version": "0",
        "id": "duplicate-delivery",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {
                "key": "prompts/dup.jsonl",
                "size": 15,
                "etag": put["ETag"].strip('"'),
                "version-id": put["VersionId"],
            },
            "request-id": "duplicate-request",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }
    assert local_stack.dispatcher is not None
    start_run = local_stack.dispatcher.function("StartRunFunction").function_name
    # Redeliveries come later than start_execution's clock tolerance (0.5 s); whether the
    # first execution is still running or already failed, each is a duplicate.
    time.sleep(1.0)
    answers = [json.loads(local_stack.invoke_lambda(start_run, event).payload) for _ in range(2)]
    assert all(a["run_id"] == executions[0]["name"] for a in answers)
    assert not any(a["started"] for a in answers)
    done = _wait(
        lambda: [e for e in local_stack.list_executions() if e["status"] != "RUNNING"],
        60,
        "the execution to end",
    )
    assert len(local_stack.list_executions()) == 1
    assert done[0]["status"] == "FAILED"
    error = json.loads(
        s3.get_object(Bucket=bucket, Key=f"reports/{done[0]['name']}/error.json")["Body"].read()
    )
    assert error["error"] == "InvalidPromptSet"


@pytest.mark.slow
def test_real_aws_cli_against_local_serve(
    first_run: Any, state_dir: Path, small_training: Any, tmp_path: Path
) -> None:
    assert first_run.exit_code == 0, first_run.stderr
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "saeflow.cli.main", "local", "serve", "--port", str(port),
         "--state-dir", str(state_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    aws_env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def aws(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AWS_CLI), "--endpoint-url", endpoint, *args],
            capture_output=True, text=True, env=aws_env, timeout=120,
        )  # fmt: skip

    try:
        _wait(lambda: (state_dir / "serve.json").exists(), 120, "local serve to start")
        prompts = tmp_path / "cli-upload.jsonl"
        options = {**_options(small_training), "label": {"backend": "offline", "max_features": 4}}
        prompts.write_text(
            json.dumps({"saeflow": options})
            + "\n"
            + "\n".join(json.dumps({"prompt": p}) for p in ("Paris is in France.", "2 + 2 = 4"))
            + "\n"
        )
        copied = aws("s3", "cp", str(prompts), "s3://saeflow-local/prompts/cli-upload.jsonl")
        assert copied.returncode == 0, copied.stderr

        def report_keys() -> list[str]:
            listed = aws("s3", "ls", "s3://saeflow-local/reports/", "--recursive")
            return [line.split()[-1] for line in listed.stdout.splitlines() if "cli-upload" in line]

        keys = _wait(
            lambda: [k for k in report_keys() if k.endswith(("index.html", "error.json"))],
            900,
            "the report of the uploaded prompt set",
        )
        assert keys[0].endswith("index.html"), keys
        run_id = keys[0].split("/")[1]
        fetched = aws("s3", "cp", f"s3://saeflow-local/reports/{run_id}/report.json", str(tmp_path))
        assert fetched.returncode == 0, fetched.stderr
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["status"] == "succeeded" and len(report["prompts"]) == 2

        status = subprocess.run(
            [sys.executable, "-m", "saeflow.cli.main", "local", "status",
             "--state-dir", str(state_dir)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run_id in status.stdout and "SUCCEEDED" in status.stdout
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    # Stopping persisted the report in the state dir.
    assert (state_dir / "s3" / "saeflow-local" / "reports" / run_id / "index.html").exists()


def _options(settings: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in settings:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        options.setdefault(section, {})[name] = json.loads(value)
    return options


@pytest.mark.slow
def test_submit_against_a_deployed_stack(
    first_run: Any, state_dir: Path, small_training: Any, examples: Path, tmp_path: Path
) -> None:
    assert first_run.exit_code == 0, first_run.stderr
    from saeflow.cli.submit_command import SubmitRequest, submit

    # The local stack restores the session's SAE from state_dir, like a deployed bucket.
    settings = StackSettings(state_dir=state_dir, enable_triggers=True)
    with LocalStack(local_definition(), settings) as stack:
        outputs = stack.definition.outputs
        stack.client("cloudformation").create_stack(
            StackName="saeflow-test",
            TemplateBody=json.dumps(
                {
                    "Resources": {"Marker": {"Type": "AWS::SQS::Queue"}},
                    "Outputs": {
                        "BucketName": {"Value": outputs["BucketName"]},
                        "StateMachineArn": {"Value": outputs["StateMachineArn"]},
                    },
                }
            ),
        )
        outcome = submit(
            SubmitRequest(
                file=examples / "contrast.jsonl",
                stack="saeflow-test",
                out_dir=tmp_path / "out",
                label="offline",
                settings=tuple(small_training),
            )
        )
    assert outcome.exit_code == 0, outcome.message
    assert (outcome.folder / "index.html").exists()
    report = json.loads((outcome.folder / "report.json").read_text())
    assert report["run_id"] == outcome.run_id
    assert report["status"] == "succeeded"
