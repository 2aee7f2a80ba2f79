"""Small exact statistics the report needs, in pure Python (the core runs in a Lambda).

- :func:`fisher_exact` — two-sided Fisher's exact test on a 2x2 table, by walking the
  hypergeometric distribution from its mode with the term ratio (no table enumeration:
  the cost grows with the width of the distribution's bulk, not with the counts, so a
  million prompts per side is fine).
- :func:`fisher_min_p` — the smallest p-value any table with these margins can reach
  (Tarone's criterion: a feature that cannot reach the level is not tested at all).
- :func:`benjamini_hochberg` — q-values (false discovery rate).
- :func:`balanced_accuracy` — with a 95% interval (normal approximation on the
  Agresti-Caffo adjusted class accuracies: one success and one failure added per class,
  so a perfect score on ten examples still gets an honest interval).
- :func:`mean_ci` — mean and 95% interval of paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
_RELATIVE_TIE = 1e-7  # tables as likely as the observed one (within float error) count


def _log_pmf(x: int, n1: int, k: int, n: int) -> float:
    """log P(X = x), X ~ Hypergeometric(population n, k successes, n1 draws)."""
    return (
        _log_comb(k, x) + _log_comb(n - k, n1 - x) - _log_comb(n, n1)
        if 0 <= x <= k and 0 <= n1 - x <= n - k
        else -math.inf
    )


def _log_comb(n: int, r: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)


def _tail_log_sum(start: int, step: int, lo: int, hi: int, n1: int, k: int, n: int) -> float:
    """log of sum of P(x) for x = start, start+step, ... within [lo, hi] (a decreasing tail)."""
    log_first = _log_pmf(start, n1, k, n)
    total, term, x = 1.0, 1.0, start
    while lo <= x + step <= hi:
        if step > 0:
            ratio = (k - x) * (n1 - x) / ((x + 1) * (n - k - n1 + x + 1))
        else:
            ratio = x * (n - k - n1 + x) / ((k - x + 1) * (n1 - x + 1))
        term *= ratio
        x += step
        total += term
        if term < 1e-17 * total:
            break
    return log_first + math.log(total)


def _first_beyond(
    mode: int, edge: int, step: int, log_limit: float, n1: int, k: int, n: int
) -> int | None:
    """The x nearest the mode, towards ``edge``, with log P(x) <= log_limit, or None.

    P decreases monotonically away from the mode, so a binary search on the distance works.
    """
    if _log_pmf(edge, n1, k, n) > log_limit:
        return None
    near, far = 0, abs(edge - mode)  # P(mode + step*near) > limit >= P(mode + step*far)
    while far - near > 1:
        mid = (near + far) // 2
        if _log_pmf(mode + step * mid, n1, k, n) > log_limit:
            near = mid
        else:
            far = mid
    return mode + step * far


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test on [[a, b], [c, d]]."""
    if min(a, b, c, d) < 0:
        raise ValueError("counts must be >= 0")
    n1, k, n = a + b, a + c, a + b + c + d
    lo, hi = max(0, n1 - (n - k)), min(k, n1)
    if lo == hi:
        return 1.0
    mode = min(hi, max(lo, (n1 + 1) * (k + 1) // (n + 2)))
    log_obs = _log_pmf(a, n1, k, n)
    limit = log_obs + math.log1p(_RELATIVE_TIE)
    if a == mode or _log_pmf(mode, n1, k, n) <= limit:
        return 1.0
    own_step = 1 if a > mode else -1
    tails = [_tail_log_sum(a, own_step, lo, hi, n1, k, n)]
    other_edge = lo if own_step > 0 else hi
    start = _first_beyond(mode, other_edge, -own_step, limit, n1, k, n)
    if start is not None:
        tails.append(_tail_log_sum(start, -own_step, lo, hi, n1, k, n))
    top = max(tails)
    log_p = top + math.log(sum(math.exp(t - top) for t in tails))
    return min(1.0, math.exp(log_p))


def fisher_min_p(n1: int, n2: int, k: int) -> float:
    """The smallest two-sided p-value reachable with row sums n1, n2 and k successes."""
    lo, hi = max(0, k - n2), min(k, n1)
    return min(
        fisher_exact(hi, n1 - hi, k - hi, n2 - (k - hi)),
        fisher_exact(lo, n1 - lo, k - lo, n2 - (k - lo)),
    )


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """q-values in the input order (step-up, monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    q = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        q[i] = min(1.0, running)
    return q


@dataclass(frozen=True)
class BalancedAccuracy:
    value: float | None
    ci95: tuple[float, float] | None
    n_positive: int
    n_negative: int


def balanced_accuracy(
    predicted: Sequence[bool], actual: Sequence[bool], *, min_per_class: int = 1
) -> BalancedAccuracy:
    """(TPR + TNR) / 2 of binary predictions, with a 95% interval; None without both classes."""
    if len(predicted) != len(actual):
        raise ValueError("predicted and actual differ in length")
    pos = [p for p, a in zip(predicted, actual, strict=True) if a]
    neg = [p for p, a in zip(predicted, actual, strict=True) if not a]
    if len(pos) < min_per_class or len(neg) < min_per_class:
        return BalancedAccuracy(None, None, len(pos), len(neg))
    tp, tn = sum(pos), sum(not p for p in neg)
    value = (tp / len(pos) + tn / len(neg)) / 2
    # Agresti-Caffo: add one success and one failure to each class before the variance.
    adj_pos, adj_neg = (tp + 1) / (len(pos) + 2), (tn + 1) / (len(neg) + 2)
    variance = (
        adj_pos * (1 - adj_pos) / (len(pos) + 2) + adj_neg * (1 - adj_neg) / (len(neg) + 2)
    ) / 4
    center = (adj_pos + adj_neg) / 2
    half = Z95 * math.sqrt(variance)
    ci = (max(0.0, center - half), min(1.0, center + half))
    return BalancedAccuracy(value, ci, len(pos), len(neg))


def mean_ci(values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean and a 95% normal-approximation interval (None for fewer than two values)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)
