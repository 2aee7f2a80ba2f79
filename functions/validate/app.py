"""Lambda handler of the validate step: check, normalise and shard the prompt set.

Thin: settings come from the environment (template Parameters), the step is
``saeflow.steps.validate.run``. Named errors (InvalidPromptSet...) propagate so the
state machine's Catch sees their class name.
"""

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
from saeflow.core.labeling.allowlist import parse_model_ids
from saeflow.core.promptset import PromptLimits
from saeflow.core.run_policy import RunLimits
from saeflow.steps import validate
from saeflow.steps.validate import ValidateSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")

MB = 1024 * 1024


def settings_from_env(env: Mapping[str, str]) -> ValidateSettings:
    """The step's settings from the function's environment (defaults where unset)."""
    defaults = ValidateSettings()
    limits = PromptLimits(
        max_prompts=int(env.get("MAX_PROMPTS", defaults.limits.max_prompts)),
        max_file_bytes=int(float(env["MAX_FILE_MB"]) * MB)
        if env.get("MAX_FILE_MB")
        else defaults.limits.max_file_bytes,
        max_prompt_tokens=int(env.get("MAX_PROMPT_TOKENS", defaults.limits.max_prompt_tokens)),
    )
    run_limits = defaults.run_limits
    return ValidateSettings(
        limits=limits,
        shard_size=int(env.get("PROMPTS_PER_SHARD", defaults.shard_size)),
        run_limits=RunLimits(
            max_training_tokens=int(env.get("MAX_TRAINING_TOKENS", run_limits.max_training_tokens)),
            max_transform_instances=int(
                env.get("MAX_TRANSFORM_INSTANCES", run_limits.max_transform_instances)
            ),
        ),
        label_model_ids=parse_model_ids(env.get("LABEL_MODEL_IDS")),
    )


@cache
def settings() -> ValidateSettings:
    """Read once per container, on first use (tests set the environment first)."""
    return settings_from_env(os.environ)


@cache
def s3_client() -> Any:
    """One client per container, reused by every invocation."""
    return boto3.client("s3")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.get("run_id"))
    store = S3Store(event.get("bucket") or os.environ["BUCKET_NAME"], s3_client())
    piece = validate.run(event, store=store, settings=settings())
    metrics.add_metric(name="PromptsValidated", unit=MetricUnit.Count, value=piece["n_prompts"])
    metrics.add_metric(name="InputShards", unit=MetricUnit.Count, value=piece["n_shards"])
    return piece
