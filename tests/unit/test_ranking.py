"""Specificity against the corpus reference, the two views, each prompt's own features."""

from __future__ import annotations

import math

import pytest

from saeflow.core.aggregation.ranking import (
    RankingSettings,
    expected_count,
    prompt_top_features,
    rank_by_activity,
    rank_by_specificity,
    score_specificity,
    specificity,
    strength_weight,
)
from saeflow.core.aggregation.reference import (
    CorpusReference,
    reference_from_feature_data,
    reference_from_summary,
)

SETTINGS = RankingSettings()


def slots(**by_position: int) -> list[int]:
    """Prompt content tokens by absolute position (130 slots, like the accumulator's)."""
    out = [0] * 130
    for key, count in by_position.items():
        out[int(key[1:])] = count
    return out


def test_density_is_smoothed():
    ref = CorpusReference(n_tokens=999, fire_counts={5: 9.5})
    assert ref.density(5) == pytest.approx(10 / 1000)
    assert ref.density(6) == pytest.approx(0.5 / 1000)  # never seen: rare, not impossible
    assert ref.raw_density(5) == pytest.approx(9.5 / 999) and ref.raw_density(6) == 0.0


def test_expected_count_without_position_buckets():
    ref = CorpusReference(n_tokens=999, fire_counts={5: 9.5})
    tokens = slots(p2=10, p3=10, p40=30)
    assert expected_count(5, ref, tokens, prior_tokens=200) == pytest.approx(0.01 * 50)


def test_expected_count_with_position_buckets_by_hand():
    ref = CorpusReference(
        n_tokens=999,
        fire_counts={5: 9.5},  # overall smoothed rate 0.01
        buckets=((1, 4), (4, 16), (16, None)),
        bucket_tokens=(100, 300, 599),
        bucket_counts=({5: 10.0}, {5: 3.0}, {}),
    )
    # rates with 200 prior tokens at the overall rate 0.01:
    #   [1, 4):   (10 + 2) / (100 + 200) = 0.04
    #   [4, 16):  (3 + 2) / (300 + 200) = 0.01
    #   [16, -):  (0 + 2) / (599 + 200) = 2 / 799
    tokens = slots(p2=10, p3=10, p4=5, p15=55, p20=7, p129=3)
    expected = 20 * 0.04 + 60 * 0.01 + 10 * 2 / 799
    assert expected_count(5, ref, tokens, prior_tokens=200) == pytest.approx(expected)
    assert expected == pytest.approx(1.425031289)
    # The same tokens at late positions only: the rate of the last bucket.
    late = slots(p50=80, p129=20)
    assert expected_count(5, ref, late, prior_tokens=200) == pytest.approx(100 * 2 / 799)
    # Without a prior the bucket rates are the raw ones.
    assert expected_count(5, ref, tokens, prior_tokens=0) == pytest.approx(
        20 * 10 / 100 + 60 * 3 / 300
    )


def test_position_matching_changes_the_prediction():
    # A feature that fires by position: often early in the corpus, rarely later.
    ref = CorpusReference(
        n_tokens=10_000,
        fire_counts={1: 1000.0},
        buckets=((1, 8), (8, None)),
        bucket_tokens=(1000, 9000),
        bucket_counts=({1: 900.0}, {1: 100.0}),
    )
    short_prompts = slots(p2=20, p3=20, p4=20, p5=20, p6=20)
    flat = CorpusReference(n_tokens=10_000, fire_counts={1: 1000.0})
    assert expected_count(1, flat, short_prompts, 200) == pytest.approx(100 * 1000.5 / 10_001)
    # [1, 8): (900 + 200 * 0.10004) / 1200
    matched = expected_count(1, ref, short_prompts, 200)
    assert matched == pytest.approx(100 * (900 + 200 * 1000.5 / 10_001) / 1200)
    assert matched > 7 * expected_count(1, flat, short_prompts, 200)


def test_specificity_formula():
    assert specificity(7, 1.0) == pytest.approx(2.0)  # log2(8 / 2)
    assert specificity(0, 3.0) == pytest.approx(-2.0)
    assert specificity(3, 3.0) == 0.0
    assert specificity(1, 0.0) == pytest.approx(1.0)  # seen once, never predicted: log2(2)
    assert specificity(6, 2.0, pseudo_count=2.0) == pytest.approx(1.0)


