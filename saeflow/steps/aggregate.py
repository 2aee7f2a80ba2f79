"""Workflow step "aggregate": rank the features of this prompt set, choose what to label.

Two ways in, one way out (:func:`finish`):

- the map/reduce path (``$.run.reduce`` present, as validate plans every run): the
  partial aggregates that ``summarize_shard`` wrote per extraction shard (merged in batches
  by ``merge_partials`` when there are many) are merged here, checked to cover every shard
  once, and a per-record error kept in them is raised under its own name;
- the single pass (no plan: direct calls, older states): every extraction output shard is
  streamed line by line into one :class:`PartialAggregate`.

Then reads the SAE's feature_data.jsonl once (streaming) for the chosen features, writes
``runs/<id>/aggregate.json``, one bundle per reported feature and the report's prompt
sample (``runs/<id>/prompt_sample.jsonl``), and returns ``$.aggregate``: the Map items of
the features to label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from saeflow.core import layout
from saeflow.core.aggregation.accumulator import FeatureAccumulator
from saeflow.core.aggregation.bundles import (
    LabelBudget,
    attach_baselines,
    build_bundle,
    choose_features_to_label,
    corpus_negatives,
    pick_corpus_data,
    prompt_windows_for,
)
from saeflow.core.aggregation.partial import PartialAggregate, PromptSample
from saeflow.core.aggregation.ranking import RankingSettings
from saeflow.core.aggregation.reference import (
    CorpusReference,
    reference_from_feature_data,
    reference_from_summary,
)
from saeflow.core.aggregation.summary import SummarySettings, summarize
from saeflow.core.errors import ExtractionFailed, ObjectNotFound
from saeflow.core.options import RunOptions
from saeflow.core.steering import auto_steer_requests, steer_records
from saeflow.ports import ObjectStore
from saeflow.steps.partials import merge_run_partials

logger = logging.getLogger(__name__)

OFFLINE_BACKENDS = ("offline", "none")


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


def _sae_json(store: ObjectStore, sae_uri: str, name: str) -> Any:
    source, prefix = store_for_uri(store, sae_uri.rstrip("/") + "/")
    try:
        return source.get_json(prefix + name)
    except ObjectNotFound:
        return None


def load_reference(store: ObjectStore, sae_uri: str) -> CorpusReference | None:
    """The SAE's corpus statistics: feature_summary.json, else rebuilt from feature_data."""
    summary = _sae_json(store, sae_uri, layout.SAE_FEATURE_SUMMARY)
    if isinstance(summary, dict):
        return reference_from_summary(summary)
    metrics = _sae_json(store, sae_uri, layout.SAE_METRICS) or {}
    n_tokens = int(metrics.get("eval_tokens") or 0)
    if n_tokens <= 0:
        return None
    return reference_from_feature_data(iter_feature_data(store, sae_uri), n_tokens)


def load_corpus_windows(store: ObjectStore, sae_uri: str) -> list[dict[str, Any]]:
    """corpus_windows.jsonl of the SAE (non-activating corpus contexts), or none."""
    source, prefix = store_for_uri(store, sae_uri.rstrip("/") + "/")
    try:
        return list(iter_json_lines(source, prefix + layout.SAE_CORPUS_WINDOWS, ExtractionFailed))
    except ObjectNotFound:
        return []


def label_budget(options: RunOptions) -> LabelBudget:
    """The count cap only: ``label.max_usd`` is enforced on actual spend while labelling
    (saeflow.steps.label_feature), not on an estimate here."""
    if options.label.backend == "offline":
        # Offline labels cost no tokens and milliseconds each: every reported feature gets
        # one (rows marked "not labelled" in the report help nobody). The cap is Claude's.
        return LabelBudget(max_features=None)
    return LabelBudget(max_features=options.label.max_features)


def sae_weights_sha256(state: dict[str, Any]) -> str | None:
    """The SAE's weights hash: in ``$.sae`` (resolve_sae), or ``$.registered`` after a
    training (register_sae hashes the weights it registers)."""
    return (state.get("sae") or {}).get("weights_sha256") or (state.get("registered") or {}).get(
        "weights_sha256"
    )


