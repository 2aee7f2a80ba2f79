"""Corpus-wide feature data beside ``feature_data.jsonl``: the aggregator's reference corpus.

From the held-out evaluation (:class:`gpu_worker.evaluation.FeatureActivations`):

- :func:`first_token_evidence`: per feature, what it did on the first real token of each
  window (position 1, right after BOS) against everywhere else. The verdict is
  :func:`saeflow.core.first_token.is_first_token_feature`: one rule for worker and aggregator.
- ``feature_summary.json`` (:func:`build_feature_summary`): one small object with per-feature
  arrays (firing counts, density, mean and max activation on content positions, the
  first-token figures). The aggregator reads it for every feature to compute specificity.
- ``corpus_windows.jsonl`` (:func:`build_corpus_windows`): spans of random held-out windows
  with every kept activation per token: the corpus's contexts where a feature does NOT fire.

"Content" positions are the counted positions (mask true: not BOS, not special tokens)
other than the first real token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gpu_worker.evaluation import CONTENT_START, FeatureActivations
from saeflow.core.contract.extraction import ACTIVATION_DECIMALS
from saeflow.core.first_token import (
    DEFAULT_RULE,
    FirstTokenEvidence,
    FirstTokenRule,
    is_first_token_feature,
)

SUMMARY_SCHEMA_VERSION = 1
CORPUS_WINDOWS = 128
CORPUS_SPAN = 16


def first_token_evidence(acts: FeatureActivations) -> list[FirstTokenEvidence]:
    """Per feature, in feature order: fires and mass at position 1 against all counted positions."""
    n_texts = acts.first.positions
    fires = acts.first.fires.tolist()
    first_mass = acts.first.mass.tolist()
    total_mass = (acts.first.mass + acts.content.mass).tolist()
    content_fires = acts.content.fires.tolist()
    return [
        FirstTokenEvidence(
            n_texts=n_texts, first_fires=f, first_mass=m, total_mass=t, content_fires=c
        )
        for f, m, t, c in zip(fires, first_mass, total_mass, content_fires, strict=True)
    ]


# Absolute position ranges (BOS = 0, first real token = 1) for position-matched
# specificity: prompts are short, and some features fire by position, not by content.
POSITION_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (CONTENT_START, 8),
    (8, 16),
    (16, 32),
    (32, 64),
    (64, None),
)


def position_buckets(acts: FeatureActivations, d_sae: int) -> dict[str, Any]:
    """Content tokens and each feature's firings per position bucket (the corpus's rate at
    the positions a prompt set occupies)."""
    mask = acts.windows.mask
    width = int(mask.shape[1])
    counted = mask.sum(dim=0)  # counted tokens per position
    n_tokens, fire_counts = [], []
    firing = acts.value > 0
    for lo, hi in POSITION_BUCKETS:
        top = width if hi is None else min(hi, width)
        n_tokens.append(int(counted[lo:top].sum()) if lo < top else 0)
        chosen = firing & (acts.pos >= lo) & (acts.pos < top)
        fire_counts.append(torch.bincount(acts.feature[chosen], minlength=d_sae).tolist())
    return {
        "buckets": [[lo, hi] for lo, hi in POSITION_BUCKETS],
        "n_tokens": n_tokens,
        "fire_counts": fire_counts,
        "source": "held-out evaluation windows",
    }


def content_density(acts: FeatureActivations) -> torch.Tensor:
    """``[d_sae]`` float64: share of content positions where each feature fires."""
    return acts.content.fires.double() / max(acts.content.positions, 1)


def build_feature_summary(
    acts: FeatureActivations,
    evidence: list[FirstTokenEvidence],
    rule: FirstTokenRule = DEFAULT_RULE,
) -> dict[str, Any]:
    """The ``feature_summary.json`` object (floats to 6 significant digits)."""
    content = acts.content
    fires = content.fires.double()
    mean = torch.where(fires > 0, content.mass / fires.clamp(min=1), torch.zeros(()))
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "d_sae": len(evidence),
        "n_tokens": content.positions,
        "n_windows": int(acts.windows.tokens.shape[0]),
        "fire_counts": content.fires.tolist(),
        "density": _significant(content_density(acts).tolist()),
        "mean_activation": _significant(mean.tolist()),
        "max_activation": _significant(content.max.tolist()),
        "first_token": {
            "rule": rule.describe(),
            "features": [i for i, e in enumerate(evidence) if is_first_token_feature(e, rule)],
            "fire_rate": _significant(e.fire_rate for e in evidence),
            "mass_share": _significant(e.mass_share for e in evidence),
        },
        "positions": position_buckets(acts, len(evidence)),
    }


def build_corpus_windows(
    acts: FeatureActivations,
    decode: Any,
    *,
    n_windows: int = CORPUS_WINDOWS,
    span: int = CORPUS_SPAN,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Spans of ``span`` tokens (from position >= 2) of ``n_windows`` random windows (seeded).

    One object per window: ``{"tokens": [str], "features": [[[id, act], ...] per token]}``,
    strongest first; positions outside the statistics mask (special tokens) get ``[]``.
    """
    n_rows, width = (int(n) for n in acts.windows.tokens.shape)
    span = min(span, width - CONTENT_START)
    if span < 1 or n_rows == 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n_rows, generator=generator)[:n_windows].sort().values
    room = width - CONTENT_START - span + 1
    starts = CONTENT_START + torch.randint(room, (rows.numel(),), generator=generator)
    slot = torch.full((n_rows,), -1, dtype=torch.long)
    slot[rows] = torch.arange(rows.numel())
    start_of_row = torch.zeros(n_rows, dtype=torch.long)
    start_of_row[rows] = starts
    offset = acts.pos - start_of_row[acts.row]
    chosen = (slot[acts.row] >= 0) & (offset >= 0) & (offset < span)
    features: list[list[list[list[Any]]]] = [[[] for _ in range(span)] for _ in range(rows.numel())]
    for index in _strongest_first(acts, chosen).tolist():
        features[int(slot[acts.row[index]])][int(offset[index])].append(
            [int(acts.feature[index]), round(float(acts.value[index]), ACTIVATION_DECIMALS)]
        )
    out = []
    for i, (row, start) in enumerate(zip(rows.tolist(), starts.tolist(), strict=True)):
        ids = acts.windows.tokens[row, start : start + span].tolist()
        out.append({"tokens": [decode(int(t)) for t in ids], "features": features[i]})
    return out


def _strongest_first(acts: FeatureActivations, chosen: torch.Tensor) -> torch.Tensor:
    """Indices of the chosen entries, each token's strongest activation first."""
    index = chosen.nonzero().squeeze(1)
    return index[torch.argsort(acts.value[index], descending=True, stable=True)]


def write_json(value: Any, path: Path) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def write_jsonl(records: list[dict[str, Any]], path: Path) -> int:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)


def _significant(values: Any) -> list[float]:
    """Floats to 6 significant digits: the file stays small for 100k+ features."""
    return [float(f"{v:.6g}") for v in values]
