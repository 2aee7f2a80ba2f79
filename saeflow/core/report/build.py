"""Build report.json (schema 1.0) from what the workflow produced.

Pure: the write_report step reads S3 and hands the pieces over; this module only
assembles them. Every field of DESIGN.md's "report.json: fields it always carries" is
present in every report, with ``null`` (and a reason where one helps) when unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from saeflow.core.aggregation.ranking import prompt_top_features
from saeflow.core.contract.extraction import record_tokens
from saeflow.core.labeling.detection import summarize as summarize_detection
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


def report_prompt(
    record: Mapping[str, Any], scores: Mapping[int, float] | None = None
) -> dict[str, Any]:
    tokens = []
    texts, features = record_tokens(record)  # either extraction record form
    for text, per_token in zip(texts, features, strict=True):
        feats = [{"id": fid, "activation": _round(act)} for fid, act in per_token if act > 0.0]
        tokens.append({"text": text, "features": feats})
    return {
        "id": str(record.get("id", record.get("prompt_index", ""))),
        "set": record.get("set", "main"),
        "text": record.get("text") or "".join(t["text"] for t in tokens),
        "tokens": tokens,
        "top_features": prompt_top_features(tokens, scores or {}),
    }


def collect_prompts(
    records: Iterable[Mapping[str, Any]],
    limit: int,
    known_total: int | None = None,
    scores: Mapping[int, float] | None = None,
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
            shown.append(report_prompt(record, scores))
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


def _label_fields(label: Mapping[str, Any] | None, not_labelled_reason: str) -> dict[str, Any]:
    if not label:
        return {
            "label": None,
            "explanation": None,
            "confidence": None,
            "label_source": None,
            "label_reused": False,
            "label_fallback_reason": None,
            "score": None,
            "score_reason": f"not labelled: {not_labelled_reason}",
            "score_method": None,
            "detection": None,
            "baseline": None,
        }
    score = label.get("score")
    return {
        "label": label.get("label"),
        "explanation": label.get("explanation"),
        "confidence": label.get("confidence"),
        "label_source": label.get("label_source"),
        "label_reused": bool(label.get("reused")),
        "label_fallback_reason": label.get("fallback_reason"),
        "score": score,
        "score_reason": label.get("score_reason") if score is None else None,
        "score_method": label.get("score_method"),
        "detection": label.get("detection"),
        "baseline": label.get("baseline"),
    }


def report_feature(
    stats: Mapping[str, Any],
    bundle: Mapping[str, Any] | None,
    label: Mapping[str, Any] | None,
    not_labelled_reason: str,
    views: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    bundle = bundle or {}
    corpus = bundle.get("corpus") or {}
    fid = int(stats["id"])
    views = views or {}
    feature = {
        "id": fid,
        "rank": stats.get("rank"),
        "views": {
            name: (list(ids).index(fid) + 1 if fid in ids else None) for name, ids in views.items()
        },
        **_label_fields(label, not_labelled_reason),
        "specificity": _round(stats.get("specificity")),
        "specificity_score": _round(stats.get("specificity_score")),
        "expected_count": _round(stats.get("expected_count")),
        "first_token": bool(stats.get("first_token")),
        "frequency": _round(stats.get("frequency", 0.0)),
        "prompt_frequency": _round(stats.get("prompt_frequency", 0.0)),
        "token_count": stats.get("token_count", 0),
        "prompt_count": stats.get("prompt_count", 0),
        "mean_activation": _round(stats.get("mean_activation", 0.0)),
        "max_activation": _round(stats.get("max_activation", 0.0)),
        "importance": _round(stats.get("importance", 0.0)),
        "corpus_density": stats.get("corpus_density", corpus.get("density")),
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
        views = (agg.get("ranking") or {}).get("views") or {}
        out.append(report_feature(stats_by_id[fid], inputs.bundles.get(fid), label, reason, views))
    return out


def report_first_token_features(agg: Mapping[str, Any], limit: int = 20) -> dict[str, Any]:
    """The first-token features seen on these prompts: listed apart, never ranked or labelled."""
    stats_by_id = {int(s["id"]): s for s in agg.get("features", ())}
    info = agg.get("first_token") or {}
    ids = [int(f) for f in info.get("features") or ()]
    rows = []
    for fid in ids[:limit]:
        s = stats_by_id.get(fid) or {}
        rows.append(
            {
                "id": fid,
                "source": s.get("first_token_source"),
                "evidence": s.get("first_token_evidence"),
                "frequency": _round(s.get("frequency", 0.0)),
                "max_activation": _round(s.get("max_activation", 0.0)),
            }
        )
    return {
        "rule": info.get("corpus_rule") or info.get("rule"),
        "n": len(ids),
        "features": rows,
        "note": "These features fire on the first real token of a text whatever the word is "
        "(a property of the position, not of the prompt). They are left out of the rankings, "
        "the colouring and the labels.",
    }


def report_ranking(agg: Mapping[str, Any]) -> dict[str, Any]:
    ranking = agg.get("ranking") or {}
    if not isinstance(ranking, Mapping):  # aggregate.json of an older version
        ranking = {"method": str(ranking)}
    return {
        "method": ranking.get("method"),
        "description": ranking.get("description"),
        "active_description": ranking.get("active_description"),
        "fallback": ranking.get("fallback"),
        "reference": ranking.get("reference"),
        "min_prompts": ranking.get("min_prompts"),
        "views": ranking.get("views") or {},
        "n_features_seen": agg.get("n_features_seen"),
        "n_ranked": agg.get("n_ranked"),
        "label_selection": agg.get("label_selection"),
    }


def prompt_scores(agg: Mapping[str, Any]) -> dict[int, float]:
    """Specificity scores of the ranked features (what each prompt's own list uses)."""
    return {
        int(s["id"]): float(s["specificity_score"])
        for s in agg.get("features", ())
        if s.get("rank") is not None and s.get("specificity_score") is not None
    }


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
    stats_by_id = {int(s["id"]): s for s in agg.get("features", ())}

    def rows(side: str) -> list[dict[str, Any]]:
        out = []
        for row in contrast.get(side, ()):
            fid = int(row["id"])
            tokens = (stats_by_id.get(fid) or {}).get("top_tokens") or []
            out.append(
                {
                    **{k: _round(v) for k, v in row.items() if k not in ("p_value", "q_value")},
                    "p_value": row.get("p_value"),
                    "q_value": row.get("q_value"),
                    "label": (labels.get(fid) or {}).get("label"),
                    "top_tokens": [t["token"] for t in tokens[:5]],
                }
            )
        return out

    return {
        "contrast_set": contrast_key,
        "test": contrast.get("test"),
        "correction": contrast.get("correction"),
        "alpha": contrast.get("alpha"),
        "effect_size_definition": contrast.get("effect_size"),
        "n_prompts": contrast.get("n_prompts"),
        "n_tokens": contrast.get("n_tokens"),
        "n_tested": contrast.get("n_tested"),
        "n_untestable": contrast.get("n_untestable"),
        "n_significant": contrast.get("n_significant"),
        "more_in_main": rows("more_in_main"),
        "more_in_contrast": rows("more_in_contrast"),
    }


def report_labeling(inputs: ReportInputs, features: list[dict[str, Any]]) -> dict[str, Any]:
    """How good the labels are: detection scores against the shuffled-label baseline."""
    labelled = [inputs.labels[f["id"]] for f in features if f["id"] in inputs.labels]
    summary = summarize_detection(labelled)
    sources = sorted({str(r.get("label_source")) for r in labelled if r.get("label_source")})
    return {
        "labeler": (inputs.aggregate.get("labeler") or None),
        "label_sources": sources,
        **summary,
    }


def record_usd(usage: Mapping[str, Any]) -> float:
    """What one label record's requests cost: the ``usd`` the labeller recorded (priced per
    request, cache reads and writes at their own prices) when present, else an estimate
    from its tokens (records written before usage carried it)."""
    usd = usage.get("usd")
    if isinstance(usd, int | float) and not isinstance(usd, bool):
        return float(usd)
    return estimate_usd(
        usage.get("model_id"),
        int(usage.get("input_tokens") or 0),
        int(usage.get("output_tokens") or 0),
    )


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
    usd = sum(record_usd(u) for u in usage)
    basis = "; ".join(f"{m}: {price_per_million(m)[1]}" for m in models) or "no LLM tokens spent"
    if models:
        basis += " (per request, prompt-cache reads and writes at their own prices)"
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
        "on_prompts": sae_on_prompts(inputs.aggregate.get("prompt_quality"), metrics),
    }


