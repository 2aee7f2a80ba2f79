"""Lambda handler of the merge_partials step: a batch of shard partials -> one partial.

A child of the MergePartials Distributed Map; the event is one batch of its ItemBatcher
(``{"Items": [...], "BatchInput": {"run_id", "bucket"}}``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.s3_store import S3Store
from saeflow.steps import merge_partials

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
    batch_input = event.get("BatchInput") or {}
    logger.append_keys(run_id=batch_input.get("run_id"))
    store = S3Store(batch_input.get("bucket") or "", s3_client())
    result = merge_partials.run(event, store=store)
    metrics.add_metric(name="PartialsMerged", unit=MetricUnit.Count, value=result["shards"])
    return result
