"""Aggregation end to end on real records, bundles, the label budget, corpus data."""

from __future__ import annotations

import pytest

from saeflow.core.aggregation.accumulator import FeatureAccumulator
from saeflow.core.aggregation.bundles import (
    CORPUS_FIELDS,
    LabelBudget,
    attach_baselines,
    build_bundle,
    choose_features_to_label,
    corpus_negatives,
    pick_corpus_data,
    prompt_windows_for,
)
from saeflow.core.aggregation.summary import summarize
from saeflow.core.labeling.detection import summarize as summarize_labels
from saeflow.core.labeling.examples import split_examples
from saeflow.core.labeling.label import label_heuristically

CAT_FEATURE, COOKING_FEATURE = 2369, 2317  # of the default model's demo SAE, seen in the data


def run(records: list[dict]) -> tuple[FeatureAccumulator, dict, dict[int, dict]]:
    acc = FeatureAccumulator()
    acc.add_all(records)
    body = summarize(acc, None)
    stats = {s["id"]: s for s in body["features"]}
    bundles = {
        fid: build_bundle(
            feature_id=fid,
            sae_id="saes/m/h/x",
            run_id="r-0",
            stats=stats[fid],
            prompt_examples=acc.top_examples(fid),
            prompt_samples=acc.sampled_examples(fid),
            random_windows=prompt_windows_for(acc.random_windows(), fid),
            corpus=None,
            negatives=[],
        )
        for fid in body["reported"]
    }
    attach_baselines(bundles, body["reported"])
    return acc, body, bundles


def test_pets_against_cooking_end_to_end(real_records):
    _, body, bundles = run(real_records)
    assert body["n_prompts"] == 14 and body["n_contrast_prompts"] == 14
    # No reference here: the ranking says it fell back to activity.
    assert body["ranking"]["method"] == "activity" and body["ranking"]["fallback"]
    first_token = set(body["first_token"]["features"])
    assert len(first_token) >= 5  # found on the prompts: 28 texts
    listed = set(body["ranking"]["views"]["specific"]) | set(body["reported"])
    assert not listed & first_token
    assert body["ranking"]["views"]["specific"][0] == CAT_FEATURE
    contrast = body["contrast"]
    assert contrast["more_in_main"][0]["id"] == CAT_FEATURE
    assert contrast["more_in_contrast"][0]["id"] == COOKING_FEATURE
    for side in ("more_in_main", "more_in_contrast"):
        top = contrast[side][0]
        assert top["significant"] and top["q_value"] <= 0.05 and abs(top["effect_size"]) >= 0.5
    labels = {fid: label_heuristically(bundle) for fid, bundle in bundles.items()}
    assert set(labels[CAT_FEATURE]["label"].removeprefix("[heuristic] ").split(" / ")) == {
        "cat",
        "kitten",
        "dog",
        "puppy",
    }
    cooking_words = {"broth", "basil", "lemon", "yogurt", "juice", "butter", "flour", "boil"}
    assert len(set(labels[COOKING_FEATURE]["label"].split()) & cooking_words) >= 2
    summary = summarize_labels(list(labels.values()))
    assert summary["n_scored"] >= 20
    assert summary["improvement"] >= 0.15
    assert summary["verdict"].startswith("the labels beat chance")


def test_bundles_carry_their_windows_and_the_partner_contexts(real_records):
    acc, body, bundles = run(real_records)
    bundle = bundles[CAT_FEATURE]
    assert set(bundle) == {
        "feature_id",
        "sae_id",
        "run_id",
        "stats",
        "prompt_examples",
        "prompt_samples",
        "random_windows",
        "corpus",
        "corpus_negatives",
        "baseline",
    }
    assert bundle["prompt_examples"] == acc.top_examples(CAT_FEATURE)
    assert len(bundle["random_windows"]) == len(acc.random_windows())
    for window in bundle["random_windows"]:
        assert len(window["tokens"]) == len(window["activations"])
        assert window["max"] == max(window["activations"])
    reported = body["reported"]
    partner = reported[(reported.index(CAT_FEATURE) + 1) % len(reported)]
    assert bundle["baseline"]["feature_id"] == partner
    held = split_examples(bundles[partner]).held_out
    assert [c["tokens"] for c in bundle["baseline"]["contexts"]] == [c["tokens"] for c in held]


def test_attach_baselines_needs_two_labelled_bundles():
    one = {5: {"feature_id": 5, "baseline": None}}
    attach_baselines(one, [5, 6])  # 6 has no bundle: only one labelled feature is left
    assert one[5]["baseline"] is None