# How far below the corpus figure the prompts' figure may fall before the report warns.
EV_WARN_DROP = 0.1
CE_WARN_DROP = 0.02


def sae_on_prompts(quality: Mapping[str, Any] | None, corpus: Mapping[str, Any]) -> dict[str, Any]:
    """The SAE's explained variance and CE loss recovered on these prompts, and a warning
    in words when the prompts are far from what it was trained on."""
    quality = quality or {}
    ev, ce = quality.get("explained_variance"), quality.get("ce_loss_recovered")
    out = {
        "explained_variance": _round(ev),
        "explained_variance_reason": None
        if ev is not None
        else quality.get("ev_reason") or "not reported by the extraction",
        "ce_loss_recovered": _round(ce),
        "ce_loss_recovered_reason": None
        if ce is not None
        else quality.get("ce_reason") or "not measured",
        "n_tokens": quality.get("n_tokens"),
        "warning": None,
    }
    drops = []
    corpus_ev, corpus_ce = corpus.get("explained_variance"), corpus.get("ce_loss_recovered")
    if ev is not None and corpus_ev is not None and ev < corpus_ev - EV_WARN_DROP:
        drops.append(
            f"explained variance {ev:.2f} on these prompts against {corpus_ev:.2f} on held-out corpus text"
        )
    if ce is not None and corpus_ce is not None and ce < corpus_ce - CE_WARN_DROP:
        drops.append(f"CE loss recovered {100 * ce:.1f}% against {100 * corpus_ce:.1f}%")
    if drops:
        out["warning"] = (
            "These prompts are far from the text the SAE was trained on ("
            + "; ".join(drops)
            + "): its features describe them less well; read the labels with care, or train "
            "an SAE on a corpus closer to these prompts (train.corpus)."
        )
    return out


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
    prompts, omitted = collect_prompts(
        inputs.prompt_records, inputs.max_prompts, known, prompt_scores(agg)
    )
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
        "ranking": report_ranking(agg),
        "labeling": report_labeling(inputs, features),
        "first_token_features": report_first_token_features(agg),
        "steering": report_steering(inputs.steering_records, inputs.labels),
        "contrast": report_contrast(agg, inputs.labels, inputs.options.get("contrast")),
        "cost": report_cost(inputs),
        "timings": report_timings(inputs, n_tokens),
        "provenance": report_provenance(inputs, features),
    }
