"""labels.*: what labelling with Claude on Bedrock costs per feature, and on a re-run.

The real steps (aggregate, label_feature for every Map item, the detection summary) run
in this process over moto's S3 and DynamoDB, and the labeller is the real boto3 Converse
client against tests/functional's fake Bedrock runtime over real HTTP. The fake's answers
come from a deterministic simple rule (label: the three most frequent activating tokens;
a context fires when it holds one of them): the balanced accuracies measure that rule on
the synthetic topical run (tests/functional/fakes/topic_run.py), not Claude. Requests and
tokens per feature are what saeflow sends; tokens are the fake's count (~4 characters a
token over tools, system and messages), priced as Claude Haiku 4.5.

The re-run labels the same SAE weights again (another run id): a stored label that beat
its shuffled baseline is reused with no request; any other is labelled again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "functional"
MODEL_ID = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
TABLE = "bench-labels"
GOALS = {"requests_per_feature": 2.0, "input_tokens_per_feature": 4000, "rerun_requests": 0}


def _aws() -> tuple[Any, Any]:
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bench-labels")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.create_table(
        TableName=TABLE,
        KeySchema=[
            {"AttributeName": "sae_key", "KeyType": "HASH"},
            {"AttributeName": "feature", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "sae_key", "AttributeType": "S"},
            {"AttributeName": "feature", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return s3, ddb


def _label_run(items: list[dict], store: Any, registry: Any, run_id: str) -> list[dict]:
    from saeflow.adapters.bedrock_labeler import BedrockLabeler, default_bedrock_client
    from saeflow.steps import label_feature

    labeler = BedrockLabeler(MODEL_ID, default_bedrock_client("us-east-1"))
    results = [
        label_feature.run(
            dict(item, run_id=run_id),
            store=store,
            registry=registry,
            labeler_for=lambda backend, model_id: labeler,
            ledger=registry,
        )
        for item in items
    ]
    return [store.get_json(r["label_key"]) for r in results]


def _figures(records: list[dict], rerun: list[dict], rerun_requests: int) -> dict[str, Any]:
    from saeflow.core.labeling.detection import summarize

    labelled = [r for r in records if r.get("label")]
    n = max(1, len(labelled))
    usage = [r["usage"] for r in records]
    summary = summarize(records)
    return {
        "requests_per_feature": round(sum(u["requests"] for u in usage) / n, 3),
        "input_tokens_per_feature": round(sum(u["input_tokens"] for u in usage) / n, 1),
        "output_tokens_per_feature": round(sum(u["output_tokens"] for u in usage) / n, 1),
        "cache_read_tokens_per_feature": round(sum(u["cache_read_tokens"] for u in usage) / n, 1),
        "usd_per_feature": round(sum(u["usd"] for u in usage) / n, 6),
        "rerun_requests": rerun_requests,
        "rerun_relabelled": sum(1 for r in rerun if not r.get("reused")),
        "mean_balanced_accuracy": summary["mean_balanced_accuracy"],
        "baseline_mean_balanced_accuracy": summary["baseline_mean_balanced_accuracy"],
        "n_features": len(records),
        "n_labelled": len(labelled),
        "model_priced_as": MODEL_ID,
        "labeller": "fake Bedrock runtime over HTTP (real boto3 Converse client); answers "
        "from a deterministic rule, not Claude: the accuracies measure the rule",
        "goals": {k: f"<= {v}" for k, v in GOALS.items()},
    }


def run() -> dict[str, Any]:
    sys.path.insert(0, str(FAKES))
    from fakes.bedrock_server import running_fake_bedrock
    from fakes.topic_run import seed_topic_run
    from moto import mock_aws

    from saeflow.adapters.dynamo_registry import DynamoLabelRegistry
    from saeflow.adapters.s3_store import S3Store
    from saeflow.steps import aggregate

    fake_env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in [*fake_env, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"]}
    os.environ.update(fake_env)
    try:
        with mock_aws(), running_fake_bedrock() as bedrock:
            os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = bedrock.url
            s3, ddb = _aws()
            store = S3Store("bench-labels", s3)
            registry = DynamoLabelRegistry(TABLE, ddb)
            state = seed_topic_run(store)
            aggregated = aggregate.run(state, store=store)
            items = [
                {**item, **aggregated["label_settings"], "bucket": "bench-labels"}
                for item in aggregated["features"]
            ]
            first = _label_run(items, store, registry, "bench-first-000000000000")
            asked = len(bedrock.requests)
            rerun = _label_run(items, store, registry, "bench-again-000000000000")
            figures = _figures(first, rerun, len(bedrock.requests) - asked)
            figures["http_requests_first_run"] = asked
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    figures["met"] = (
        figures["requests_per_feature"] <= GOALS["requests_per_feature"]
        and figures["input_tokens_per_feature"] <= GOALS["input_tokens_per_feature"]
        and figures["rerun_requests"] <= GOALS["rerun_requests"]
    )
    return figures
