"""saeflow.core.stats against values computed by hand or by R / scipy (independent oracles)."""

from __future__ import annotations

import itertools
import math
import random
import time

import pytest

from saeflow.core.stats import (
    Z95,
    balanced_accuracy,
    benjamini_hochberg,
    fisher_exact,
    fisher_min_p,
    mean_ci,
)

C20_10 = math.comb(20, 10)  # 184,756 ways to draw the main row of a 10 + 10 table


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        # R: fisher.test(matrix(c(3, 1, 1, 3), 2))$p.value
        ((3, 1, 1, 3), 0.4857142857),
        ((10, 0, 0, 10), 1.082508822e-05),
        ((18, 2, 1, 19), 5.819515420e-08),
        # By hand: the tables as unlikely as the observed one are x in {0, 1, 5, 6}
        # (hypergeometric 20 / 6 / 10): (1001 + 12012) * 2 / C(20, 10).
        ((5, 5, 1, 9), 26026 / C20_10),
        ((0, 10, 8, 2), 132 / C20_10),
    ],
)
def test_fisher_exact_matches_known_values(table, expected):
    assert fisher_exact(*table) == pytest.approx(expected, rel=1e-8)


def test_fisher_exact_is_one_at_the_mode_and_for_degenerate_margins():
    assert fisher_exact(5, 5, 5, 5) == 1.0
    assert fisher_exact(1, 2, 3, 4) == pytest.approx(1.0)  # a is the most likely cell
    assert fisher_exact(0, 0, 0, 0) == 1.0
    assert fisher_exact(5, 0, 0, 0) == 1.0  # one row empty: every table is the same
    assert fisher_exact(4, 0, 6, 0) == 1.0  # one column empty


@pytest.mark.parametrize("table", [(3, 1, 1, 3), (18, 2, 1, 19), (7, 3, 2, 8), (0, 12, 9, 4)])
def test_fisher_exact_symmetries(table):
    a, b, c, d = table
    p = fisher_exact(a, b, c, d)
    same = [
        (b, a, d, c),  # columns swapped
        (c, d, a, b),  # rows swapped
        (a, c, b, d),  # transposed
        (d, c, b, a),  # both swapped
    ]
    for other in same:
        assert fisher_exact(*other) == pytest.approx(p, rel=1e-9)


def test_fisher_exact_rejects_negative_counts():
    with pytest.raises(ValueError, match=">= 0"):
        fisher_exact(1, -1, 2, 3)


def test_fisher_exact_on_a_million_per_cell_is_fast_and_sane():
    start = time.perf_counter()
    balanced = fisher_exact(10**6, 10**6, 10**6, 10**6)
    shifted = fisher_exact(10**6, 10**6 - 5000, 10**6 - 4000, 10**6)
    extreme = fisher_exact(500_000, 10**6, 10**6, 500_000)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert balanced == 1.0
    # scipy.stats.fisher_exact on the same table: 6.635062020e-06
    assert shifted == pytest.approx(6.635062e-06, rel=1e-5)
    assert extreme == 0.0  # underflows: far beyond any alpha


def test_fisher_min_p_is_the_best_reachable_split():
    # 10 + 10 prompts, k firing in total: the most lopsided table is the best.
    assert fisher_min_p(10, 10, 10) == pytest.approx(2 / C20_10)
    assert fisher_min_p(10, 10, 3) == pytest.approx(4 / 19)  # 2 * C(10, 3) / C(20, 3)
    assert fisher_min_p(10, 10, 1) == pytest.approx(1.0)
    assert fisher_min_p(10, 10, 4) > 0.05 > fisher_min_p(10, 10, 5)  # 0.0867 vs 0.0325
    assert fisher_min_p(10, 10, 5) == pytest.approx(2 * math.comb(15, 5) / C20_10)
    # Unequal rows: with 3 main and 30 contrast prompts, 3 firings can all sit in main.
    assert fisher_min_p(3, 30, 3) == pytest.approx(fisher_exact(3, 0, 0, 30))
    assert fisher_min_p(3, 30, 3) == pytest.approx(1 / math.comb(33, 3))


