"""Score an explanation: correlation of predicted with true activations on held-out examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_SCORE_EXAMPLES = 3


@dataclass(frozen=True)
class Score:
    """A score in [-1, 1], or ``value=None`` with the reason why none could be computed."""

    value: float | None
    method: str
    n_examples: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.value,
            "score_method": self.method,
            "score_examples": self.n_examples,
            "score_reason": self.reason,
        }


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation, or None when either side is constant (undefined)."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    if var_x <= 0.0 or var_y <= 0.0:
        return None
    return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))


def true_activations(examples: Sequence[dict[str, Any]]) -> list[float]:
    return [float(ex.get("max", 0.0)) for ex in examples]


def unscorable_reason(truth: Sequence[float]) -> str | None:
    """Why no meaningful correlation exists for these held-out examples, if so."""
    if len(truth) < MIN_SCORE_EXAMPLES:
        return f"only {len(truth)} held-out examples (need {MIN_SCORE_EXAMPLES})"
    if max(truth) - min(truth) <= 0.0:
        return "the held-out examples all have the same true activation"
    return None


def score_predictions(predicted: Sequence[float], truth: Sequence[float], method: str) -> Score:
    reason = unscorable_reason(truth)
    if reason is not None:
        return Score(None, method, len(truth), reason)
    value = pearson(predicted, truth)
    if value is None:
        return Score(None, method, len(truth), "the predictions are all the same value")
    return Score(round(value, 4), method, len(truth))
