"""The contrast: Fisher's exact test per feature, Tarone's criterion, Benjamini-Hochberg."""

from __future__ import annotations

import math

import pytest

from saeflow.core.aggregation.contrast import (
    CORRECTION_NAME,
    TEST_NAME,
    ContrastSettings,
    PromptCounts,
    annotate,
    contrast_table,
)

C20_10 = math.comb(20, 10)
# 10 main and 10 contrast prompts. Hand-computed two-sided Fisher p-values (hypergeometric,
# 20 prompts, 10 drawn for main):
P_ALL_VS_NONE = 2 / C20_10  # 10 of 10 vs 0 of 10
P_NONE_VS_EIGHT = 132 / C20_10  # 0 vs 8: 2 * C(12, 10) / C(20, 10)
P_FIVE_VS_ONE = 26026 / C20_10  # 5 vs 1: tables with x in {0, 1, 5, 6}
TABLE = [
    PromptCounts(11, 10, 0),  # in every main prompt, no contrast prompt
    PromptCounts(12, 0, 8, main_specificity=0.0, contrast_specificity=3.0),
    PromptCounts(13, 5, 5),  # no difference: tested, on neither side
    PromptCounts(14, 1, 0),  # 1 prompt in all: min p 1.0, untestable
    PromptCounts(15, 1, 1),  # 2 prompts: min p 0.47, untestable
    PromptCounts(16, 5, 1, main_specificity=5.0),  # bigger weighted effect, not significant
    PromptCounts(17, 2, 2),  # 4 prompts: min p 0.087, untestable
]


def table() -> dict:
    return contrast_table(TABLE, n_main=10, n_contrast=10)


def test_a_feature_in_every_main_prompt_and_no_contrast_prompt_is_significant():
    result = table()
    row = result["more_in_main"][0]
    assert row["id"] == 11
    assert row["effect_size"] == 1.0
    assert (row["main_prompt_share"], row["contrast_prompt_share"]) == (1.0, 0.0)
    assert (row["main_prompts"], row["contrast_prompts"]) == (10, 0)
    assert row["p_value"] == pytest.approx(P_ALL_VS_NONE)
    # BH over the 4 testable features: rank 1 of 4 -> p * 4
    assert row["q_value"] == pytest.approx(4 * P_ALL_VS_NONE)
    assert row["significant"] is True
    assert row["log2_odds_ratio"] == pytest.approx(math.log2(10.5 * 10.5 / (0.5 * 0.5)))


def test_the_contrast_side_has_negative_effects_and_its_own_q():
    row = table()["more_in_contrast"][0]
    assert row["id"] == 12
    assert row["effect_size"] == pytest.approx(-0.8)
    assert row["p_value"] == pytest.approx(P_NONE_VS_EIGHT)
    assert row["q_value"] == pytest.approx(P_NONE_VS_EIGHT * 4 / 2)
    assert row["significant"] is True
    assert row["log2_odds_ratio"] < 0
    assert row["side_specificity"] == 3.0  # the contrast side's specificity
    assert [r["id"] for r in table()["more_in_contrast"]] == [12]


def test_untestable_features_are_counted_not_tested():
    result = table()
    assert result["n_tested"] == 4  # 11, 12, 13, 16
    assert result["n_untestable"] == 3  # 14, 15, 17
    listed = {r["id"] for r in result["more_in_main"] + result["more_in_contrast"]}
    assert listed.isdisjoint({13, 14, 15, 17})


def test_section_names_its_test_and_counts_significant_features_per_side():
    result = table()
    assert result["test"] == TEST_NAME and result["correction"] == CORRECTION_NAME
    assert "Fisher" in result["test"] and "Benjamini" in result["correction"]
    assert result["alpha"] == 0.05
    assert result["n_prompts"] == {"main": 10, "contrast": 10}
    assert result["n_significant"] == {"more_in_main": 1, "more_in_contrast": 1}


def test_significant_rows_come_first_whatever_the_weighted_effect():
    main_side = table()["more_in_main"]
    assert [r["id"] for r in main_side] == [11, 16]
    weak = main_side[1]
    assert weak["p_value"] == pytest.approx(P_FIVE_VS_ONE)
    assert weak["q_value"] == pytest.approx(P_FIVE_VS_ONE * 4 / 3)
    assert weak["significant"] is False
    # its weighted effect (0.4 x specificity 5) beats 11's (1.0 x floor 0.25)
    assert weak["effect_size"] * weak["side_specificity"] > 1.0 * 0.25


def test_order_among_significant_rows_weights_effect_by_specificity():
    counts = [
        PromptCounts(1, 20, 0, main_specificity=0.1),  # effect 1.0, weight 0.25 -> 0.25
        PromptCounts(2, 16, 0, main_specificity=2.0),  # effect 0.8, weight 2 -> 1.6
        PromptCounts(3, 18, 0, main_specificity=None),  # effect 0.9 x 0.25 = 0.225
    ]
    result = contrast_table(counts, 20, 20)
    assert all(r["significant"] for r in result["more_in_main"])
    assert [r["id"] for r in result["more_in_main"]] == [2, 1, 3]


def test_nothing_significant_is_said_with_zero_counts():
    counts = [PromptCounts(1, 6, 4), PromptCounts(2, 3, 5), PromptCounts(3, 1, 0)]
    result = contrast_table(counts, 10, 10)
    assert result["n_significant"] == {"more_in_main": 0, "more_in_contrast": 0}
    assert result["n_tested"] == 2 and result["n_untestable"] == 1
    assert not any(r["significant"] for r in result["more_in_main"] + result["more_in_contrast"])


def test_rows_per_side_caps_the_lists_not_the_counts():
    counts = [PromptCounts(i, 10, 0) for i in range(1, 8)]
    result = contrast_table(counts, 10, 10, ContrastSettings(rows_per_side=3))
    assert [r["id"] for r in result["more_in_main"]] == [1, 2, 3]  # equal keys: by id
    assert result["n_significant"]["more_in_main"] == 7
    # 7 equal p-values: BH gives each p * 7 / 7
    assert result["more_in_main"][0]["q_value"] == pytest.approx(P_ALL_VS_NONE)


def test_unequal_set_sizes():
    # 3 main prompts (all fire) vs 30 contrast prompts (none fire): p = 1 / C(33, 3).
    result = contrast_table([PromptCounts(9, 3, 0)], 3, 30)
    row = result["more_in_main"][0]
    assert row["p_value"] == pytest.approx(1 / math.comb(33, 3))
    assert row["effect_size"] == 1.0 and row["significant"] is True


def test_annotate_adds_token_level_figures():
    rows = [{"id": 11}, {"id": 99}]
    stats = {
        11: {
            "frequency": 0.2,
            "mean_activation": 4.0,
            "contrast": {"frequency": 0.0, "mean_activation": 0.0},
        }
    }
    annotate(rows, stats)
    assert rows[0] == {
        "id": 11,
        "main_frequency": 0.2,
        "main_mean_activation": 4.0,
        "contrast_frequency": 0.0,
        "contrast_mean_activation": 0.0,
    }
    assert rows[1]["main_frequency"] is None and rows[1]["contrast_frequency"] is None