def test_benjamini_hochberg_by_hand():
    # m = 4; sorted p 0.01, 0.03, 0.04, 0.2 -> p*m/rank 0.04, 0.06, 0.0533, 0.2 -> step-up
    # minimum from the top: 0.04, 0.0533, 0.0533, 0.2 (back in input order).
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.2])
    assert q == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert benjamini_hochberg([]) == []
    assert benjamini_hochberg([0.5]) == [0.5]
    assert benjamini_hochberg([1.0, 1.0]) == [1.0, 1.0]


def test_benjamini_hochberg_is_monotone_in_p_and_never_below_p_nor_above_one():
    rng = random.Random(7)
    p = [rng.random() ** 3 for _ in range(200)]
    q = benjamini_hochberg(p)
    by_p = sorted(range(len(p)), key=lambda i: p[i])
    assert all(q[i] <= q[j] for i, j in itertools.pairwise(by_p))
    assert all(pi <= qi <= 1.0 for pi, qi in zip(p, q, strict=True))


def test_balanced_accuracy_value_and_interval_by_hand():
    # 4 positives, 3 predicted; 6 negatives, 5 predicted negative.
    actual = [True] * 4 + [False] * 6
    predicted = [True, True, True, False] + [False] * 5 + [True]
    result = balanced_accuracy(predicted, actual)
    assert result.value == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert (result.n_positive, result.n_negative) == (4, 6)
    # Agresti-Caffo: (3+1)/(4+2) = 2/3 and (5+1)/(6+2) = 3/4.
    variance = ((2 / 3) * (1 / 3) / 6 + (3 / 4) * (1 / 4) / 8) / 4
    center = (2 / 3 + 3 / 4) / 2
    half = 1.959963984540054 * math.sqrt(variance)
    assert result.ci95 == pytest.approx((center - half, center + half))
    assert result.ci95 == pytest.approx((0.46735, 0.94932), abs=1e-5)


def test_balanced_accuracy_perfect_score_gets_an_honest_capped_interval():
    result = balanced_accuracy([True] * 5 + [False] * 5, [True] * 5 + [False] * 5)
    assert result.value == 1.0
    low, high = result.ci95
    assert high == 1.0  # capped
    assert low == pytest.approx(6 / 7 - Z95 * math.sqrt((6 / 7) * (1 / 7) / 7 / 2), abs=1e-12)
    assert 0.6 < low < 0.7


def test_balanced_accuracy_chance_and_inverted_predictions():
    actual = [True, False] * 10
    assert balanced_accuracy([True] * 20, actual).value == 0.5  # always "fires"
    assert balanced_accuracy([not a for a in actual], actual).value == 0.0
    assert balanced_accuracy([not a for a in actual], actual).ci95[0] == 0.0  # capped


def test_balanced_accuracy_none_without_both_classes():
    only_positive = balanced_accuracy([True, False], [True, True])
    assert only_positive.value is None and only_positive.ci95 is None
    assert (only_positive.n_positive, only_positive.n_negative) == (2, 0)
    too_few = balanced_accuracy([True, False, False], [True, False, False], min_per_class=2)
    assert too_few.value is None and too_few.n_positive == 1
    assert balanced_accuracy([], []).value is None
    with pytest.raises(ValueError, match="length"):
        balanced_accuracy([True], [True, False])


def test_mean_ci_by_hand():
    mean, ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    half = Z95 * math.sqrt(5 / 3) / 2  # sample sd sqrt(5/3), n = 4
    assert ci == pytest.approx((2.5 - half, 2.5 + half))
    assert ci == pytest.approx((1.2348487, 3.7651513), abs=1e-7)
    assert mean_ci([0.3]) == (0.3, None)
    assert mean_ci([2.0, 2.0]) == (2.0, (2.0, 2.0))
    with pytest.raises(ValueError):
        mean_ci([])


def test_fisher_exact_against_scipy_on_random_tables():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(20240611)
    for _ in range(400):
        scale = rng.choice([5, 30, 200, 5000])
        a, b, c, d = (rng.randint(0, scale) for _ in range(4))
        expected = scipy_stats.fisher_exact([[a, b], [c, d]])[1]
        got = fisher_exact(a, b, c, d)
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-300), (a, b, c, d)