def label_settings(state: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    """What every LabelFeatures Map item shares; the Map's ItemSelector adds it to each
    item (items stay small: the execution state is capped at 256 KB)."""
    return {
        "weights_sha256": sae_weights_sha256(state),
        "labeler": options.label.backend,
        "model_id": options.label.model_id,
        "max_usd": options.label.max_usd,
        "refresh": options.label.refresh,
    }


def write_bundles(
    store: ObjectStore,
    acc: FeatureAccumulator,
    body: dict[str, Any],
    *,
    sae_state: dict[str, Any],
    run_id: str,
    labelled: list[int],
) -> tuple[dict[int, str], bool]:
    """One bundle per reported feature; returns their keys and whether corpus data existed."""
    reported = body["reported"]
    corpus = pick_corpus_data(iter_feature_data(store, sae_state["uri"]), set(reported))
    corpus_windows = load_corpus_windows(store, sae_state["uri"])
    prompt_windows = acc.random_windows()
    stats_by_id = {s["id"]: s for s in body["features"]}
    bundles = {
        fid: build_bundle(
            feature_id=fid,
            sae_id=sae_state["sae_id"],
            run_id=run_id,
            stats=stats_by_id[fid],
            prompt_examples=acc.top_examples(fid),
            prompt_samples=acc.sampled_examples(fid),
            random_windows=prompt_windows_for(prompt_windows, fid),
            corpus=corpus.get(fid),
            negatives=corpus_negatives(corpus_windows, fid),
        )
        for fid in reported
    }
    attach_baselines(bundles, labelled)
    keys: dict[int, str] = {}
    for fid, bundle in bundles.items():
        keys[fid] = layout.feature_bundle_key(run_id, fid)
        store.put_json(keys[fid], bundle)
    return keys, bool(corpus)


def write_auto_steering(
    store: ObjectStore, run_state: dict[str, Any], acc: FeatureAccumulator, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """steer=auto: steer the most specific features; the requests go where validate said."""
    stats_by_id = {s["id"]: s for s in body["features"]}
    ranked = [stats_by_id[f] for f in body["ranking"]["views"]["specific"]]
    ranked = ranked or [stats_by_id[f] for f in body["reported"]]
    requests = auto_steer_requests(ranked, acc.short_texts)
    records = steer_records(requests)
    _, key = layout.parse_s3_uri(run_state["steer_input_uri"])
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    store.put_bytes(key, lines.encode(), "application/jsonlines")
    return [r["steer"] for r in records]


def gather(store: ObjectStore, run_state: dict[str, Any], options: RunOptions) -> PartialAggregate:
    """Every extraction record of the run in one partial aggregate (either path)."""
    plan = run_state.get("reduce")
    if plan:
        partial = merge_run_partials(store, run_state["run_id"], plan)
        partial.raise_error()
        return partial
    partial = PartialAggregate(sample=PromptSample(options.report_max_prompts))
    partial.add_all(iter_extraction_records(store, run_state["extract_uri"]))
    return partial


def write_prompt_sample(store: ObjectStore, run_id: str, partial: PartialAggregate) -> str:
    key = layout.prompt_sample_key(run_id)
    lines = "".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
        for r in partial.sample.records()
    )
    store.put_bytes(key, lines.encode(), "application/jsonlines")
    return key


def run(event: dict[str, Any], *, store: ObjectStore) -> dict[str, Any]:
    options = RunOptions.from_dict(event["run"]["options"])
    partial = gather(store, event["run"], options)
    return finish(event, partial, options, store=store)


def finish(
    event: dict[str, Any], partial: PartialAggregate, options: RunOptions, *, store: ObjectStore
) -> dict[str, Any]:
    """Summarise, choose what to label, write aggregate.json, bundles and the prompt sample."""
    run_state, sae_state = event["run"], event["sae"]
    run_id = run_state["run_id"]
    acc = partial.accumulator
    reference = load_reference(store, sae_state["uri"])
    ranking = RankingSettings(top_k_features=options.top_k_features)
    body = summarize(acc, reference, SummarySettings(ranking=ranking))

    backend = options.label.backend
    if backend == "none":
        to_label, reason = [], "label.backend=none: features are reported without labels"
    else:
        to_label, reason = choose_features_to_label(body["reported"], label_budget(options))
        if backend not in OFFLINE_BACKENDS:
            reason += f"; label.max_usd={options.label.max_usd:g} on actual spend"
    bundle_keys, has_corpus = write_bundles(
        store, acc, body, sae_state=sae_state, run_id=run_id, labelled=to_label
    )
    has_steering = bool(run_state.get("has_steering"))
    if options.steer_auto and run_state.get("steer_input_uri"):
        body["auto_steering"] = write_auto_steering(store, run_state, acc, body)
        has_steering = bool(body["auto_steering"])
    body.update(
        {
            "run_id": run_id,
            "sae_id": sae_state["sae_id"],
            "bundles": {str(fid): key for fid, key in bundle_keys.items()},
            "labelled": to_label,
            "label_selection": reason,
            "labeler": backend,
            "has_corpus_data": has_corpus,
            "prompt_sample_key": write_prompt_sample(store, run_id, partial),
            "n_shards_merged": len(partial.shards),
        }
    )
    aggregate_key = layout.aggregate_key(run_id)
    store.put_json(aggregate_key, body)
    logger.info(
        "aggregated %d prompts / %d tokens: %d features seen, %d reported, %d to label (%s)",
        body["n_prompts"],
        body["n_tokens"],
        body["n_features_seen"],
        len(body["reported"]),
        len(to_label),
        reason,
    )
    return {
        "aggregate_key": aggregate_key,
        # One small item per feature to label (~70 bytes: 500 items and their results
        # stay far below the 256 KB state limit); label_settings go to every item.
        "features": [{"feature_id": fid, "bundle_key": bundle_keys[fid]} for fid in to_label],
        "label_settings": label_settings(event, options),
        "n_tokens": body["n_tokens"],
        "n_reported": len(body["reported"]),
        # Read by the HasSteering choice: steer=auto may find nothing to steer.
        "has_steering": has_steering,
    }
