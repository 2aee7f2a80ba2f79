"""The report: report.json schema, the self-contained HTML (escaping!), summary.md."""

from __future__ import annotations

import json
import re

import pytest

from saeflow.core.aggregation.accumulator import FeatureAccumulator
from saeflow.core.aggregation.bundles import attach_baselines, build_bundle, prompt_windows_for
from saeflow.core.aggregation.ranking import RankingSettings
from saeflow.core.aggregation.reference import CorpusReference
from saeflow.core.aggregation.summary import SummarySettings, summarize
from saeflow.core.labeling.label import label_heuristically
from saeflow.core.report.build import SCHEMA_VERSION, ReportInputs, build_report, job_seconds
from saeflow.core.report.render import render_html, render_markdown, script_json

HOSTILE = '</script><img src=x onerror="window.__pwned=1"><!-- | `x`'
CITY, NUMBER, DENSE = 7, 11, 3


def record(index: int, words: list[str], set_name: str = "main") -> dict:
    tokens = []
    for word in words:
        feats = [{"id": DENSE, "activation": 0.4}]
        if word.strip() in {"Paris", "London"}:
            feats.insert(0, {"id": CITY, "activation": 6.5})
        if word.strip().isdigit():
            feats.insert(0, {"id": NUMBER, "activation": 2.0})
        tokens.append({"text": word, "features": feats})
    return {
        "prompt_index": index,
        "id": f"p{index}",
        "set": set_name,
        "n_tokens": len(tokens),
        "tokens": tokens,
        "summary": [],
        "quality": {
            "n": len(tokens),
            "sq_err": 1.0,
            "sq_norm": 10.0 * len(tokens),
            "sum": [float(len(tokens)), 0.0],
        },
        "ce": None,
        "error": None,
    }


RECORDS = [
    record(0, ["I", " flew", " to", " Paris"]),
    record(1, ["The", " capital", " is", " London", " in", " 2019"]),
    record(2, [HOSTILE, " Paris"]),
    record(3, ["Count", " 1", " 2"]),
    record(4, ["It", " is", " 42"], "contrast"),
]
# The corpus: the city and number features are rare there, the dense one is everywhere.
REFERENCE = CorpusReference(
    n_tokens=10_000,
    fire_counts={CITY: 10.0, NUMBER: 40.0, DENSE: 9_000.0},
    mean_activation={CITY: 6.0, NUMBER: 2.0, DENSE: 0.4},
    first_token_rule="test rule",
)


def report_inputs(**overrides) -> ReportInputs:
    acc = FeatureAccumulator()
    acc.add_all(RECORDS)
    body = summarize(acc, REFERENCE, SummarySettings(ranking=RankingSettings(top_k_features=5)))
    stats = {s["id"]: s for s in body["features"]}
    windows = acc.random_windows()
    bundles = {
        fid: build_bundle(
            feature_id=fid,
            sae_id="saes/m/h/x",
            run_id="demo-0123456789ab",
            stats=stats[fid],
            prompt_examples=acc.top_examples(fid),
            prompt_samples=acc.sampled_examples(fid),
            random_windows=prompt_windows_for(windows, fid),
            corpus={
                "histogram": {"edges": [0, 1, 2, 3], "counts": [5, 0, 2]},
                "promoted_tokens": [{"token": " France", "logit": 2.5}],
                "suppressed_tokens": [{"token": HOSTILE, "logit": -1.0}],
                "density": 0.01,
            },
            negatives=[],
        )
        for fid in body["reported"]
    }
    attach_baselines(bundles, body["reported"])
    labels = {CITY: dict(label_heuristically(bundles[CITY]), label=HOSTILE)}
    aggregate = dict(
        body, labelled=[CITY], label_selection="capped at label.max_features=1", labeler="offline"
    )
    base = dict(
        run_id="demo-0123456789ab",
        options={
            "model": "smollm2-135m-instruct",
            "hook": "blocks.15.hook_resid_post",
            "sae": "train",
            "contrast": "prompts/" + HOSTILE + ".jsonl",
        },
        run_state={"run_id": "demo-0123456789ab", "transform_instance_count": 2},
        sae_state={"mode": "train", "uri": "s3://b/saes/m/h/x/", "sae_id": "saes/m/h/x"},
        sae_metrics={
            "explained_variance": 0.81,
            "l0": 32.0,
            "dead_fraction": 0.02,
            "ce_loss_recovered": 0.97,
            "d_in": 576,
            "d_sae": 4608,
            "architecture": "topk",
            "tokens_per_s": 900.0,
        },
        aggregate=aggregate,
        bundles=bundles,
        labels=labels,
        prompt_records=iter(RECORDS),
        max_prompts=3,
        steering_records=[
            {
                "steer": {"feature": CITY, "strength": 40.0, "prompt": HOSTILE, "seed": 0},
                "baseline": "plain",
                "steered": "Paris " + HOSTILE,
            },
            {
                "steer": {"feature": CITY, "strength": 10.0, "prompt": HOSTILE, "seed": 0},
                "baseline": "plain",
                "steered": "more Paris",
            },
        ],
        training={"job_name": "sf-x-train", "billable_seconds": 100},
        extraction={
            "job_name": "sf-x-extract",
            "start": "2026-01-01T00:00:00Z",
            "end": "2026-01-01T00:00:10Z",
        },
        versions={"torch": "2.13.0"},
    )
    base.update(overrides)
    return ReportInputs(**base)