def test_budget_caps():
    ids = [5, 6, 7, 8]
    chosen, reason = choose_features_to_label(ids, LabelBudget())
    assert chosen == ids and reason == "all 4 reported features"
    chosen, reason = choose_features_to_label(ids, LabelBudget(max_features=2))
    assert chosen == [5, 6] and "max_features=2" in reason
    chosen, reason = choose_features_to_label(ids, LabelBudget(max_features=4))
    assert chosen == ids and reason == "all 4 reported features"
    assert choose_features_to_label(ids, LabelBudget(max_features=0))[0] == []


def test_corpus_data_is_picked_in_one_pass():
    lines = iter(
        [
            {"id": 1, "density": 0.1, "top_examples": [], "irrelevant": 1},
            {"id": 7, "density": 0.01, "first_token": {"is_first_token": False}, "other": 2},
            {"id": 99},
        ]
    )
    corpus = pick_corpus_data(lines, {7})
    assert corpus == {7: {"density": 0.01, "first_token": {"is_first_token": False}}}
    assert next(lines) == {"id": 99}  # stopped reading once everything wanted was found
    assert "first_token" in CORPUS_FIELDS and "random_examples" in CORPUS_FIELDS


def test_corpus_negatives_are_windows_where_the_feature_is_silent():
    windows = [
        {"tokens": ["a", " b"], "features": [[[7, 1.5]], []]},
        {"tokens": ["c", " d"], "features": [[[3, 2.0]], [[4, 1.0]]]},
        {"tokens": ["e"], "features": [[]]},
        {"tokens": ["f"]},
    ]
    negatives = corpus_negatives(windows, 7)
    assert [n["tokens"] for n in negatives] == [["c", " d"], ["e"], ["f"]]
    assert negatives[0] == {"tokens": ["c", " d"], "activations": [0.0, 0.0], "max": 0.0}
    assert len(corpus_negatives(windows, 7, limit=2)) == 2


def test_prompt_windows_carry_this_features_activations():
    pool = [
        {"tokens": [" a", " b"], "features": {"7": [0.0, 2.5], "8": [1.0, 0.0]}},
        {"tokens": [" c"], "features": {}},
    ]
    assert prompt_windows_for(pool, 7) == [
        {"tokens": [" a", " b"], "activations": [0.0, 2.5], "max": 2.5},
        {"tokens": [" c"], "activations": [0.0], "max": 0.0},
    ]


def test_build_bundle_copies_its_inputs():
    stats = {"id": 7}
    corpus = {"density": 0.01}
    bundle = build_bundle(
        feature_id=7,
        sae_id="saes/m/h/x",
        run_id="r-0",
        stats=stats,
        prompt_examples=[],
        prompt_samples=[],
        random_windows=[],
        corpus=corpus,
        negatives=[],
    )
    stats["id"] = 8
    corpus["density"] = 1.0
    assert bundle["stats"] == {"id": 7} and bundle["corpus"] == {"density": 0.01}
    assert bundle["baseline"] is None
    bare = build_bundle(
        feature_id=7,
        sae_id="s",
        run_id="r",
        stats={},
        prompt_examples=[],
        prompt_samples=[],
        random_windows=[],
        corpus=None,
        negatives=[],
    )
    assert bare["corpus"] is None


@pytest.mark.parametrize("fid", [CAT_FEATURE, COOKING_FEATURE])
def test_held_out_contexts_of_real_bundles_are_balanced(real_records, fid):
    _, _, bundles = run(real_records)
    split = split_examples(bundles[fid])
    assert 0 < len(split.negatives) <= len(split.positives)
    explain = {"".join(e["tokens"]) for e in split.explain}
    assert not explain & {"".join(c["tokens"]) for c in split.held_out}
    assert all(c["max"] > 0 for c in split.positives)
    assert all(c["max"] == 0 for c in split.negatives)


def test_offline_labels_every_reported_feature_claude_keeps_its_cap() -> None:
    from saeflow.core.options import RunOptions
    from saeflow.steps.aggregate import label_budget

    def cap(backend: str) -> int | None:
        options = RunOptions.from_dict({"label": {"backend": backend, "max_features": 2}})
        return label_budget(options).max_features

    assert cap("offline") is None
    assert cap("bedrock") == cap("anthropic") == cap("auto") == 2
    ids = list(range(40))
    assert choose_features_to_label(ids, LabelBudget(max_features=cap("offline")))[0] == ids
