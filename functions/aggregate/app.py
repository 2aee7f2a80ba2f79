"""Lambda handler of the aggregate step: feature statistics, features to label."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.s3_store import S3Store
from saeflow.steps import aggregate

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


@dataclass(frozen=True)
class LabelCaps:
    """The deployment's label budget (template LabelMaxFeatures / LabelMaxUsd).

    A run's ``label.max_features`` / ``label.max_usd`` may lower these, never raise them.
    """

    max_features: int | None = None
    max_usd: float | None = None


def caps_from_env(env: Mapping[str, str]) -> LabelCaps:
    """The label caps from the function's environment."""
    return LabelCaps(
        max_features=int(env["LABEL_MAX_FEATURES"]) if env.get("LABEL_MAX_FEATURES") else None,
        max_usd=float(env["LABEL_MAX_USD"]) if env.get("LABEL_MAX_USD") else None,
    )


def with_caps(event: dict[str, Any], caps: LabelCaps) -> dict[str, Any]:
    """The event with the run's label budget bounded by the deployment's caps."""
    label = dict(event["run"]["options"].get("label") or {})
    for name, cap in (("max_features", caps.max_features), ("max_usd", caps.max_usd)):
        if cap is not None:
            label[name] = min(label[name], cap) if label.get(name) is not None else cap
    options = {**event["run"]["options"], "label": label}
    return {**event, "run": {**event["run"], "options": options}}


@cache
def label_caps() -> LabelCaps:
    """Read once per container, on first use."""
    return caps_from_env(os.environ)


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
    piece = aggregate.run(with_caps(event, label_caps()), store=store)
    metrics.add_metric(name="TokensAggregated", unit=MetricUnit.Count, value=piece["n_tokens"])
    metrics.add_metric(name="FeaturesToLabel", unit=MetricUnit.Count, value=len(piece["features"]))
    return piece
