"""Lambda handler of the label_feature step: one Map item, one feature label.

Labeler choice (``saeflow.adapters.labelers``): ``bedrock`` uses Claude on Bedrock (the
function's role grants it; model id from the template unless the run names one); ``auto``
is Bedrock too unless the deployer set ``ANTHROPIC_API_KEY`` (the one order of
``saeflow.core.contract.auto_labeler``, as in the CLI); ``offline`` is the heuristic;
``anthropic`` needs ``ANTHROPIC_API_KEY`` and the ``anthropic`` package, which the deployed
layer leaves out. LabelerThrottled and LabelerOutOfTime propagate by name so the Map's
Retry backs off with jitter; the table that holds the registry also holds the run's spend
counter. The step starts a request only while the invocation has more time left than one
request can take (``worst_case_request_s``); the function's timeout is above that (tests
check it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.bedrock_labeler import default_bedrock_client, worst_case_request_s
from saeflow.adapters.dynamo_registry import DynamoLabelRegistry
from saeflow.adapters.labelers import LabelerConfig, labeler_factory
from saeflow.adapters.s3_store import S3Store
from saeflow.ports import Labeler
from saeflow.steps import label_feature
from saeflow.steps.label_feature import LabelStepSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


def labeler_config_from_env(env: Mapping[str, str], bedrock_client: Any) -> LabelerConfig:
    """On AWS the role is the Bedrock credential: ``auto`` means Bedrock (or the Anthropic
    API when the deployment sets a key)."""
    return LabelerConfig(
        bedrock_model_id=env.get("BEDROCK_MODEL_ID") or None,
        bedrock_available=True,
        bedrock_client=bedrock_client,
        anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
    )


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
def labeler_for() -> Callable[[str, str | None], Labeler | None]:
    """The labeler factory; it caches each backend, so clients live as long as the container."""
    # BEDROCK_REGION: Claude is not offered in every Region (template parameter BedrockRegion).
    client = default_bedrock_client(os.environ.get("BEDROCK_REGION") or None)
    return labeler_factory(labeler_config_from_env(os.environ, client))


def with_auto_resolved(item: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The embedded mode says what ``auto`` means there (SAEFLOW_AUTO_LABELER; never on AWS)."""
    chosen = env.get("SAEFLOW_AUTO_LABELER")
    if chosen and item.get("labeler", "auto") == "auto":
        return {**item, "labeler": chosen}
    return item


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.get("run_id"), feature_id=event.get("feature_id"))
    event = with_auto_resolved(event, os.environ)
    store = S3Store(event.get("bucket") or os.environ["BUCKET_NAME"], s3_client())
    settings = LabelStepSettings(
        remaining_s=lambda: context.get_remaining_time_in_millis() / 1000,
        request_worst_s=worst_case_request_s(),
    )
    table = registry()
    result = label_feature.run(
        event,
        store=store,
        registry=table,
        labeler_for=labeler_for(),
        ledger=table,
        settings=settings,
    )
    name = "FeaturesLabelled" if result["labelled"] else "FeaturesUnlabelled"
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    return result
