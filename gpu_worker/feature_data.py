"""Per-feature dashboard data for labelling, computed in a few vectorised passes.

For every feature, from the sparse activations on held-out text (:mod:`gpu_worker.evaluation`):
the top-activating contexts (at most one per window), a random sample of activating
contexts (at most one per window, windows of the top examples avoided when others exist),
an activation histogram, the density on content positions (not the first real token), the
first-token evidence and verdict (:mod:`gpu_worker.feature_summary`), and the tokens the
feature's decoder direction promotes / suppresses through the unembedding (``W_dec @ W_U``,
top 10 each).

One line of ``feature_data.jsonl`` per feature (see docs/ARCHITECTURE.md):
``{"id", "density", "max_activation", "first_token": {"n_texts", "first_fires", "fire_rate",
"mass_share", "is_first_token"}, "top_examples": [EX], "random_examples": [EX],
"histogram": {"edges", "counts"}, "promoted_tokens": [{"token", "logit"}],
"suppressed_tokens": [...]}`` with ``EX = {"tokens", "activations", "max"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.evaluation import CONTENT_START, FeatureActivations
from gpu_worker.feature_summary import content_density, first_token_evidence
from saeflow.core.first_token import FirstTokenEvidence, is_first_token_feature

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class FeatureDataOptions:
    """How much to keep per feature."""

    n_top: int = 16  # the offline labeller explains from these (with the prompt set's own)
    n_random: int = 8
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
    evidence: list[FirstTokenEvidence] | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per feature, in feature order (``evidence``: first_token_evidence(acts))."""
    options = options or FeatureDataOptions()
    d_sae = int(sae.cfg.d_sae)
    tokens = acts.windows.tokens
    decode = TokenText(model.tokenizer)
    evidence = evidence if evidence is not None else first_token_evidence(acts)

    # Examples, maxima and histograms from content positions only: the first real token
    # (position 1) is first-token evidence, never an example of what a feature is about.
    content = _content_entries(acts)
    lookup = _ActivationLookup(content, d_sae)
    max_act = acts.content.max  # exact, over every content position
    top_entries = _top_per_window(content, options.n_top)
    top = _examples(content, lookup, top_entries, options)
    rand = _examples(content, lookup, _random_per_window(content, top_entries, options), options)
    edges, counts = _histograms(content, max_act, d_sae, options.bins)
    promoted, suppressed = _logit_effects(sae, model, options.n_logit_tokens)
    density = content_density(acts)

    for feature in range(d_sae):
        yield {
            "id": feature,
            "density": float(density[feature]),
            "max_activation": round(float(max_act[feature]), 4),
            "first_token": {
                **evidence[feature].to_dict(),
                "is_first_token": is_first_token_feature(evidence[feature]),
            },
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
    pair = _feature_window(acts)
    best_in_window = _top_per_group(pair, acts.value, 1)
    chosen = _top_per_group(acts.feature[best_in_window], acts.value[best_in_window], n)
    return best_in_window[chosen]


def _random_per_window(
    acts: FeatureActivations, top_entries: torch.Tensor, options: FeatureDataOptions
) -> torch.Tensor:
    """``n_random`` random entries per feature, at most one per window, preferring windows
    that are not among the feature's top examples (those are shown already)."""
    generator = torch.Generator().manual_seed(options.seed)
    score = torch.rand(acts.value.shape[0], generator=generator, dtype=torch.float64)
    pair = _feature_window(acts)
    one_per_window = _top_per_group(pair, score, 1)
    shown = torch.isin(pair[one_per_window], pair[top_entries])
    # Scores in [0, 1): a window already shown drops below every other window.
    preference = score[one_per_window] - shown.double()
    chosen = _top_per_group(acts.feature[one_per_window], preference, options.n_random)
    return one_per_window[chosen]


def _content_entries(acts: FeatureActivations) -> FeatureActivations:
    """The entries at content positions (position >= 2); totals unchanged."""
    keep = acts.pos >= CONTENT_START
    return replace(
        acts,
        row=acts.row[keep],
        pos=acts.pos[keep],
        feature=acts.feature[keep],
        value=acts.value[keep],
    )


def _feature_window(acts: FeatureActivations) -> torch.Tensor:
    """One key per (feature, window) pair."""
    return acts.feature * int(acts.windows.tokens.shape[0]) + acts.row


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
    # Windows start after the first real token (position 1) and stay inside the context.
    start = (pos - options.tokens_before).clamp(min=CONTENT_START)
    start = torch.minimum(start, (torch.full_like(start, width) - span).clamp(min=CONTENT_START))
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


def _render(example: _Example, tokens: torch.Tensor, decode: TokenText) -> dict[str, Any]:
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


class TokenText:
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