def test_strength_weight_bounds():
    assert strength_weight(5.0, 10.0, SETTINGS) == 0.5
    assert strength_weight(1.0, 10.0, SETTINGS) == 0.25  # floor
    assert strength_weight(30.0, 10.0, SETTINGS) == 1.0  # cap
    assert strength_weight(3.0, None, SETTINGS) == 1.0  # no corpus mean: neutral
    assert strength_weight(3.0, 0.0, SETTINGS) == 1.0
    custom = RankingSettings(strength_cap=2.0, strength_floor=0.5)
    assert strength_weight(30.0, 10.0, custom) == 2.0 and strength_weight(1.0, 10.0, custom) == 0.5


def stat(fid: int, tokens: int, prompts: int, mean: float, **extra) -> dict:
    return {
        "id": fid,
        "token_count": tokens,
        "prompt_count": prompts,
        "mean_activation": mean,
        "frequency": extra.pop("frequency", 0.01),
        "importance": extra.pop("importance", 0.0),
        **extra,
    }


def test_score_specificity_fills_every_field():
    ref = CorpusReference(
        n_tokens=9999, fire_counts={1: 9.5, 2: 999.5}, mean_activation={1: 10.0, 2: 4.0}
    )
    tokens = slots(p2=100)  # 100 content tokens
    stats = [stat(1, 7, 3, 5.0), stat(2, 5, 4, 8.0)]
    score_specificity(stats, ref, tokens, SETTINGS)
    one, two = stats
    # feature 1: rate (9.5 + 0.5) / 10000 = 0.001 -> expected 0.1; log2(8 / 1.1); weight 0.5
    assert one["expected_count"] == pytest.approx(0.1)
    assert one["specificity"] == pytest.approx(math.log2(8 / 1.1))
    assert one["strength_weight"] == 0.5
    assert one["specificity_score"] == pytest.approx(0.5 * math.log2(8 / 1.1))
    assert one["corpus_density"] == pytest.approx(9.5 / 9999)
    # feature 2: rate 0.1 -> expected 10 > observed 5: negative, and the weight is not applied
    assert two["expected_count"] == pytest.approx(10.0)
    assert two["specificity"] == pytest.approx(math.log2(6 / 11))
    assert two["strength_weight"] == 1.0
    assert two["specificity_score"] == two["specificity"] < 0


def test_rank_by_specificity_support_first_token_and_order():
    stats = [
        stat(1, 9, 3, 1.0, specificity_score=2.0),
        stat(2, 9, 1, 1.0, specificity_score=5.0),  # one prompt only: no support
        stat(3, 9, 9, 1.0, specificity_score=9.0, first_token=True),  # never ranked
        stat(4, 9, 2, 1.0, specificity_score=2.0),  # tie with 1: lower id first
        stat(5, 9, 5, 1.0, specificity_score=-1.0),  # less than predicted: not specific
        stat(6, 0, 0, 0.0, specificity_score=3.0),  # no content firing
        stat(7, 9, 2, 1.0, specificity_score=3.5, first_token=False),
    ]
    for s in stats:
        s["specificity"] = s["specificity_score"]  # weight 1
    stats.append(stat(8, 9, 4, 1.0, specificity_score=0.9, specificity=0.9))  # < 2x: not listed
    assert [s["id"] for s in rank_by_specificity(stats, min_prompts=2)] == [7, 1, 4]
    assert [s["id"] for s in rank_by_specificity(stats, min_prompts=1)] == [2, 7, 1, 4]
    assert [s["id"] for s in rank_by_specificity(stats, min_prompts=3)] == [1]


def test_rank_by_activity_leaves_out_dense_and_first_token_features():
    stats = [
        stat(1, 9, 3, 1.0, importance=0.5, frequency=0.1),
        stat(2, 90, 9, 1.0, importance=3.0, frequency=0.9),  # dense
        stat(3, 9, 9, 1.0, importance=9.0, frequency=0.1, first_token=True),
        stat(4, 9, 3, 1.0, importance=0.7, frequency=0.3),  # exactly at the limit: kept
        stat(5, 9, 1, 1.0, importance=5.0, frequency=0.1),  # one prompt
    ]
    assert [s["id"] for s in rank_by_activity(stats, 2, 0.3)] == [4, 1]


