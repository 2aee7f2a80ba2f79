"""Per-feature dashboard data for labelling, computed in a few vectorised passes.

For every feature, from the sparse activations on held-out text (:mod:`gpu_worker.evaluation`):
the top-activating contexts (at most one per window), a random sample of activating
contexts, an activation histogram, the density, and the tokens the feature's decoder
direction promotes / suppresses through the unembedding (``W_dec @ W_U``, top 10 each).

One line of ``feature_data.jsonl`` per feature (see docs/ARCHITECTURE.md):
``{"id", "density", "max_activation", "top_examples": [EX], "random_examples": [EX],
"histogram": {"edges", "counts"}, "promoted_tokens": [{"token", "logit"}],
"suppressed_tokens": [...]}`` with ``EX = {"tokens", "activations", "max"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.evaluation import FeatureActivations

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class FeatureDataOptions:
    """How much to keep per feature."""

    n_top: int = 8
    n_random: int = 4
    tokens_before: int = 10
    tokens_after: int = 3
    bins: int = 20
    n_logit_tokens: int = 10
    seed: int = 0


def build_feature_data(
    acts: FeatureActivations,
    sae: SAE,
    model: HookedTransformer,
    options: FeatureDataOptions | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per feature, in feature order."""
    options = options or FeatureDataOptions()
    d_sae = int(sae.cfg.d_sae)
    tokens = acts.windows.tokens
    decode = _TokenText(model.tokenizer)

    lookup = _ActivationLookup(acts, d_sae)
    max_act = torch.zeros(d_sae).scatter_reduce(0, acts.feature, acts.value, "amax")
    top = _examples(acts, lookup, _top_per_window(acts, options.n_top), options)
    generator = torch.Generator().manual_seed(options.seed)
    random_score = torch.rand(acts.value.shape[0], generator=generator)
    rand = _examples(
        acts, lookup, _top_per_group(acts.feature, random_score, options.n_random), options
    )
    edges, counts = _histograms(acts, max_act, d_sae, options.bins)
    promoted, suppressed = _logit_effects(sae, model, options.n_logit_tokens)
    density = acts.fire_counts.double() / max(acts.n_tokens, 1)

    for feature in range(d_sae):
        yield {
            "id": feature,
            "density": float(density[feature]),
            "max_activation": round(float(max_act[feature]), 4),
            "top_examples": [_render(ex, tokens, decode) for ex in top.get(feature, [])],
            "random_examples": [_render(ex, tokens, decode) for ex in rand.get(feature, [])],
            "histogram": {
                "edges": [round(float(e), 4) for e in edges[feature]],
                "counts": [int(c) for c in counts[feature]],
            },
            "promoted_tokens": [
                {"token": decode(int(t)), "logit": round(float(v), 4)}
                for t, v in zip(*promoted[feature], strict=True)
            ],
            "suppressed_tokens": [
                {"token": decode(int(t)), "logit": round(float(v), 4)}
                for t, v in zip(*suppressed[feature], strict=True)
            ],
        }


def write_feature_data(records: Iterator[dict[str, Any]], path: Path) -> int:
    """Write JSON Lines; return the number of features written."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# --- selection --------------------------------------------------------------------------


def _top_per_group(group: torch.Tensor, score: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` highest-scoring items of each group."""
    if group.numel() == 0:
        return group.new_zeros(0)
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group = group[order]
    rank = torch.arange(order.numel()) - torch.searchsorted(sorted_group, sorted_group)
    return order[rank < n]


def _top_per_window(acts: FeatureActivations, n: int) -> torch.Tensor:
    """The strongest entry of each (feature, window), then the ``n`` best windows per feature."""
    n_rows = int(acts.windows.tokens.shape[0])
    pair = acts.feature * n_rows + acts.row
    best_in_window = _top_per_group(pair, acts.value, 1)
    chosen = _top_per_group(acts.feature[best_in_window], acts.value[best_in_window], n)
    return best_in_window[chosen]


