"""SAE quality on held-out text: reconstruction, sparsity and the effect on the model's loss.

All statistics use the positions of the statistics mask only (position 0 and special tokens
excluded: their residual-stream activations are huge outliers). The CE-loss splice
(:mod:`gpu_worker.splice`) replaces the activation at those positions only, so position 0
stays clean, and the loss is averaged over the predictions made from them.

``ce_loss_recovered = (zero - spliced) / (zero - clean)``: 1.0 means splicing the SAE
reconstruction in costs nothing; 0.0 means it is as bad as zeroing the activation.

Besides the metrics, the evaluation keeps what feature data needs: the sparse activations
(every positive activation, at most ``KEEP_PER_TOKEN`` per token) and exact per-feature
totals, split between the first real token of each window (position 1, right after BOS)
and the other counted positions ("content" positions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from gpu_worker.corpus import TokenWindows
from gpu_worker.splice import SpliceRunner
from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

EVAL_BATCH_TOKENS = 1024  # full-vocabulary logits: 1024 x 49k fp32 = 200 MB
# Feature activations kept per token for feature data (TopK SAEs have exactly k).
KEEP_PER_TOKEN = 128
FIRST_POSITION = 1  # the first real token of a window (position 0 is BOS)
CONTENT_START = FIRST_POSITION + 1  # content positions: every one after it


@dataclass
class PositionTotals:
    """Exact per-feature totals over one kind of position (first real tokens, or content)."""

    positions: int
    fires: torch.Tensor  # [d_sae] long: positions where the feature fired
    mass: torch.Tensor  # [d_sae] float64: sum of its activations
    max: torch.Tensor  # [d_sae] float32: its largest activation (0 where it never fired)

    @classmethod
    def zeros(cls, d_sae: int) -> PositionTotals:
        return cls(
            positions=0,
            fires=torch.zeros(d_sae, dtype=torch.long),
            mass=torch.zeros(d_sae, dtype=torch.float64),
            max=torch.zeros(d_sae, dtype=torch.float32),
        )

    def add(self, features: torch.Tensor) -> None:
        """Add positions: ``features`` is ``[n, d_sae]``, one row per position."""
        self.positions += int(features.shape[0])
        if features.shape[0] == 0:
            return
        self.fires += (features > 0).sum(dim=0).cpu()
        self.mass += features.sum(dim=0).double().cpu()
        self.max = torch.maximum(self.max, features.amax(dim=0).float().cpu().clamp(min=0))


@dataclass
class FeatureActivations:
    """Sparse feature activations on the held-out windows: one entry per (token, feature)."""

    windows: TokenWindows
    row: torch.Tensor  # window index
    pos: torch.Tensor  # position in the window
    feature: torch.Tensor
    value: torch.Tensor
    first: PositionTotals  # exact, at position 1 of the windows where the mask counts it
    content: PositionTotals  # exact, at every other counted position

    @property
    def fire_counts(self) -> torch.Tensor:
        """``[d_sae]``: counted positions where each feature fired (exact, not capped)."""
        return self.first.fires + self.content.fires

    @property
    def n_tokens(self) -> int:
        return self.first.positions + self.content.positions

    @classmethod
    def from_entries(
        cls,
        windows: TokenWindows,
        row: torch.Tensor,
        pos: torch.Tensor,
        feature: torch.Tensor,
        value: torch.Tensor,
        d_sae: int,
    ) -> FeatureActivations:
        """From sparse entries alone (they must hold every positive activation): the totals
        are computed from them. For tests and for callers without the dense activations."""
        first_rows = windows.mask[:, FIRST_POSITION] if windows.mask.shape[1] > 1 else None
        n_first = int(first_rows.sum()) if first_rows is not None else 0
        totals = {}
        for name, chosen, positions in (
            ("first", pos == FIRST_POSITION, n_first),
            ("content", pos != FIRST_POSITION, windows.n_tokens - n_first),
        ):
            f, v = feature[chosen], value[chosen].float()
            totals[name] = PositionTotals(
                positions=positions,
                fires=torch.bincount(f, minlength=d_sae),
                mass=torch.zeros(d_sae, dtype=torch.float64).index_add_(0, f, v.double()),
                max=torch.zeros(d_sae).scatter_reduce(0, f, v, "amax"),
            )
        return cls(windows, row, pos, feature, value, totals["first"], totals["content"])


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    activations: FeatureActivations


@dataclass
class _Sums:
    """What the batches add up to."""

    d_in: int
    d_sae: int
    sq_err: float = 0.0
    x_sq: float = 0.0
    l0: float = 0.0
    x: torch.Tensor = field(init=False)
    ce: dict[str, float] = field(
        default_factory=lambda: {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "n": 0}
    )
    first: PositionTotals = field(init=False)
    content: PositionTotals = field(init=False)
    entries: list[tuple[torch.Tensor, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.x = torch.zeros(self.d_in, dtype=torch.float64)
        self.first = PositionTotals.zeros(self.d_sae)
        self.content = PositionTotals.zeros(self.d_sae)

    @property
    def n_tokens(self) -> int:
        return self.first.positions + self.content.positions


@torch.inference_mode()
def evaluate_sae(
    model: HookedTransformer,
    sae: SAE,
    hook: HookPoint,
    windows: TokenWindows,
    *,
    batch_tokens: int = EVAL_BATCH_TOKENS,
    on_batch: Callable[[int, int], None] | None = None,
    check_stop: Callable[[], None] | None = None,
) -> EvaluationResult:
    """Metrics of ``sae`` at ``hook`` on ``windows`` (held-out), plus sparse activations."""
    sae = sae.to(model.cfg.device)
    sae.eval()
    sums = _Sums(d_in=int(sae.cfg.d_in), d_sae=int(sae.cfg.d_sae))
    per_batch = max(1, batch_tokens // windows.tokens.shape[1])
    total_windows = windows.tokens.shape[0]
    for start in range(0, total_windows, per_batch):
        if check_stop is not None:
            check_stop()
        _evaluate_batch(model, sae, hook, windows, slice(start, start + per_batch), sums)
        if on_batch is not None:
            on_batch(min(start + per_batch, total_windows), total_windows)
    if sums.n_tokens == 0:
        raise ValueError("no held-out positions to evaluate on")
    cat = [torch.cat(parts) for parts in zip(*sums.entries, strict=True)]
    activations = FeatureActivations(
        windows, cat[0], cat[1], cat[2], cat[3], first=sums.first, content=sums.content
    )
    return EvaluationResult(metrics=_metrics(sums), activations=activations)


def _evaluate_batch(
    model: HookedTransformer,
    sae: SAE,
    hook: HookPoint,
    windows: TokenWindows,
    rows: slice,
    sums: _Sums,
) -> None:
    device = model.cfg.device
    tokens = windows.tokens[rows].to(device)
    mask = windows.mask[rows].to(device)
    runner = SpliceRunner(model, hook, tokens)
    act, clean_loss = runner.clean()
    x = act[mask].float()
    features = sae.encode(x)
    recon = sae.decode(features)

    error = (recon - x).pow(2).sum(dim=-1)
    sums.sq_err += float(error.sum())
    sums.x += x.sum(dim=0).double().cpu()
    sums.x_sq += float(x.double().pow(2).sum())
    sums.l0 += float((features > 0).sum())
    window, position = mask.nonzero(as_tuple=True)
    first = position == FIRST_POSITION
    sums.first.add(features[first])
    sums.content.add(features[~first])
    sums.entries.append(_sparse_entries(features, window + rows.start, position))

    # loss[t] is the prediction of token t+1 made at position t.
    totals = runner.losses(clean_loss, mask, recon).totals(mask[:, :-1])
    for name, value in totals.items():
        sums.ce[name] += value


def _sparse_entries(
    features: torch.Tensor, window: torch.Tensor, position: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """``(window, position, feature, value)`` of the positive activations (capped per token)."""
    keep = min(KEEP_PER_TOKEN, features.shape[-1])
    values, indices = features.topk(keep, dim=-1)
    positive = values > 0
    token_index = torch.arange(features.shape[0], device=features.device)
    chosen = token_index.unsqueeze(1).expand_as(indices)[positive]
    return (
        window[chosen].cpu(),
        position[chosen].cpu(),
        indices[positive].cpu(),
        values[positive].float().cpu(),
    )


def _metrics(sums: _Sums) -> dict[str, float]:
    n_tokens = sums.n_tokens
    mean = sums.x / n_tokens
    total_variance = sums.x_sq - n_tokens * float(mean.pow(2).sum())
    n_ce = max(int(sums.ce["n"]), 1)
    clean, spliced, zero = (sums.ce[name] / n_ce for name in ("clean", "spliced", "zero"))
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    fire_counts = sums.first.fires + sums.content.fires
    return {
        "explained_variance": 1.0 - sums.sq_err / total_variance,
        "mse": sums.sq_err / (n_tokens * sums.d_in),
        "l0": sums.l0 / n_tokens,
        "dead_fraction": float((fire_counts == 0).float().mean()),
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero_ablated": zero,
        "ce_loss_recovered": recovered,
        "eval_tokens": n_tokens,
    }
