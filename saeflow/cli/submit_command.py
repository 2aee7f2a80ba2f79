"""``saeflow submit FILE --stack NAME``: the same run against a deployed stack.

The bucket and state machine come from the stack's outputs. The file is uploaded under
``prompts/`` (its options, ``--set`` and ``--label`` go into the sidecar
``prompts/<stem>.options.json``, uploaded first), which the bucket's EventBridge rule turns
into an execution named by the run id. The CLI computes the same run id, waits for that
execution (starting it itself if no trigger fired: the name makes that idempotent), shows
progress and downloads ``reports/<run_id>/``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from saeflow.adapters.sfn import execution_arn, start_execution
from saeflow.cli.outcome import RunOutcome, download_report, outcome_of
from saeflow.cli.progress import ProgressPrinter, watch_execution
from saeflow.core import layout
from saeflow.core.errors import InvalidPromptSet, SaeflowError
from saeflow.core.options import expand_dotted, parse_override_value, parse_set_overrides
from saeflow.core.promptset import parse_options_document
from saeflow.steps.start_run import run_input_for

LOG = logging.getLogger(__name__)


class StackNotFound(SaeflowError):
    """The CloudFormation stack does not exist or lacks the saeflow outputs."""


@dataclass(frozen=True)
class SubmitRequest:
    file: Path
    stack: str
    out_dir: Path
    label: str | None = None
    contrast: Path | None = None
    settings: tuple[str, ...] = ()
    trigger_wait_s: float = 30.0
    timeout_s: float = 6 * 3600


def stack_outputs(cloudformation: Any, stack: str) -> dict[str, str]:
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        raise StackNotFound(f"stack {stack}: {exc.response['Error']['Message']}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    missing = {"BucketName", "StateMachineArn"} - set(outputs)
    if missing:
        raise StackNotFound(f"stack {stack} has no output {', '.join(sorted(missing))}")
    return outputs


def sidecar_options(request: SubmitRequest) -> dict[str, Any] | None:
    """The run options to upload beside the file: its own sidecar + --set + --label."""
    parse_set_overrides(list(request.settings))  # raises InvalidRunOptions
    options: dict[str, Any] = {}
    own = request.file.with_name(Path(layout.sidecar_key(request.file.name)).name)
    if own.exists():
        options.update(parse_options_document(own.read_bytes(), own.name))
    for item in request.settings:
        key, _, text = item.partition("=")
        options[key.strip()] = parse_override_value(text)
    if request.label is not None:
        options["label.backend"] = request.label
    if request.contrast is not None:
        options["contrast"] = f"{layout.PROMPTS_PREFIX}{request.contrast.name}"
    return expand_dotted(options) if options else None


def submit(request: SubmitRequest, *, session: Any = None) -> RunOutcome:
    import boto3

    for path in (request.file, request.contrast):
        if path is not None and not path.is_file():
            raise InvalidPromptSet(f"{path}: no such file")
    session = session or boto3.session.Session()
    outputs = stack_outputs(session.client("cloudformation"), request.stack)
    bucket, machine = outputs["BucketName"], outputs["StateMachineArn"]
    s3 = session.client("s3")
    sfn = session.client("stepfunctions")
    key = f"{layout.PROMPTS_PREFIX}{request.file.name}"

    options = sidecar_options(request)
    if options is not None:
        s3.put_object(
            Bucket=bucket,
            Key=layout.sidecar_key(key),
            Body=json.dumps({"saeflow": options}).encode(),
        )
    if request.contrast is not None:
        s3.put_object(
            Bucket=bucket,
            Key=f"{layout.PROMPTS_PREFIX}{request.contrast.name}",
            Body=request.contrast.read_bytes(),
        )
    uploaded = s3.put_object(Bucket=bucket, Key=key, Body=request.file.read_bytes())
    run_input = run_input_for(bucket, key, uploaded.get("VersionId"), uploaded.get("ETag"))
    run_id = run_input["run_id"]
    printer = ProgressPrinter()
    printer.note(f"uploaded s3://{bucket}/{key}: run {run_id}")

    arn = execution_arn(machine, layout.execution_name(run_id))
    if not _appears(sfn, arn, request.trigger_wait_s):
        printer.note("no execution started by the bucket's rule yet: starting it")
        arn = start_execution(sfn, machine, run_input)["execution_arn"]
    definition = sfn.describe_state_machine(stateMachineArn=machine)["definition"]
    execution, _ = watch_execution(
        sfn, arn, definition, printer=printer, poll_s=5.0, timeout_s=request.timeout_s
    )
    folder = download_report(s3, bucket, run_id, request.out_dir)
    return outcome_of(run_id, folder, execution)


def _appears(sfn: Any, arn: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sfn.describe_execution(executionArn=arn)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionDoesNotExist":
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)
