"""Lambda handler of the record_failure step: error.json and the failure report.

Runs from every Catch, so it relies only on what the execution input carries
(``$.run_id``, ``$.bucket``) and on ``$.failure``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.s3_store import S3Store
from saeflow.steps import record_failure

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


@cache
def s3_client() -> Any:
    """One client per container, reused by every invocation."""
    return boto3.client("s3")


def run_bucket(event: Mapping[str, Any]) -> str:
    """The run's bucket: the execution input's, validate's, or the deployment's."""
    return (
        event.get("bucket") or (event.get("run") or {}).get("bucket") or os.environ["BUCKET_NAME"]
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.get("run_id"))
    result = record_failure.run(event, store=S3Store(run_bucket(event), s3_client()))
    metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)
    # Per error name; single_metric keeps the dimension off the handler's other metrics.
    with single_metric(
        name="RunsFailedByError", unit=MetricUnit.Count, value=1, namespace="saeflow"
    ) as m:
        m.add_dimension(name="error", value=result["error"])
    return result
