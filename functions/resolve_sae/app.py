"""Lambda handler of the resolve_sae step: a named, registered or to-be-trained SAE."""

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
from saeflow.steps import resolve_sae
from saeflow.steps.resolve_sae import ResolveSaeSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


def settings_from_env(env: Mapping[str, str]) -> ResolveSaeSettings:
    """The step's settings from the function's environment (defaults where unset)."""
    defaults = ResolveSaeSettings()
    return ResolveSaeSettings(
        max_prompt_tokens=int(env.get("MAX_PROMPT_TOKENS", defaults.max_prompt_tokens))
    )


@cache
def settings() -> ResolveSaeSettings:
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
    piece = resolve_sae.run(event, store=store, settings=settings())
    metrics.add_metric(name="SaesResolved", unit=MetricUnit.Count, value=1)
    # Per mode (train / cached / pretrained); single_metric keeps the dimension to itself.
    with single_metric(
        name="SaesResolvedByMode", unit=MetricUnit.Count, value=1, namespace="saeflow"
    ) as by_mode:
        by_mode.add_dimension(name="mode", value=piece["mode"])
    return piece
