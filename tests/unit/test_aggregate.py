"""Aggregation: streaming statistics, ranking, dense exclusion, contrast, budget, bundles."""

from __future__ import annotations

import pytest

from saeflow.core.aggregate import (
    AggregateSettings,
    FeatureAggregator,
    LabelBudget,
    build_bundle,
    choose_features_to_label,
    pick_corpus_data,
)
from saeflow.core.errors import ExtractionFailed, PromptTooLong

CITIES = {" Paris", " London", " Tokyo"}
DENSE, CITY, NUMBER = 3, 7, 11


def record(index: int, text_tokens: list[str], set_name: str = "main") -> dict:
    """An extraction output record in the serve contract's shape."""
    tokens = []
    for tok in text_tokens:
        feats = [{"id": DENSE, "activation": 0.5}]
        if tok in CITIES:
            feats.append({"id": CITY, "activation": 6.0 + len(tok) / 10})
        if tok.strip().isdigit():
            feats.append({"id": NUMBER, "activation": 2.0})
        tokens.append({"text": tok, "features": feats})
    return {
        "prompt_index": index,
        "id": f"p{index}",
        "set": set_name,
        "n_tokens": len(tokens),
        "tokens": tokens,
        "summary": [],
        "error": None,
    }


MAIN = [
    ["I", " flew", " to", " Paris", " last", " year"],
    ["The", " capital", " is", " London"],
    ["We", " met", " in", " Tokyo", " in", " 2019"],
    ["Nothing", " here", " at", " all"],
]
CONTRAST = [["Count", " 1", " 2", " 3"], ["It", " is", " 42"]]


def aggregate(settings: AggregateSettings | None = None, contrast: bool = False):
    agg = FeatureAggregator(settings or AggregateSettings(top_k_features=5))
    agg.add_all(record(i, toks) for i, toks in enumerate(MAIN))
    if contrast:
        agg.add_all(record(100 + i, toks, "contrast") for i, toks in enumerate(CONTRAST))
    return agg.result()


def test_statistics_ranking_and_dense_exclusion():
    result = aggregate()
    stats = {s["id"]: s for s in result.stats["features"]}
    assert result.stats["n_prompts"] == 4
    assert result.stats["n_tokens"] == 20
    city = stats[CITY]
    assert city["token_count"] == 3
    assert city["prompt_count"] == 3
    assert city["frequency"] == pytest.approx(3 / 20)
    assert city["max_activation"] == pytest.approx(6.7)
    assert city["importance"] == pytest.approx((6.6 + 6.7 + 6.6) / 20)
    assert {t["token"] for t in city["top_tokens"]} == CITIES
    # feature 3 fires on every token: dense, not ranked, not reported
    assert stats[DENSE]["dense"] is True
    assert DENSE not in result.reported_ids
    assert result.reported_ids == [CITY, NUMBER]
    assert stats[CITY]["rank"] == 1
    assert result.stats["contrast"] is None


def test_top_examples_are_windows_around_the_max_strongest_first():
    result = aggregate(AggregateSettings(examples_per_feature=2, context_before=2, context_after=1))
    examples = result.examples[CITY]
    assert len(examples) == 2  # bounded heap
    assert examples[0]["max"] >= examples[1]["max"]
    first = examples[0]
    assert first["max"] == pytest.approx(6.7)
    assert first["tokens"] == [" capital", " is", " London"]
    assert first["activations"] == [0.0, 0.0, pytest.approx(6.7)]
    assert first["prompt_id"] == "p1"


def test_random_windows_give_negatives_for_scoring():
    windows = aggregate().random_windows[CITY]
    assert len(windows) == 4  # one per prompt while the pool is not full
    assert any(w["max"] == 0.0 for w in windows)
    for w in windows:
        assert len(w["tokens"]) == len(w["activations"])


def test_contrast_finds_features_more_frequent_in_each_set():
    result = aggregate(contrast=True)
    contrast = result.stats["contrast"]
    assert contrast["n_prompts"] == {"main": 4, "contrast": 2}
    assert [r["id"] for r in contrast["more_in_main"]] == [CITY]
    assert [r["id"] for r in contrast["more_in_contrast"]] == [NUMBER]
    number = contrast["more_in_contrast"][0]
    assert number["contrast_frequency"] == pytest.approx(4 / 7)
    assert number["main_frequency"] == pytest.approx(1 / 20)
    # contrast-set prompts do not count in the main statistics
    assert result.stats["n_tokens"] == 20


def test_error_records_raise_named_errors():
    agg = FeatureAggregator()
    with pytest.raises(PromptTooLong, match="p9"):
        agg.add({"id": "p9", "error": {"error": "PromptTooLong", "message": "600 tokens"}})
    with pytest.raises(ExtractionFailed):
        agg.add({"id": "p1", "tokens": None, "error": None})
    with pytest.raises(ExtractionFailed, match="no records"):
        FeatureAggregator().result()


def test_memory_stays_bounded_over_many_records():
    settings = AggregateSettings(
        examples_per_feature=3, random_window_pool=8, top_tokens_per_feature=4
    )
    agg = FeatureAggregator(settings)
    for i in range(3000):
        agg.add(record(i, ["Hello", f" w{i}", " Paris", f" {i}"]))
    state = agg._features[CITY]
    assert len(state.top) == 3
    assert len(agg._windows) == 8
    assert len(agg._features[NUMBER].token_tally) <= 16  # distinct numbers pruned
    assert agg.result().stats["n_prompts"] == 3000


def test_budget_caps():
    ids = [5, 6, 7, 8]
    assert choose_features_to_label(ids, LabelBudget())[0] == ids
    chosen, reason = choose_features_to_label(ids, LabelBudget(max_features=2))
    assert chosen == [5, 6] and "max_features" in reason
    chosen, reason = choose_features_to_label(ids, LabelBudget(max_usd=0.05, usd_per_feature=0.02))
    assert chosen == [5, 6] and "max_usd" in reason
    assert choose_features_to_label(ids, LabelBudget(max_usd=0.0, usd_per_feature=0.02))[0] == []


def test_corpus_data_is_picked_in_one_pass_and_bundled():
    lines = iter(
        [
            {"id": 1, "density": 0.1, "top_examples": [], "irrelevant": 1},
            {"id": CITY, "density": 0.01, "promoted_tokens": [{"token": " France", "logit": 2.0}]},
            {"id": 99},
        ]
    )
    corpus = pick_corpus_data(lines, {CITY})
    assert corpus == {
        CITY: {"density": 0.01, "promoted_tokens": [{"token": " France", "logit": 2.0}]}
    }
    assert next(lines) == {"id": 99}  # stopped reading once everything wanted was found
    bundle = build_bundle(
        feature_id=CITY,
        sae_id="saes/m/h/x",
        run_id="r-0",
        stats={"id": CITY},
        prompt_examples=[],
        random_windows=[],
        corpus=corpus[CITY],
    )
    assert bundle["corpus"]["density"] == 0.01 and bundle["feature_id"] == CITY


def test_reported_features_carry_a_log2_histogram_of_their_activations():
    result = aggregate()
    stats = {s["id"]: s for s in result.stats["features"]}
    hist = stats[CITY]["histogram"]
    # activations 6.6, 6.7, 6.6 all fall in [4, 8)
    assert hist["edges"] == [4.0, 8.0] and hist["counts"] == [3] and hist["scale"] == "log2"
    assert "histogram" not in stats[DENSE]  # only reported features: aggregate.json stays small
