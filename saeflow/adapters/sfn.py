"""Step Functions helpers: start one execution per run, deduplicated by name.

Executions are named by the run id, so an S3 event delivered twice (EventBridge is
at-least-once) cannot start a second execution: Step Functions rejects the name with
``ExecutionAlreadyExists`` (or, for a still-running Standard execution started with the
same input, returns the same execution, whose ``startDate`` then predates our call), and
we report a duplicate.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from saeflow.core.layout import execution_name

logger = logging.getLogger(__name__)

# A new execution's startDate is stamped by Step Functions after our call began; an earlier
# one means the idempotent answer for a RUNNING execution. The margin covers clock skew
# between the caller and the service (a duplicate within it is reported as started: still
# one execution).
CLOCK_TOLERANCE = timedelta(milliseconds=500)


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN an execution called ``name`` of this state machine has."""
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"


def start_execution(
    sfn_client: Any, state_machine_arn: str, run_input: dict[str, Any]
) -> dict[str, Any]:
    """Start the run's execution, named by ``run_input["run_id"]``.

    Returns ``{"duplicate": True, "execution_arn", "run_id"}`` when Step Functions rejects the
    name (``ExecutionAlreadyExists``: the run's execution exists and has closed, or got other
    input), and when it answers with the same run still RUNNING (same input): it then
    returns that execution, started before this call. Either way: one execution.
    """
    name = execution_name(run_input["run_id"])
    called_at = datetime.now(UTC)
    try:
        response = sfn_client.start_execution(
            stateMachineArn=state_machine_arn,
            name=name,
            input=json.dumps(run_input, sort_keys=True),
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
        logger.info("duplicate start for run %s ignored", name)
        return {
            "duplicate": True,
            "execution_arn": execution_arn(state_machine_arn, name),
            "run_id": run_input["run_id"],
        }
    started = response.get("startDate")
    if isinstance(started, datetime) and started < called_at - CLOCK_TOLERANCE:
        logger.info("duplicate start for run %s: it is already running", name)
        return {
            "duplicate": True,
            "execution_arn": response["executionArn"],
            "run_id": run_input["run_id"],
        }
    return {
        "duplicate": False,
        "execution_arn": response["executionArn"],
        "run_id": run_input["run_id"],
    }


def workflow_starter(sfn_client: Any, state_machine_arn: str) -> Any:
    """A :class:`saeflow.ports.WorkflowStarter` bound to one state machine."""
    return partial(start_execution, sfn_client, state_machine_arn)


def running_executions(sfn_client: Any, state_machine_arn: str) -> list[tuple[str, str]]:
    """``(start time ISO 8601, execution ARN)`` of every RUNNING execution of the machine."""
    found: list[tuple[str, str]] = []
    pages = sfn_client.get_paginator("list_executions").paginate(
        stateMachineArn=state_machine_arn, statusFilter="RUNNING"
    )
    for page in pages:
        for execution in page.get("executions", []):
            started = execution["startDate"]
            stamp = started.isoformat() if isinstance(started, datetime) else str(started)
            found.append((stamp, execution["executionArn"]))
    return found
