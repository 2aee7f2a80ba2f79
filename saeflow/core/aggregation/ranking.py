"""Which features are about these prompts: specificity against the reference corpus.

A feature is *specific* to a prompt set when it fires on the set's content tokens more
often than the corpus predicts. The prediction is position-matched: prompts are short, and
some features fire by position (near the start of a text) rather than by content, so the
expected count sums, over the prompt set's tokens, the feature's corpus firing rate at the
same position range (when the SAE's reference has position buckets; else its overall rate).

``specificity = log2((observed + 1) / (expected + 1))``: one pseudo-count on both sides,
so that a feature seen twice is not "infinitely specific" and a feature the corpus never
showed is not either. Ranking multiplies it by a strength weight (how hard the feature
fires on the prompts relative to its corpus activations, capped), so features that barely
cross their threshold rank below those the prompts drive hard, and requires support: the
feature fires in at least ``min_prompts`` prompts. First-token features never rank.

The second view, "most active", is the old one: activation mass per token (frequency x
mean activation), dense features (firing on most tokens) left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saeflow.core.aggregation.reference import CorpusReference

SPECIFICITY = "specificity"
ACTIVITY = "activity"


@dataclass(frozen=True)
class RankingSettings:
    top_k_features: int = 24
    """Features in the default view (and first in line for labels)."""
    active_features: int = 12
    """Features in the "most active" view."""
    min_prompts: int = 2
    """A feature must fire in at least this many prompts to rank (fewer prompts: 1)."""
    pseudo_count: float = 1.0
    min_specificity: float = 1.0
    """The specific view lists features at least twice as frequent as the corpus predicts
    (log2 ratio >= 1): a feature merely as common as everywhere else is not "specific"."""
    max_token_frequency: float = 0.3
    """"Most active" leaves out features firing on more than this share of tokens."""
    strength_cap: float = 1.0
    """Strength weight = min(cap, mean activation on the prompts / corpus mean)."""
    strength_floor: float = 0.25
    prior_tokens: float = 200.0
    """Weight (in tokens) of a feature's overall corpus rate in each position bucket's."""

    def __post_init__(self) -> None:
        if self.top_k_features < 0 or self.active_features < 0:
            raise ValueError("view sizes must be >= 0")
        if self.min_prompts < 1:
            raise ValueError("min_prompts must be >= 1")


def expected_count(
    feature_id: int,
    reference: CorpusReference,
    tokens_by_position: Sequence[int],
    prior_tokens: float,
) -> float:
    """Content-token firings the corpus predicts for the prompt set (position-matched)."""
    overall = reference.density(feature_id)
    if not reference.buckets:
        return overall * sum(tokens_by_position)
    expected = 0.0
    last = len(reference.buckets) - 1
    for index, ((lo, hi), n_ref, fired) in enumerate(
        zip(reference.buckets, reference.bucket_tokens, reference.bucket_counts, strict=True)
    ):
        # Positions past the last bucket count in it; those before the first, in the first.
        n_prompt = _tokens_between(
            tokens_by_position, 0 if index == 0 else lo, None if index == last else hi
        )
        if n_prompt:
            rate = (float(fired.get(feature_id, 0.0)) + prior_tokens * overall) / (
                n_ref + prior_tokens
            )
            expected += n_prompt * rate
    return expected


def _tokens_between(tokens_by_position: Sequence[int], lo: int, hi: int | None) -> int:
    """Prompt tokens at absolute positions lo <= p < hi (None: no upper bound)."""
    upper = len(tokens_by_position) if hi is None else min(hi, len(tokens_by_position))
    return sum(tokens_by_position[lo:upper]) if lo < upper else 0


def specificity(observed: float, expected: float, pseudo_count: float = 1.0) -> float:
    return math.log2((observed + pseudo_count) / (expected + pseudo_count))


def strength_weight(
    mean_activation: float, corpus_mean: float | None, settings: RankingSettings
) -> float:
    if not corpus_mean or corpus_mean <= 0:
        return 1.0
    ratio = mean_activation / corpus_mean
    return max(settings.strength_floor, min(settings.strength_cap, ratio))


def score_specificity(
    stats: Iterable[dict[str, Any]],
    reference: CorpusReference,
    tokens_by_position: Sequence[int],
    settings: RankingSettings,
) -> None:
    """Fill ``expected``, ``specificity`` and ``specificity_score`` of each stats dict."""
    for s in stats:
        fid = int(s["id"])
        expected = expected_count(fid, reference, tokens_by_position, settings.prior_tokens)
        spec = specificity(s["token_count"], expected, settings.pseudo_count)
        weight = strength_weight(s["mean_activation"], reference.mean_activation.get(fid), settings)
        s["expected_count"] = expected
        s["corpus_density"] = reference.raw_density(fid)
        s["specificity"] = spec
        s["strength_weight"] = weight
        s["specificity_score"] = spec * weight if spec > 0 else spec


def eligible(s: Mapping[str, Any], min_prompts: int) -> bool:
    return not s.get("first_token") and s["token_count"] > 0 and s["prompt_count"] >= min_prompts


def rank_by_specificity(
    stats: Iterable[dict[str, Any]], min_prompts: int, min_specificity: float = 1.0
) -> list[dict[str, Any]]:
    ranked = [
        s
        for s in stats
        if eligible(s, min_prompts) and s.get("specificity", 0.0) >= min_specificity
    ]
    ranked.sort(key=lambda s: (-s["specificity_score"], s["id"]))
    return ranked


def rank_by_activity(
    stats: Iterable[dict[str, Any]], min_prompts: int, max_token_frequency: float
) -> list[dict[str, Any]]:
    ranked = [
        s for s in stats if eligible(s, min_prompts) and s["frequency"] <= max_token_frequency
    ]
    ranked.sort(key=lambda s: (-s["importance"], s["id"]))
    return ranked


def prompt_top_features(
    tokens: Sequence[Mapping[str, Any]],
    scores: Mapping[int, float],
    limit: int = 5,
) -> list[dict[str, Any]]:
    """A prompt's own most specific features: among those firing on its content tokens
    (first token left out), the highest specificity score; their max activation there."""
    best: dict[int, float] = {}
    for tok in tokens[1:]:
        for feat in tok.get("features") or ():
            fid, act = int(feat["id"]), float(feat["activation"])
            if act > 0 and fid in scores and act > best.get(fid, 0.0):
                best[fid] = act
    chosen = sorted(best, key=lambda f: (-scores[f], f))[:limit]
    return [
        {"id": f, "specificity_score": round(scores[f], 4), "max_activation": best[f]}
        for f in chosen
    ]
