"""Lambda handler of the validate step: check, normalise and shard the prompt set.

Thin: settings come from the environment (template Parameters), the step is
``saeflow.steps.validate.run``. Named errors (InvalidPromptSet...) propagate so the
state machine's Catch sees their class name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.hf_token import hf_token_from_environment
from saeflow.adapters.s3_store import S3Store
from saeflow.adapters.token_counter import tokenizer_for
from saeflow.core.labeling.allowlist import parse_model_ids
from saeflow.core.promptset import PromptLimits
from saeflow.core.run_policy import RunLimits
from saeflow.core.token_check import TokenCounter
from saeflow.steps import validate
from saeflow.steps.validate import TokenizerSource, ValidateSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")

MB = 1024 * 1024


def _offline(env: Mapping[str, str]) -> bool:
    return env.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def tokenizers_from_env(env: Mapping[str, str]) -> TokenizerSource:
    """The model's tokenizer for exact token counts: packaged for the default model; the
    local Hugging Face cache when offline (the embedded mode); else the hub, with the
    deployment's token (gated models)."""
    offline = _offline(env)
    cache_dir = env.get("HF_HUB_CACHE") or (
        str(Path(env["HF_HOME"]) / "hub") if env.get("HF_HOME") else None
    )
    secret_arn = env.get("SAEFLOW_HF_TOKEN_SECRET_ARN") or ""

    def source(model: str) -> TokenCounter | None:
        token = None if offline or not secret_arn else _token(secret_arn)
        return tokenizer_for(model, offline=offline, cache_dir=cache_dir, token=token)

    return source


@cache
def _token(secret_arn: str) -> str | None:
    return hf_token_from_environment({"SAEFLOW_HF_TOKEN_SECRET_ARN": secret_arn})


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
        transform_instance_type=env.get(
            "TRANSFORM_INSTANCE_TYPE", defaults.transform_instance_type
        ),
        reduce_batch_size=int(env.get("REDUCE_BATCH_SIZE", defaults.reduce_batch_size)),
        map_concurrency=int(env.get("MAP_CONCURRENCY", defaults.map_concurrency)),
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
    piece = validate.run(
        event, store=store, settings=settings(), tokenizers=tokenizers_from_env(os.environ)
    )
    metrics.add_metric(name="PromptsValidated", unit=MetricUnit.Count, value=piece["n_prompts"])
    metrics.add_metric(name="InputShards", unit=MetricUnit.Count, value=piece["n_shards"])
    checked = piece["token_check"]
    metrics.add_metric(
        name="PromptsCountedExactly", unit=MetricUnit.Count, value=checked["counted"]
    )
    return piece
