"""Lambda handler of the wait_for_capacity step: admit a run, or RunQueued (retried)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache, partial
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.sfn import running_executions
from saeflow.core.errors import RunQueued
from saeflow.steps import wait_for_capacity
from saeflow.steps.wait_for_capacity import CapacitySettings

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


def settings_from_env(env: Mapping[str, str]) -> CapacitySettings:
    defaults = CapacitySettings()
    return CapacitySettings(
        max_concurrent_runs=int(env.get("MAX_CONCURRENT_RUNS", defaults.max_concurrent_runs))
    )


@cache
def settings() -> CapacitySettings:
    """Read once per container, on first use."""
    return settings_from_env(os.environ)


@cache
def sfn_client() -> Any:
    return boto3.client("stepfunctions")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(execution=event.get("execution_arn"))
    running = partial(running_executions, sfn_client())
    try:
        return wait_for_capacity.run(event, running=running, settings=settings())
    except RunQueued:
        metrics.add_metric(name="RunsQueued", unit=MetricUnit.Count, value=1)
        raise
