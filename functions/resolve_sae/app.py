"""Lambda handler of the resolve_sae step: a named, registered or to-be-trained SAE."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from saeflow.adapters.hf_token import hf_token_from_environment
from saeflow.adapters.s3_store import S3Store
from saeflow.adapters.sae_catalog import HubSaeCatalog
from saeflow.steps import resolve_sae
from saeflow.steps.resolve_sae import ResolveSaeSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="saeflow")


def settings_from_env(env: Mapping[str, str]) -> ResolveSaeSettings:
    """The step's settings from the function's environment (defaults where unset)."""
    defaults = ResolveSaeSettings()
    return ResolveSaeSettings(
        max_prompt_tokens=int(env.get("MAX_PROMPT_TOKENS", defaults.max_prompt_tokens)),
        max_training_seconds=int(env.get("MAX_TRAINING_SECONDS", defaults.max_training_seconds)),
    )


def catalog_from_env(env: Mapping[str, str]) -> HubSaeCatalog:
    """Offline (HF_HUB_OFFLINE, the embedded mode) the local cache is what the worker will
    load from; online the hub is asked, with the deployment's token when it has one."""
    offline = env.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
    cache_dir = env.get("HF_HUB_CACHE") or (
        str(Path(env["HF_HOME"]) / "hub") if env.get("HF_HOME") else None
    )
    token = None if offline else _token(env.get("SAEFLOW_HF_TOKEN_SECRET_ARN") or "")
    return HubSaeCatalog(offline=offline, cache_dir=cache_dir, token=token)


@cache
def _token(secret_arn: str) -> str | None:
    return hf_token_from_environment({"SAEFLOW_HF_TOKEN_SECRET_ARN": secret_arn})


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
    piece = resolve_sae.run(
        event, store=store, settings=settings(), catalog=catalog_from_env(os.environ)
    )
    metrics.add_metric(name="SaesResolved", unit=MetricUnit.Count, value=1)
    # Per mode (train / cached / pretrained); single_metric keeps the dimension to itself.
    with single_metric(
        name="SaesResolvedByMode", unit=MetricUnit.Count, value=1, namespace="saeflow"
    ) as by_mode:
        by_mode.add_dimension(name="mode", value=piece["mode"])
    return piece