def test_report_json_carries_every_design_field():
    report = build_report(report_inputs())
    for key in (
        "schema_version",
        "run_id",
        "status",
        "model",
        "hook",
        "sae",
        "prompts",
        "features",
        "steering",
        "contrast",
        "cost",
        "timings",
        "provenance",
    ):
        assert key in report, key
    assert report["schema_version"] == SCHEMA_VERSION == "1.0"
    assert set(report["sae"]) >= {"source", "d_in", "d_sae", "architecture", "metrics"}
    assert set(report["sae"]["metrics"]) >= {
        "explained_variance",
        "l0",
        "dead_fraction",
        "ce_loss_recovered",
    }
    prompt = report["prompts"][0]
    assert set(prompt) >= {"id", "text", "tokens"} and prompt["text"] == "I flew to Paris"
    assert prompt["tokens"][3] == {
        "text": " Paris",
        "features": [{"id": CITY, "activation": 6.5}, {"id": 3, "activation": 0.4}],
    }
    assert report["n_prompts_omitted"] == 2 and len(report["prompts"]) == 3
    # each prompt lists its own most specific features (its first token left out)
    assert report["prompts"][0]["top_features"][0]["id"] == CITY
    assert report["prompts"][1]["top_features"][0]["id"] in (CITY, NUMBER)
    for feature in report["features"]:
        assert set(feature) >= {
            "id",
            "rank",
            "label",
            "label_source",
            "score",
            "detection",
            "specificity",
            "first_token",
            "frequency",
            "max_activation",
            "top_tokens",
            "examples",
        }
    assert [f["id"] for f in report["features"]][:2] == [CITY, NUMBER]  # the dense one is not
    assert report["ranking"]["method"] == "specificity"
    assert report["ranking"]["views"]["specific"] == [CITY, NUMBER]
    assert set(report["labeling"]) >= {
        "labeler",
        "method",
        "n_scored",
        "mean_balanced_accuracy",
        "baseline_method",
        "baseline_mean_balanced_accuracy",
    }
    on_prompts = report["sae"]["on_prompts"]
    # EV = 1 - 5 / (10 * 18 - 18**2 / 18) on the made-up sums of the five records
    assert on_prompts["explained_variance"] == pytest.approx(1 - 5 / (180 - 18), abs=1e-4)
    assert on_prompts["ce_loss_recovered"] is None and on_prompts["ce_loss_recovered_reason"]
    assert report["first_token_features"]["note"]
    by_id = {f["id"]: f for f in report["features"]}
    assert by_id[CITY]["label_source"] == "offline heuristic"
    assert by_id[NUMBER]["label"] is None
    assert (
        "not labelled" in by_id[NUMBER]["score_reason"]
        and "max_features=1" in by_id[NUMBER]["score_reason"]
    )
    assert set(report["cost"]) >= {
        "gpu_seconds",
        "llm_input_tokens",
        "llm_output_tokens",
        "llm_requests",
        "estimated_usd",
    }
    assert report["cost"]["gpu_seconds"] == pytest.approx(100 + 10 * 2)
    assert report["timings"]["extraction_tokens_per_s"] == pytest.approx(18 / 10)
    contrast = report["contrast"]
    assert contrast["test"].startswith("Fisher") and "Benjamini" in contrast["correction"]
    # one contrast prompt: no feature can reach p <= 0.05, none is tested
    assert contrast["n_tested"] == 0 and contrast["n_untestable"] > 0
    assert [r["strength"] for r in report["steering"][0]["results"]] == [10.0, 40.0]
    assert report["provenance"]["versions"] == {"torch": "2.13.0"}
    json.dumps(report)  # plain JSON throughout


def test_failed_or_sparse_inputs_still_give_every_field():
    report = build_report(
        ReportInputs(
            run_id="r-0", status="failed", error={"error": "TrainingFailed", "message": "boom"}
        )
    )
    assert report["status"] == "failed" and report["features"] == [] and report["contrast"] is None
    assert report["sae"]["metrics"]["l0"] is None and report["cost"]["estimated_usd"] == 0.0
    page = render_html(report)
    assert "TrainingFailed" in page and "boom" in page
    assert "TrainingFailed" in render_markdown(report)


