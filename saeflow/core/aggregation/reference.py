"""What the SAE does on its reference corpus: how often each feature fires, how hard, and
which features are first-token features. The yardstick of specificity.

Read from the SAE's ``feature_summary.json`` (one small object, every feature) when the
worker wrote one; else rebuilt from ``feature_data.jsonl`` lines (SAEs trained before the
summary existed); else absent (a pretrained SAE with no feature data: the ranking then
falls back to activity, and says so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.first_token import verdict_from_record


@dataclass(frozen=True)
class CorpusReference:
    """Per-feature corpus statistics (features never seen fire 0 times)."""

    n_tokens: int
    fire_counts: Mapping[int, float]
    mean_activation: Mapping[int, float] = field(default_factory=dict)
    max_activation: Mapping[int, float] = field(default_factory=dict)
    first_token: frozenset[int] = frozenset()
    first_token_rule: str | None = None
    source: str = "feature_summary.json"
    # Position-matched rates: absolute position ranges [lo, hi) (hi None = open), the
    # corpus tokens counted in each, and each feature's firings there.
    buckets: tuple[tuple[int, int | None], ...] = ()
    bucket_tokens: tuple[int, ...] = ()
    bucket_counts: tuple[Mapping[int, float], ...] = ()

    def density(self, feature_id: int) -> float:
        """Smoothed firing rate: (count + 0.5) / (tokens + 1), never 0 (an unseen feature
        is rare, not impossible: 8k held-out tokens cannot show a rate of 1e-5)."""
        return (float(self.fire_counts.get(feature_id, 0.0)) + 0.5) / (self.n_tokens + 1)

    def raw_density(self, feature_id: int) -> float:
        return float(self.fire_counts.get(feature_id, 0.0)) / max(self.n_tokens, 1)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_tokens": self.n_tokens,
            "n_first_token_features": len(self.first_token),
            "first_token_rule": self.first_token_rule,
        }


def reference_from_summary(summary: Mapping[str, Any]) -> CorpusReference:
    """From ``feature_summary.json`` (schema_version 1)."""
    counts = summary.get("fire_counts") or []
    means = summary.get("mean_activation") or []
    maxes = summary.get("max_activation") or []
    first = summary.get("first_token") or {}
    positions = summary.get("positions") or {}
    buckets = tuple(
        (int(lo), None if hi is None else int(hi)) for lo, hi in positions.get("buckets") or ()
    )
    bucket_counts = tuple(
        {i: float(c) for i, c in enumerate(row) if c} for row in positions.get("fire_counts") or ()
    )
    if len(bucket_counts) != len(buckets):
        buckets, bucket_counts = (), ()
    return CorpusReference(
        n_tokens=int(summary.get("n_tokens") or 0),
        fire_counts={i: float(c) for i, c in enumerate(counts) if c},
        mean_activation={i: float(v) for i, v in enumerate(means) if v},
        max_activation={i: float(v) for i, v in enumerate(maxes) if v},
        first_token=frozenset(int(f) for f in first.get("features") or ()),
        first_token_rule=first.get("rule"),
        source="feature_summary.json",
        buckets=buckets,
        bucket_tokens=tuple(int(n) for n in positions.get("n_tokens") or ())[: len(buckets)],
        bucket_counts=bucket_counts,
    )


def reference_from_feature_data(
    lines: Iterable[Mapping[str, Any]], n_tokens: int
) -> CorpusReference | None:
    """From ``feature_data.jsonl`` lines (older SAEs); ``n_tokens`` = held-out tokens."""
    counts: dict[int, float] = {}
    maxes: dict[int, float] = {}
    first: set[int] = set()
    seen = judged = False
    for line in lines:
        fid = line.get("id")
        if not isinstance(fid, int):
            continue
        seen = True
        density = float(line.get("density") or 0.0)
        if density > 0:
            counts[fid] = density * n_tokens
        if line.get("max_activation"):
            maxes[fid] = float(line["max_activation"])
        verdict = verdict_from_record(line)
        judged = judged or verdict is not None
        if verdict:
            first.add(fid)
    if not seen or n_tokens <= 0:
        return None
    return CorpusReference(
        n_tokens=n_tokens,
        fire_counts=counts,
        max_activation=maxes,
        first_token=frozenset(first),
        first_token_rule="as recorded in feature_data.jsonl" if judged else None,
        source="feature_data.jsonl",
    )
