"""Lambda handler of the register_sae step: quality gate, then the SAE goes to saes/.

QualityGateFailed propagates by name: the state machine records it, no retry.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.s3_store import S3Store
from saeflow.steps import register_sae

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


@cache
def s3_client() -> Any:
    """One client per container, reused by every invocation."""
    return boto3.client("s3")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event["run"]["run_id"])
    store = S3Store(event["run"]["bucket"], s3_client())
    piece = register_sae.run(event, store=store)
    metrics.add_metric(name="SaesRegistered", unit=MetricUnit.Count, value=1)
    return piece
