"""Lambda handler of the write_report step: index.html, report.json, summary.md."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.s3_store import S3Store
from saeflow.steps import write_report
from saeflow.steps.write_report import ReportStepSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


def settings_from_env(env: Mapping[str, str]) -> ReportStepSettings:
    """Provenance the deployment knows: the worker image and the labeler model."""
    versions = {
        "worker_image": env.get("WORKER_IMAGE_URI"),
        "bedrock_model_id": env.get("BEDROCK_MODEL_ID"),
        "runtime": env.get("AWS_EXECUTION_ENV"),
    }
    return ReportStepSettings(versions={k: v for k, v in versions.items() if v})


@cache
def settings() -> ReportStepSettings:
    """Read once per container, on first use."""
    return settings_from_env(os.environ)


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
    piece = write_report.run(event, store=store, settings=settings())
    metrics.add_metric(name="ReportsWritten", unit=MetricUnit.Count, value=1)
    return piece
