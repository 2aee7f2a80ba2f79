"""Lambda handler of the summarize_shard step: one extraction shard -> partial + Parquet.

A child of the SummarizeShards Distributed Map; the event is one item (the Map's
ItemSelector). pyarrow comes from the ParquetLayer, which only this function has.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.parquet_tables import encode_parquet
from saeflow.adapters.s3_store import S3Store
from saeflow.steps import summarize_shard

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
    logger.append_keys(run_id=event["run_id"], shard=event["shard"])
    store = S3Store(event["bucket"], s3_client())
    result = summarize_shard.run(event, store=store, encode=encode_parquet)
    metrics.add_metric(name="ShardRecords", unit=MetricUnit.Count, value=result["records"])
    metrics.add_metric(name="TokenRows", unit=MetricUnit.Count, value=result["token_rows"])
    return result
