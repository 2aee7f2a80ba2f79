"""Build report.json (schema 1.0) from what the workflow produced.

Pure: the write_report step reads S3 and hands the pieces over; this module only
assembles them. Every field of DESIGN.md's "report.json: fields it always carries" is
present in every report, with ``null`` (and a reason where one helps) when unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from saeflow.core.labeling.pricing import estimate_usd, price_per_million

SCHEMA_VERSION = "1.0"
METRIC_KEYS = ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered")
EXAMPLES_PER_FEATURE = 6
ACTIVATION_DIGITS = 4


@dataclass
class ReportInputs:
    """Everything the report is made of (all optional but the run id)."""

    run_id: str
    status: str = "succeeded"
    options: Mapping[str, Any] = field(default_factory=dict)
    run_state: Mapping[str, Any] = field(default_factory=dict)  # $.run
    run_json: Mapping[str, Any] = field(default_factory=dict)  # runs/<id>/run.json
    sae_state: Mapping[str, Any] = field(default_factory=dict)  # $.sae
    sae_metrics: Mapping[str, Any] | None = None  # metrics.json of the SAE
    sae_manifest: Mapping[str, Any] | None = None  # saeflow_sae.json / cfg.json facts
    gate: Mapping[str, Any] | None = None  # $.registered.gate
    aggregate: Mapping[str, Any] = field(default_factory=dict)  # aggregate.json
    bundles: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    labels: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    prompt_records: Iterable[Mapping[str, Any]] = ()  # extraction output, streamed
    max_prompts: int = 200
    steering_records: Iterable[Mapping[str, Any]] = ()
    training: Mapping[str, Any] | None = None  # $.training
    extraction: Mapping[str, Any] | None = None  # $.extraction
    steering_job: Mapping[str, Any] | None = None  # $.steering
    error: Mapping[str, Any] | None = None  # error.json body for a failed run
    generated_at: str | None = None
    versions: Mapping[str, Any] = field(default_factory=dict)


def _round(value: Any) -> Any:
    return round(float(value), ACTIVATION_DIGITS) if isinstance(value, int | float) else value


def _to_seconds(value: Any) -> float | None:
    """A timestamp (epoch s or ms, or ISO 8601) as epoch seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def job_seconds(job: Mapping[str, Any] | None) -> float | None:
    """Wall seconds of a job from its ``start``/``end`` (or billable seconds)."""
    if not job:
        return None
    if isinstance(job.get("billable_seconds"), int | float):
        return float(job["billable_seconds"])
    start, end = _to_seconds(job.get("start")), _to_seconds(job.get("end"))
    if start is None or end is None or end < start:
        return None
    return round(end - start, 3)


# --- prompts ----------------------------------------------------------------------


def report_prompt(record: Mapping[str, Any]) -> dict[str, Any]:
    tokens = []
    for tok in record.get("tokens") or ():
        feats = [
            {"id": int(f["id"]), "activation": _round(f["activation"])}
            for f in tok.get("features") or ()
            if float(f.get("activation", 0.0)) > 0.0
        ]
        tokens.append({"text": str(tok.get("text", "")), "features": feats})
    return {
        "id": str(record.get("id", record.get("prompt_index", ""))),
        "set": record.get("set", "main"),
        "text": record.get("text") or "".join(t["text"] for t in tokens),
        "tokens": tokens,
    }


