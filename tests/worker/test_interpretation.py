"""Do the offline labels mean something? The real model, the real worker code end to end.

A randomly initialised SAE of the same shape as a trained one (SAELens's own initialisation)
goes through what a run does with an SAE: feature data on held-out corpus text, extraction
of two topical prompt sets, aggregation against its corpus reference, bundles with the
shuffled-label baseline, offline labels and their detection scores. The trained SAE's
features are scored the same way.

A random direction in a trained model's residual stream still picks out a few tokens, which
a token rule detects a little, so random labels do beat their shuffled baseline somewhat
(measured: +0.11, 95% interval +0.06 to +0.15, over 20 labels), though their balanced
accuracy stays near chance (0.58). Trained labels must be clearly better: higher balanced
accuracy (measured 0.73) and a larger gain over the baseline (+0.16, interval +0.09 to
+0.24, over 28 labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeflow.core.aggregation.accumulator import FeatureAccumulator
from saeflow.core.aggregation.bundles import (
    attach_baselines,
    build_bundle,
    corpus_negatives,
    pick_corpus_data,
    prompt_windows_for,
)
from saeflow.core.aggregation.reference import reference_from_summary
from saeflow.core.aggregation.summary import summarize
from saeflow.core.labeling.detection import summarize as summarize_labels
from saeflow.core.labeling.label import label_heuristically

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "topics"
HOOK = "blocks.15.hook_resid_post"


def prompts() -> list[dict]:
    rows = []
    for name in ("pets", "cooking"):
        with (EXAMPLES / f"{name}.jsonl").open() as handle:
            rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def offline_label_scores(model, sae, out: Path) -> dict:
    """Everything a run does with an SAE, in process; the labels' detection summary."""
    from gpu_worker.corpus import collect_windows
    from gpu_worker.evaluation import evaluate_sae
    from gpu_worker.extraction import ExtractionSettings, FeatureExtractor
    from gpu_worker.training import write_feature_files
    from saeflow.core.hooks import HookPoint

    hook = HookPoint.parse(HOOK)
    windows = collect_windows(
        "default", model.tokenizer, context_size=128, n_tokens=4096, split="heldout", seed=1
    )
    out.mkdir(parents=True, exist_ok=True)
    write_feature_files(
        evaluate_sae(model, sae, hook, windows).activations, sae, model, out, seed=1
    )
    reference = reference_from_summary(json.loads((out / "feature_summary.json").read_text()))
    rows = prompts()
    extractor = FeatureExtractor(model, sae, hook, ExtractionSettings(features_per_token=8))
    acc = FeatureAccumulator()
    for index, (row, result) in enumerate(
        zip(rows, extractor.extract([r["prompt"] for r in rows]), strict=True)
    ):
        acc.add({"id": row["id"], "prompt_index": index, **result.to_json()})
    body = summarize(acc, reference)
    with (out / "feature_data.jsonl").open() as handle:
        corpus = pick_corpus_data((json.loads(line) for line in handle), set(body["reported"]))
    with (out / "corpus_windows.jsonl").open() as handle:
        corpus_windows = [json.loads(line) for line in handle]
    stats = {s["id"]: s for s in body["features"]}
    bundles = {
        fid: build_bundle(
            feature_id=fid,
            sae_id="test",
            run_id="test",
            stats=stats[fid],
            prompt_examples=acc.top_examples(fid),
            prompt_samples=acc.sampled_examples(fid),
            random_windows=prompt_windows_for(acc.random_windows(), fid),
            corpus=corpus.get(fid),
            negatives=corpus_negatives(corpus_windows, fid),
        )
        for fid in body["reported"]
    }
    attach_baselines(bundles, body["reported"])
    return summarize_labels([label_heuristically(bundle) for bundle in bundles.values()])


def test_random_sae_labels_score_near_their_baseline_trained_ones_better(
    default_model, small_sae_dir: Path, tmp_path: Path
) -> None:
    import torch
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from gpu_worker.models import load_sae

    trained = load_sae(str(small_sae_dir))
    torch.manual_seed(0)
    random_sae = TopKSAE(
        TopKSAEConfig(
            d_in=int(trained.cfg.d_in), d_sae=int(trained.cfg.d_sae), k=int(trained.cfg.k)
        )
    )
    random_scores = offline_label_scores(default_model, random_sae, tmp_path / "random")
    trained_scores = offline_label_scores(default_model, trained, tmp_path / "trained")
    print("random", random_scores, "trained", trained_scores)  # shown with -s

    assert random_scores["n_scored"] >= 10 and trained_scores["n_scored"] >= 10
    # Random labels: near chance (0.5) and a small gain over shuffled labels at most (a
    # token rule on a random direction's tokens).
    assert random_scores["mean_balanced_accuracy"] <= 0.65, random_scores
    assert random_scores["improvement"] <= 0.15, random_scores
    # Trained labels beat chance with confidence, and beat random labels on both measures.
    assert trained_scores["improvement_ci95"][0] > 0, trained_scores
    assert trained_scores["improvement"] > random_scores["improvement"], trained_scores
    assert (
        trained_scores["mean_balanced_accuracy"] >= random_scores["mean_balanced_accuracy"] + 0.08
    ), (random_scores, trained_scores)
