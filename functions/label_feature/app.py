"""Lambda handler of the label_feature step: one Map item, one feature label.

Labeler choice on AWS: ``bedrock`` (and ``auto``) use Claude on Bedrock with the
template's model id; ``offline`` is the heuristic; ``anthropic`` needs an
``ANTHROPIC_API_KEY`` in the function's environment. LabelerThrottled propagates by
name so the Map's Retry backs off with jitter.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.bedrock_labeler import BedrockLabeler, default_bedrock_client
from saeflow.adapters.dynamo_registry import DynamoLabelRegistry
from saeflow.adapters.s3_store import S3Store
from saeflow.core.errors import LabelerError
from saeflow.ports import Labeler
from saeflow.steps import label_feature

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


@cache
def s3_client() -> Any:
    """One client per container, reused by every invocation."""
    return boto3.client("s3")


@cache
def registry() -> DynamoLabelRegistry | None:
    """The label registry table, or None when the deployment has none."""
    table = os.environ.get("LABEL_TABLE_NAME")
    return DynamoLabelRegistry(table, boto3.client("dynamodb")) if table else None


@cache
def labeler_for(backend: str, model_id: str | None) -> Labeler | None:
    """The LLM backend for an item's ``labeler`` and ``model_id``, built once per container.

    ``auto`` means Bedrock here: the function's role is what grants access to it.
    """
    if backend in ("bedrock", "auto"):
        chosen = model_id or os.environ.get("BEDROCK_MODEL_ID", "")
        return BedrockLabeler(chosen, default_bedrock_client())
    if backend == "anthropic":
        api_key = os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise LabelerError("label.backend=anthropic needs ANTHROPIC_API_KEY in this deployment")
        from saeflow.adapters.anthropic_labeler import AnthropicLabeler  # optional dependency

        return (
            AnthropicLabeler(model_id, api_key=api_key)
            if model_id
            else AnthropicLabeler(api_key=api_key)
        )
    if backend == "offline":
        return None
    raise LabelerError(f"unknown labeler {backend!r}")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.get("run_id"), feature_id=event.get("feature_id"))
    store = S3Store(event.get("bucket") or os.environ["BUCKET_NAME"], s3_client())
    result = label_feature.run(event, store=store, registry=registry(), labeler_for=labeler_for)
    metrics.add_metric(name="FeaturesLabelled", unit=MetricUnit.Count, value=1)
    return result