class _ActivationLookup:
    """Activation of feature f at (window, position), 0 where it did not fire."""

    def __init__(self, acts: FeatureActivations, d_sae: int) -> None:
        self.width = int(acts.windows.tokens.shape[1])
        self.d_sae = d_sae
        keys = (acts.row * self.width + acts.pos) * d_sae + acts.feature
        self.keys, order = torch.sort(keys)
        self.values = acts.value[order]

    def __call__(self, feature: torch.Tensor, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        keys = (row * self.width + pos) * self.d_sae + feature
        if self.keys.numel() == 0:
            return torch.zeros(keys.shape)
        index = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        found = self.keys[index] == keys
        return torch.where(found, self.values[index], torch.zeros(()))


@dataclass
class _Example:
    row: int
    start: int
    activations: list[float]
    max: float


def _examples(
    acts: FeatureActivations,
    lookup: _ActivationLookup,
    selected: torch.Tensor,
    options: FeatureDataOptions,
) -> dict[int, list[_Example]]:
    """Token windows around the selected entries, with the feature's activation per token."""
    if selected.numel() == 0:
        return {}
    width = int(acts.windows.tokens.shape[1])
    feature, row, pos = acts.feature[selected], acts.row[selected], acts.pos[selected]
    span = options.tokens_before + options.tokens_after + 1
    # Windows start after position 0 (BOS) and stay inside the context.
    start = (pos - options.tokens_before).clamp(min=1)
    start = torch.minimum(start, (torch.full_like(start, width) - span).clamp(min=1))
    offsets = torch.arange(span)
    grid = start.unsqueeze(1) + offsets
    valid = grid < width
    values = lookup(
        feature.unsqueeze(1).expand_as(grid),
        row.unsqueeze(1).expand_as(grid),
        grid.clamp(max=width - 1),
    )
    values = torch.where(valid, values, torch.zeros(()))
    out: dict[int, list[_Example]] = {}
    for i in range(selected.numel()):
        length = int(valid[i].sum())
        acts_list = [round(float(v), 4) for v in values[i, :length]]
        out.setdefault(int(feature[i]), []).append(
            _Example(
                row=int(row[i]),
                start=int(start[i]),
                activations=acts_list,
                # The window's own maximum: a random example's window may hold a stronger
                # activation than the token it was picked for.
                max=max(acts_list),
            )
        )
    return out


def _render(example: _Example, tokens: torch.Tensor, decode: _TokenText) -> dict[str, Any]:
    ids = tokens[example.row, example.start : example.start + len(example.activations)]
    return {
        "tokens": [decode(int(t)) for t in ids],
        "activations": example.activations,
        "max": example.max,
    }


# --- histograms and logit effects -------------------------------------------------------


def _histograms(
    acts: FeatureActivations, max_act: torch.Tensor, d_sae: int, bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature: ``bins`` equal bins over (0, max activation]."""
    top = max_act.clamp(min=1e-8)
    index = (acts.value / top[acts.feature] * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(acts.feature * bins + index, minlength=d_sae * bins)
    edges = torch.linspace(0, 1, bins + 1).unsqueeze(0) * max_act.unsqueeze(1)
    return edges, counts.view(d_sae, bins)


@torch.inference_mode()
def _logit_effects(
    sae: SAE, model: HookedTransformer, n: int, chunk: int = 512
) -> tuple[list[tuple[list[int], list[float]]], list[tuple[list[int], list[float]]]]:
    """Top ``n`` promoted and suppressed tokens of ``W_dec[f] @ W_U`` for every feature."""
    w_dec = sae.W_dec.detach().float()
    w_u = model.W_U.detach().float().to(w_dec.device)
    promoted: list[tuple[list[int], list[float]]] = []
    suppressed: list[tuple[list[int], list[float]]] = []
    for begin in range(0, w_dec.shape[0], chunk):
        logits = w_dec[begin : begin + chunk] @ w_u
        up_v, up_i = logits.topk(n, dim=-1)
        down_v, down_i = logits.topk(n, dim=-1, largest=False)
        for row in range(logits.shape[0]):
            promoted.append((up_i[row].tolist(), up_v[row].tolist()))
            suppressed.append((down_i[row].tolist(), down_v[row].tolist()))
    return promoted, suppressed


class _TokenText:
    """Token id -> its text, decoded once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self.cache[token_id] = text
        return text
