"""The per-token part of an extraction record, written by the worker and read by the steps.

Two forms of the same content, one writer and one reader here:

- compact (what the worker writes since issue 10): ``"tokens": [str]`` and, beside them,
  ``"features": [[[id, activation], ...] per token]`` (the strongest first), the shape of
  ``corpus_windows.jsonl``; ``"summary": [[id, max, mean, count], ...]``. A 64-token prompt
  with 8 features a token is about 40% of the verbose form.
- verbose (earlier workers, test fixtures): ``"tokens": [{"text": str, "features":
  [{"id": int, "activation": float}]}]``, ``"summary": [{"id", "max", "mean", "count"}]``.

:func:`record_tokens` reads either, so stored runs and fakes keep working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ACTIVATION_DECIMALS = 4

TokenFeatures = list[tuple[int, float]]


def compact_tokens(
    texts: Sequence[str], features: Sequence[Sequence[tuple[int, float]]]
) -> dict[str, Any]:
    """The worker's output fields for one prompt's tokens (activations rounded)."""
    return {
        "tokens": list(texts),
        "features": [
            [[int(fid), round(float(act), ACTIVATION_DECIMALS)] for fid, act in per_token]
            for per_token in features
        ],
    }


def compact_summary(entries: Sequence[tuple[int, float, float, int]]) -> list[list[Any]]:
    """``[[id, max, mean, count], ...]`` (strongest first, as given)."""
    return [
        [int(fid), round(mx, ACTIVATION_DECIMALS), round(mean, ACTIVATION_DECIMALS), int(count)]
        for fid, mx, mean, count in entries
    ]


def is_compact(record: Mapping[str, Any]) -> bool:
    tokens = record.get("tokens")
    return "features" in record or bool(tokens and isinstance(tokens[0], str))


def record_tokens(record: Mapping[str, Any]) -> tuple[list[str], list[TokenFeatures]]:
    """(token texts, per token [(feature id, activation)]) of either form; a record
    without tokens (an error record) gives two empty lists."""
    tokens = record.get("tokens") or []
    if is_compact(record):
        texts = [str(t) for t in tokens]
        raw = record.get("features") or []
        features = [[(int(f[0]), float(f[1])) for f in per_token] for per_token in raw]
        if len(features) != len(texts):
            raise ValueError(f"{len(texts)} tokens but {len(features)} feature lists")
        return texts, features
    texts = [str(t.get("text", "")) for t in tokens]
    features = [
        [(int(f["id"]), float(f["activation"])) for f in t.get("features") or ()] for t in tokens
    ]
    return texts, features