def collect_prompts(
    records: Iterable[Mapping[str, Any]], limit: int, known_total: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` prompts and how many more there were.

    With ``known_total`` (from the aggregation) the stream is not read past ``limit``:
    a run of a million prompts does not re-read every shard to show two hundred.
    """
    shown: list[dict[str, Any]] = []
    total = 0
    for record in records:
        total += 1
        if len(shown) < limit:
            shown.append(report_prompt(record))
        elif known_total is not None:
            break
    if known_total is not None:
        return shown, max(0, known_total - len(shown))
    return shown, total - len(shown)


# --- features ----------------------------------------------------------------------


def _examples(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    corpus = bundle.get("corpus") or {}
    out = []
    for source, examples in (
        ("prompt", bundle.get("prompt_examples") or ()),
        ("corpus", corpus.get("top_examples") or ()),
    ):
        for ex in list(examples)[:EXAMPLES_PER_FEATURE]:
            out.append(
                {
                    "source": source,
                    "prompt_id": ex.get("prompt_id"),
                    "tokens": [str(t) for t in ex.get("tokens", ())],
                    "activations": [_round(a) for a in ex.get("activations", ())],
                    "max": _round(ex.get("max", 0.0)),
                }
            )
    return out


def _histogram(bundle: Mapping[str, Any]) -> dict[str, Any] | None:
    """The corpus histogram (feature_data.jsonl) when the SAE has one, else this prompt set's."""
    corpus = bundle.get("corpus") or {}
    hist = corpus.get("histogram")
    if isinstance(hist, Mapping) and hist.get("counts"):
        return {
            "edges": list(hist.get("edges", [])),
            "counts": list(hist["counts"]),
            "source": "corpus",
        }
    hist = (bundle.get("stats") or {}).get("histogram")
    if isinstance(hist, Mapping) and hist.get("counts"):
        return dict(hist)
    return None


def report_feature(
    stats: Mapping[str, Any],
    bundle: Mapping[str, Any] | None,
    label: Mapping[str, Any] | None,
    not_labelled_reason: str,
) -> dict[str, Any]:
    bundle = bundle or {}
    corpus = bundle.get("corpus") or {}
    if label:
        score = label.get("score")
        score_reason = label.get("score_reason") if score is None else None
        labelled = {
            "label": label.get("label"),
            "explanation": label.get("explanation"),
            "confidence": label.get("confidence"),
            "label_source": label.get("label_source"),
            "label_reused": bool(label.get("reused")),
            "label_fallback_reason": label.get("fallback_reason"),
            "score": score,
            "score_reason": score_reason,
            "score_method": label.get("score_method"),
            "score_examples": label.get("score_examples"),
        }
    else:
        labelled = {
            "label": None,
            "explanation": None,
            "confidence": None,
            "label_source": None,
            "label_reused": False,
            "label_fallback_reason": None,
            "score": None,
            "score_reason": f"not labelled: {not_labelled_reason}",
            "score_method": None,
            "score_examples": 0,
        }
    feature = {
        "id": int(stats["id"]),
        "rank": stats.get("rank"),
        **labelled,
        "frequency": _round(stats.get("frequency", 0.0)),
        "prompt_frequency": _round(stats.get("prompt_frequency", 0.0)),
        "token_count": stats.get("token_count", 0),
        "mean_activation": _round(stats.get("mean_activation", 0.0)),
        "max_activation": _round(stats.get("max_activation", 0.0)),
        "importance": _round(stats.get("importance", 0.0)),
        "corpus_density": corpus.get("density"),
        "corpus_max_activation": corpus.get("max_activation"),
        "top_tokens": [
            {
                "token": t["token"],
                "count": t["count"],
                "mean_activation": _round(t["mean_activation"]),
            }
            for t in stats.get("top_tokens", ())
        ],
        "examples": _examples(bundle),
        "histogram": _histogram(bundle),
        "promoted_tokens": list(corpus.get("promoted_tokens") or ()),
        "suppressed_tokens": list(corpus.get("suppressed_tokens") or ()),
    }
    if "contrast" in stats:
        feature["contrast"] = {k: _round(v) for k, v in stats["contrast"].items()}
    return feature


def report_features(inputs: ReportInputs) -> list[dict[str, Any]]:
    agg = inputs.aggregate
    stats_by_id = {int(s["id"]): s for s in agg.get("features", ())}
    reported = [int(f) for f in agg.get("reported", ())]
    labelled = {int(f) for f in agg.get("labelled", ())}
    selection = agg.get("label_selection") or "not chosen for labelling"
    out = []
    for fid in reported:
        if fid not in stats_by_id:
            continue
        label = inputs.labels.get(fid)
        if label is None:
            reason = (
                "its labelling produced no result"
                if fid in labelled
                else f"outside the labelling selection ({selection})"
            )
        else:
            reason = ""
        out.append(report_feature(stats_by_id[fid], inputs.bundles.get(fid), label, reason))
    return out


# --- steering, contrast, cost, provenance ----------------------------------------------


def report_steering(
    records: Iterable[Mapping[str, Any]], labels: Mapping[int, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for rec in records:
        req = rec.get("steer") or {}
        fid, prompt = int(req.get("feature", -1)), str(req.get("prompt", ""))
        group = groups.get((fid, prompt))
        if group is None:
            label = labels.get(fid) or {}
            group = groups[(fid, prompt)] = {
                "feature": fid,
                "feature_label": label.get("label"),
                "prompt": prompt,
                "baseline": rec.get("baseline"),
                "settings": {
                    k: req.get(k) for k in ("max_new_tokens", "temperature", "freq_penalty", "seed")
                },
                "results": [],
            }
        group["results"].append(
            {
                "strength": req.get("strength"),
                "baseline": rec.get("baseline"),
                "steered": rec.get("steered"),
                "error": rec.get("error"),
            }
        )
    for group in groups.values():
        group["results"].sort(key=lambda r: (r["strength"] is None, r["strength"] or 0.0))
    return list(groups.values())


def report_contrast(
    agg: Mapping[str, Any], labels: Mapping[int, Mapping[str, Any]], contrast_key: Any
) -> dict[str, Any] | None:
    contrast = agg.get("contrast")
    if not contrast:
        return None

    def rows(side: str) -> list[dict[str, Any]]:
        return [
            {
                **{k: _round(v) for k, v in row.items()},
                "label": (labels.get(int(row["id"])) or {}).get("label"),
            }
            for row in contrast.get(side, ())
        ]

    return {
        "contrast_set": contrast_key,
        "n_prompts": contrast.get("n_prompts"),
        "n_tokens": contrast.get("n_tokens"),
        "more_in_main": rows("more_in_main"),
        "more_in_contrast": rows("more_in_contrast"),
    }


def report_cost(inputs: ReportInputs) -> dict[str, Any]:
    run = inputs.run_state
    instances = int(run.get("transform_instance_count") or 1)
    training_s = job_seconds(inputs.training)
    extraction_s = job_seconds(inputs.extraction)
    steering_s = job_seconds(inputs.steering_job)
    gpu_seconds = (training_s or 0.0) + (extraction_s or 0.0) * instances + (steering_s or 0.0)
    usage = [lab.get("usage") or {} for lab in inputs.labels.values()]
    inp = sum(int(u.get("input_tokens") or 0) for u in usage)
    out = sum(int(u.get("output_tokens") or 0) for u in usage)
    models = sorted({u["model_id"] for u in usage if u.get("model_id")})
    usd = 0.0
    for u in usage:
        usd += estimate_usd(
            u.get("model_id"), int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0)
        )
    basis = "; ".join(f"{m}: {price_per_million(m)[1]}" for m in models) or "no LLM tokens spent"
    return {
        "gpu_seconds": round(gpu_seconds, 3),
        "gpu_seconds_basis": "training billable seconds + extraction wall time x instances "
        "+ steering wall time (locally: the worker's wall time, CPU or GPU)",
        "llm_input_tokens": inp,
        "llm_output_tokens": out,
        "llm_requests": sum(int(u.get("requests") or 0) for u in usage),
        "llm_models": models,
        "estimated_usd": round(usd, 6),
        "estimated_usd_basis": basis,
    }


def report_timings(inputs: ReportInputs, n_tokens: int) -> dict[str, Any]:
    training_s = job_seconds(inputs.training)
    extraction_s = job_seconds(inputs.extraction)
    steering_s = job_seconds(inputs.steering_job)
    metrics = inputs.sae_metrics or {}
    return {
        "training_s": training_s,
        "extraction_s": extraction_s,
        "steering_s": steering_s,
        "extraction_tokens": n_tokens,
        "extraction_tokens_per_s": round(n_tokens / extraction_s, 2) if extraction_s else None,
        "training_tokens_per_s": metrics.get("tokens_per_s") if inputs.training else None,
        "generated_at": inputs.generated_at,
    }


def report_sae(inputs: ReportInputs) -> dict[str, Any]:
    metrics = dict(inputs.sae_metrics or {})
    manifest = inputs.sae_manifest or {}
    sae_state = inputs.sae_state

    def fact(key: str) -> Any:
        return metrics.get(key, manifest.get(key))

    return {
        "source": inputs.options.get("sae") or sae_state.get("mode"),
        "mode": sae_state.get("mode"),
        "sae_id": sae_state.get("sae_id"),
        "uri": sae_state.get("uri"),
        "d_in": fact("d_in"),
        "d_sae": fact("d_sae"),
        "architecture": fact("architecture"),
        "metrics": {
            **{k: metrics.get(k) for k in METRIC_KEYS},
            **{
                k: v
                for k, v in metrics.items()
                if k not in METRIC_KEYS and not isinstance(v, dict | list)
            },
        },
        "quality_gate": dict(inputs.gate) if inputs.gate else None,
    }


def report_provenance(inputs: ReportInputs, features: list[dict[str, Any]]) -> dict[str, Any]:
    run_json = inputs.run_json
    return {
        "versions": dict(inputs.versions),
        "run": dict(run_json.get("provenance") or {}),
        "prompt_set": {
            k: run_json.get(k, inputs.run_state.get(k))
            for k in ("bucket", "key", "version_id", "etag")
        },
        "model": inputs.options.get("model"),
        "hook": inputs.options.get("hook"),
        "sae_id": inputs.sae_state.get("sae_id"),
        "sae_uri": inputs.sae_state.get("uri"),
        "sae_manifest": dict(inputs.sae_manifest) if inputs.sae_manifest else None,
        "labelers": sorted({f["label_source"] for f in features if f.get("label_source")}),
        "jobs": {
            "training": (inputs.training or {}).get("job_name"),
            "extraction": (inputs.extraction or {}).get("job_name"),
            "steering": (inputs.steering_job or {}).get("job_name"),
        },
        "options": dict(inputs.options),
    }


def build_report(inputs: ReportInputs) -> dict[str, Any]:
    agg = inputs.aggregate
    known = None
    if "n_prompts" in agg:
        known = int(agg["n_prompts"]) + int(agg.get("n_contrast_prompts") or 0)
    prompts, omitted = collect_prompts(inputs.prompt_records, inputs.max_prompts, known)
    features = report_features(inputs)
    n_tokens = int(agg.get("n_tokens", 0)) + int(agg.get("n_contrast_tokens", 0))
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": inputs.run_id,
        "status": inputs.status,
        "error": dict(inputs.error) if inputs.error else None,
        "model": inputs.options.get("model"),
        "hook": inputs.options.get("hook"),
        "sae": report_sae(inputs),
        "n_prompts": agg.get("n_prompts"),
        "n_tokens": agg.get("n_tokens"),
        "n_prompts_shown": len(prompts),
        "n_prompts_omitted": omitted,
        "prompts": prompts,
        "features": features,
        "ranking": {
            "method": (agg.get("settings") or {}).get("ranking"),
            "n_features_seen": agg.get("n_features_seen"),
            "n_dense_excluded": agg.get("n_dense_excluded"),
            "label_selection": agg.get("label_selection"),
        },
        "steering": report_steering(inputs.steering_records, inputs.labels),
        "contrast": report_contrast(agg, inputs.labels, inputs.options.get("contrast")),
        "cost": report_cost(inputs),
        "timings": report_timings(inputs, n_tokens),
        "provenance": report_provenance(inputs, features),
    }