def test_prompt_top_features_skip_the_first_token_and_unscored_features():
    tokens = [
        {"text": "My", "features": [{"id": 1, "activation": 90.0}, {"id": 2, "activation": 9.0}]},
        {"text": " cat", "features": [{"id": 2, "activation": 3.0}, {"id": 3, "activation": 4.0}]},
        {"text": " naps", "features": [{"id": 2, "activation": 5.0}, {"id": 9, "activation": 8}]},
        {"text": ".", "features": [{"id": 4, "activation": 0.0}, {"id": 5, "activation": 1.0}]},
    ]
    scores = {1: 10.0, 2: 1.5, 3: 2.5, 4: 9.0, 5: 1.5}  # 9 has no score: not ranked
    top = prompt_top_features(tokens, scores)
    assert top == [
        {"id": 3, "specificity_score": 2.5, "max_activation": 4.0},
        {"id": 2, "specificity_score": 1.5, "max_activation": 5.0},  # max over content tokens
        {"id": 5, "specificity_score": 1.5, "max_activation": 1.0},
    ]
    assert [f["id"] for f in prompt_top_features(tokens, scores, limit=1)] == [3]
    assert prompt_top_features(tokens[:1], scores) == []


def test_ranking_settings_validation():
    with pytest.raises(ValueError):
        RankingSettings(min_prompts=0)
    with pytest.raises(ValueError):
        RankingSettings(top_k_features=-1)


def test_reference_from_summary_reads_counts_first_token_and_positions():
    ref = reference_from_summary(
        {
            "schema_version": 1,
            "n_tokens": 1000,
            "fire_counts": [0, 10, 0, 3],
            "mean_activation": [0, 5.0, 0, 2.0],
            "max_activation": [0, 9.0, 0, 4.0],
            "first_token": {"features": [3], "rule": "some rule"},
            "positions": {
                "buckets": [[1, 8], [8, None]],
                "n_tokens": [100, 900],
                "fire_counts": [[0, 4, 0, 3], [0, 6, 0, 0]],
            },
        }
    )
    assert ref.n_tokens == 1000 and ref.fire_counts == {1: 10.0, 3: 3.0}
    assert ref.mean_activation == {1: 5.0, 3: 2.0} and ref.max_activation == {1: 9.0, 3: 4.0}
    assert ref.first_token == frozenset({3}) and ref.first_token_rule == "some rule"
    assert ref.buckets == ((1, 8), (8, None)) and ref.bucket_tokens == (100, 900)
    assert ref.bucket_counts == ({1: 4.0, 3: 3.0}, {1: 6.0})
    assert ref.describe() == {
        "source": "feature_summary.json",
        "n_tokens": 1000,
        "n_first_token_features": 1,
        "first_token_rule": "some rule",
    }
    # Bucket rows that do not match the buckets are ignored (no position matching).
    broken = reference_from_summary(
        {"n_tokens": 10, "positions": {"buckets": [[1, None]], "fire_counts": []}}
    )
    assert broken.buckets == () and broken.bucket_counts == ()


def test_reference_from_feature_data_lines():
    lines = [
        {"id": 0, "density": 0.01, "max_activation": 7.0},
        {"id": 2, "density": 0.0},
        {"id": 5, "density": 0.5, "first_token": {"is_first_token": True}},
        {"not": "a feature"},
    ]
    ref = reference_from_feature_data(lines, n_tokens=2000)
    assert ref is not None and ref.source == "feature_data.jsonl"
    assert ref.fire_counts == {0: pytest.approx(20.0), 5: pytest.approx(1000.0)}
    assert ref.max_activation == {0: 7.0}
    assert ref.first_token == frozenset({5}) and ref.first_token_rule is not None
    assert reference_from_feature_data([], n_tokens=2000) is None
    assert reference_from_feature_data(lines, n_tokens=0) is None