def test_cost_sums_what_each_record_says_it_spent():
    model = "us.anthropic.claude-haiku-4-5-20251001-v1:0"  # 1 USD / 5 USD per 1M tokens
    cached = {  # 10k input tokens, 9k of them read from the prompt cache (0.1x)
        "input_tokens": 10_000,
        "cache_read_tokens": 9_000,
        "output_tokens": 200,
        "requests": 2,
        "usd": 0.0029,
        "model_id": model,
    }
    older = {"input_tokens": 1_000, "output_tokens": 100, "requests": 1, "model_id": model}
    reused = {"input_tokens": 0, "output_tokens": 0, "requests": 0, "usd": 0.0}
    report = build_report(
        ReportInputs(
            run_id="r-1", labels={1: {"usage": cached}, 2: {"usage": older}, 3: {"usage": reused}}
        )
    )
    cost = report["cost"]
    # The recorded USD (not 10k tokens at the full input price, 0.011), plus an estimate
    # for the record that carries no USD (0.001 + 0.0005).
    assert cost["estimated_usd"] == pytest.approx(0.0029 + 0.0015)
    assert (cost["llm_input_tokens"], cost["llm_requests"]) == (11_000, 3)
    assert "cache" in cost["estimated_usd_basis"]


def test_job_seconds_reads_epoch_iso_and_billable():
    assert job_seconds({"billable_seconds": 12}) == 12.0
    assert job_seconds({"start": 1_700_000_000_000, "end": 1_700_000_005_000}) == 5.0
    assert (
        job_seconds({"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:01:00+00:00"})
        == 60.0
    )
    assert job_seconds({"start": "garbage", "end": 3}) is None
    assert job_seconds(None) is None


def test_html_is_self_contained_and_escapes_all_user_text():
    page = render_html(build_report(report_inputs()))
    assert HOSTILE not in page
    assert "<img" not in page
    assert "&lt;/script&gt;&lt;img src=x onerror=" in page  # shown as text
    # exactly our two script blocks; user text never closes or opens one
    assert page.count("<script") == 2 and page.count("</script>") == 2
    data_block = re.search(
        r'<script type="application/json" id="saeflow-data">(.*?)</script>', page, re.S
    )
    assert data_block and "<" not in data_block.group(1)
    assert json.loads(data_block.group(1))["labels"][str(CITY)] == HOSTILE
    # offline: no external resources
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "Content-Security-Policy" in page


def test_html_shows_sections_tokens_cards_and_histogram():
    page = render_html(build_report(report_inputs()))
    for section in (
        "run",
        "features",
        "prompts",
        "cards",
        "steering",
        "contrast",
        "cost",
        "provenance",
    ):
        assert f'<section id="{section}">' in page
    assert 'id="feature-7"' in page and 'id="feature-11"' in page
    assert 'data-feats="7:6.5|3:0.4"' in page
    assert "background:rgba(255,112,0,1.00)" in page
    assert '<svg class="hist"' in page and page.count("<rect") >= 4
    assert "2 not shown" in page  # a sample of the prompts; the tables have every one
    assert "No feature fires in significantly more prompts" in page
    assert "0.81" in page and "97.00%" in page


def test_script_json_cannot_end_the_script_block():
    # The block is type="application/json", read with JSON.parse (never evaluated as
    # script), so only what could end it or open a comment must not appear raw.
    text = script_json({"x": "</script><!-- \u2028 & >"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"x": "</script><!-- \u2028 & >"}


def test_markdown_summary_escapes_and_summarises():
    summary = render_markdown(build_report(report_inputs()))
    assert summary.startswith("# saeflow report demo-0123456789ab")
    assert "<img" not in summary and "</script>" not in summary
    assert "\\| \\`x\\`" in summary  # table-safe
    assert "| #7 |" in summary and "offline heuristic" in summary
    assert "explained variance 0.81" in summary
    assert "strength 40" in summary


def test_without_corpus_data_the_histogram_comes_from_the_prompt_set():
    inputs = report_inputs()
    for bundle in inputs.bundles.values():
        bundle["corpus"] = None
    report = build_report(inputs)
    hist = {f["id"]: f for f in report["features"]}[CITY]["histogram"]
    assert hist["source"] == "prompt set" and sum(hist["counts"]) == 3
    assert "(prompt set, log2 bins)" in render_html(report)


def test_prompts_stream_is_not_read_past_the_limit_when_the_total_is_known():
    consumed = []

    def records():
        for rec in RECORDS:
            consumed.append(rec["id"])
            yield rec

    report = build_report(report_inputs(prompt_records=records(), max_prompts=2))
    assert [p["id"] for p in report["prompts"]] == ["p0", "p1"]
    assert report["n_prompts_omitted"] == 3  # 4 main + 1 contrast prompts, 2 shown
    assert len(consumed) == 3  # stopped right after the limit
