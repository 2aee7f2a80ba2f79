"""Lambda handler of start_run: S3 "Object Created" (via EventBridge) -> one execution.

The event is parsed with Powertools' model of S3 events delivered by EventBridge; the
execution is named by the run id, so a duplicated delivery starts nothing new.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.sfn import workflow_starter
from saeflow.steps import start_run

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


@cache
def state_machine_arn() -> str:
    """Read once per container, on first use."""
    return os.environ["STATE_MACHINE_ARN"]


@cache
def sfn_client() -> Any:
    """One client per container, reused by every invocation."""
    return boto3.client("stepfunctions")


def step_event(parsed: S3EventNotificationEventBridgeModel) -> dict[str, Any]:
    """The plain-JSON event start_run reads (the EventBridge ``detail``)."""
    obj = parsed.detail.object
    return {
        "detail": {
            "bucket": {"name": parsed.detail.bucket.name},
            "object": {"key": obj.key, "version-id": obj.version_id, "etag": obj.etag},
        }
    }


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=S3EventNotificationEventBridgeModel)
def lambda_handler(
    event: S3EventNotificationEventBridgeModel, context: LambdaContext
) -> dict[str, Any]:
    starter = workflow_starter(sfn_client(), state_machine_arn())
    result = start_run.run(step_event(event), start_workflow=starter)
    if result.get("started"):
        metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=1)
    elif result.get("duplicate"):
        metrics.add_metric(name="DuplicateEvents", unit=MetricUnit.Count, value=1)
    else:
        metrics.add_metric(name="KeysIgnored", unit=MetricUnit.Count, value=1)
    return result
