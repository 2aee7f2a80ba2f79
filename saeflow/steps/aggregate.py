"""Workflow step "aggregate": rank the features of this prompt set, choose what to label.

Streams every extraction output shard line by line (bounded memory), reads the SAE's
feature_data.jsonl once (streaming) for the chosen features, writes
``runs/<id>/aggregate.json`` and one bundle per reported feature, and returns
``$.aggregate``: the Map items of the features to label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from saeflow.core import layout
from saeflow.core.aggregate import (
    AggregateSettings,
    FeatureAggregator,
    LabelBudget,
    build_bundle,
    choose_features_to_label,
    pick_corpus_data,
)
from saeflow.core.errors import ExtractionFailed, ObjectNotFound
from saeflow.core.labeling.pricing import usd_per_feature
from saeflow.core.options import RunOptions
from saeflow.ports import ObjectStore

logger = logging.getLogger(__name__)

OFFLINE_BACKENDS = ("offline", "none")


@dataclass(frozen=True)
class AggregateStepSettings:
    """Deployment settings: the LLM model labels will use (for the budget estimate)."""

    label_model_id: str | None = None


def store_for_uri(store: ObjectStore, uri: str) -> tuple[ObjectStore, str]:
    """The store and key prefix for an ``s3://`` URI (another bucket is allowed)."""
    bucket, key = layout.parse_s3_uri(uri)
    return (store if bucket == store.bucket else store.for_bucket(bucket)), key


def iter_json_lines(store: ObjectStore, key: str, error: type[Exception]) -> Iterator[dict]:
    for number, raw in enumerate(store.iter_lines(key), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise error(f"{key} line {number} is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise error(f"{key} line {number} is not a JSON object")
        yield value


def extraction_output_keys(store: ObjectStore, extract_uri: str) -> tuple[ObjectStore, list[str]]:
    source, prefix = store_for_uri(store, extract_uri)
    keys = [k for k in source.list_keys(prefix) if k.endswith(".out")]
    if not keys:
        raise ExtractionFailed(f"no extraction output under {extract_uri}")
    return source, keys


def iter_extraction_records(store: ObjectStore, extract_uri: str) -> Iterator[dict]:
    """Every extraction output record, shard after shard, line after line."""
    source, keys = extraction_output_keys(store, extract_uri)
    for key in keys:
        yield from iter_json_lines(source, key, ExtractionFailed)


def iter_feature_data(store: ObjectStore, sae_uri: str) -> Iterator[dict]:
    """feature_data.jsonl of the SAE, streamed; nothing when the SAE has none."""
    source, prefix = store_for_uri(store, sae_uri.rstrip("/") + "/")
    key = prefix + layout.SAE_FEATURE_DATA
    try:
        yield from iter_json_lines(source, key, ExtractionFailed)
    except ObjectNotFound:
        logger.info("no %s under %s: bundles carry prompt examples only", key, sae_uri)


def run(
    event: dict[str, Any],
    *,
    store: ObjectStore,
    settings: AggregateStepSettings | None = None,
) -> dict[str, Any]:
    settings = settings or AggregateStepSettings()
    run_state, sae_state = event["run"], event["sae"]
    run_id = run_state["run_id"]
    options = RunOptions.from_dict(run_state["options"])

    aggregator = FeatureAggregator(AggregateSettings(top_k_features=options.top_k_features))
    aggregator.add_all(iter_extraction_records(store, run_state["extract_uri"]))
    result = aggregator.result()

    backend = options.label.backend
    model_id = options.label.model_id or settings.label_model_id
    budget = LabelBudget(
        max_features=options.label.max_features,
        max_usd=options.label.max_usd,
        usd_per_feature=0.0
        if backend in OFFLINE_BACKENDS
        else usd_per_feature(model_id or "unknown"),
    )
    if backend == "none":
        to_label, reason = [], "label.backend=none: features are reported without labels"
    else:
        to_label, reason = choose_features_to_label(result.reported_ids, budget)

    corpus = pick_corpus_data(iter_feature_data(store, sae_state["uri"]), set(result.reported_ids))
    stats_by_id = {s["id"]: s for s in result.stats["features"]}
    bundle_keys: dict[int, str] = {}
    for fid in result.reported_ids:
        key = layout.feature_bundle_key(run_id, fid)
        store.put_json(
            key,
            build_bundle(
                feature_id=fid,
                sae_id=sae_state["sae_id"],
                run_id=run_id,
                stats=stats_by_id[fid],
                prompt_examples=result.examples[fid],
                random_windows=result.random_windows[fid],
                corpus=corpus.get(fid),
            ),
        )
        bundle_keys[fid] = key

    body = dict(result.stats)
    body.update(
        {
            "run_id": run_id,
            "sae_id": sae_state["sae_id"],
            "bundles": {str(fid): key for fid, key in bundle_keys.items()},
            "labelled": to_label,
            "label_selection": reason,
            "labeler": backend,
            "has_corpus_data": bool(corpus),
        }
    )
    aggregate_key = layout.aggregate_key(run_id)
    store.put_json(aggregate_key, body)
    logger.info(
        "aggregated %d prompts / %d tokens: %d features seen, %d reported, %d to label (%s)",
        body["n_prompts"],
        body["n_tokens"],
        body["n_features_seen"],
        len(result.reported_ids),
        len(to_label),
        reason,
    )
    return {
        "aggregate_key": aggregate_key,
        "features": [
            {
                "feature_id": fid,
                "bundle_key": bundle_keys[fid],
                "sae_id": sae_state["sae_id"],
                "labeler": backend,
                "model_id": options.label.model_id,
                "run_id": run_id,
                "bucket": store.bucket,
            }
            for fid in to_label
        ],
        "n_tokens": body["n_tokens"],
        "n_reported": len(result.reported_ids),
    }
