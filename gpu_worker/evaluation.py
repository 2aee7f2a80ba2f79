"""SAE quality on held-out text: reconstruction, sparsity and the effect on the model's loss.

All statistics use the positions of the statistics mask only (position 0 and special tokens
excluded: their residual-stream activations are huge outliers). The CE-loss splice replaces
the activation at those positions only, so position 0 stays clean, and the loss is averaged
over the predictions made from them.

``ce_loss_recovered = (zero - spliced) / (zero - clean)``: 1.0 means splicing the SAE
reconstruction in costs nothing; 0.0 means it is as bad as zeroing the activation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.corpus import TokenWindows
from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

EVAL_BATCH_TOKENS = 1024  # full-vocabulary logits: 1024 x 49k fp32 = 200 MB
# Feature activations kept per token for feature data (TopK SAEs have exactly k).
KEEP_PER_TOKEN = 128


@dataclass
class FeatureActivations:
    """Sparse feature activations on the held-out windows: one entry per (token, feature)."""

    windows: TokenWindows
    row: torch.Tensor  # window index
    pos: torch.Tensor  # position in the window
    feature: torch.Tensor
    value: torch.Tensor
    fire_counts: torch.Tensor  # [d_sae], exact (not capped)
    n_tokens: int


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    activations: FeatureActivations


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
    device = model.cfg.device
    sae = sae.to(device)
    sae.eval()
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    per_batch = max(1, batch_tokens // windows.tokens.shape[1])
    keep = min(KEEP_PER_TOKEN, d_sae)

    sums = {"sq_err": 0.0, "x": torch.zeros(d_in, dtype=torch.float64), "x_sq": 0.0, "l0": 0.0}
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "n": 0}
    fire_counts = torch.zeros(d_sae, dtype=torch.long)
    entries: list[tuple[torch.Tensor, ...]] = []
    n_tokens = 0
    total_windows = windows.tokens.shape[0]

    for start in range(0, total_windows, per_batch):
        if check_stop is not None:
            check_stop()
        tokens = windows.tokens[start : start + per_batch].to(device)
        mask = windows.mask[start : start + per_batch].to(device)
        runner = _SpliceRunner(model, hook, tokens)
        act, clean_loss = runner.clean()
        x = act[mask].float()
        features = sae.encode(x)
        recon = sae.decode(features)

        error = (recon - x).pow(2).sum(dim=-1)
        sums["sq_err"] += float(error.sum())
        sums["x"] += x.sum(dim=0).double().cpu()
        sums["x_sq"] += float(x.double().pow(2).sum())
        active = features > 0
        sums["l0"] += float(active.sum())
        fire_counts += active.sum(dim=0).cpu()
        n_tokens += x.shape[0]

        values, indices = features.topk(keep, dim=-1)
        positive = values > 0
        rows, positions = mask.nonzero(as_tuple=True)
        token_index = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(indices)
        chosen = token_index[positive]
        entries.append(
            (
                (rows[chosen] + start).cpu(),
                positions[chosen].cpu(),
                indices[positive].cpu(),
                values[positive].float().cpu(),
            )
        )

        spliced_loss = runner.with_replacement(mask, recon)
        zero_loss = runner.with_replacement(mask, torch.zeros_like(x))
        # loss[t] is the prediction of token t+1 made at position t.
        predict = mask[:, :-1]
        ce["clean"] += float(clean_loss[predict].sum())
        ce["spliced"] += float(spliced_loss[predict].sum())
        ce["zero"] += float(zero_loss[predict].sum())
        ce["n"] += int(predict.sum())
        if on_batch is not None:
            on_batch(min(start + per_batch, total_windows), total_windows)

    if n_tokens == 0:
        raise ValueError("no held-out positions to evaluate on")
    mean = sums["x"] / n_tokens
    total_variance = sums["x_sq"] - n_tokens * float(mean.pow(2).sum())
    clean = ce["clean"] / max(ce["n"], 1)
    spliced = ce["spliced"] / max(ce["n"], 1)
    zero = ce["zero"] / max(ce["n"], 1)
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    metrics = {
        "explained_variance": 1.0 - sums["sq_err"] / total_variance,
        "mse": sums["sq_err"] / (n_tokens * d_in),
        "l0": sums["l0"] / n_tokens,
        "dead_fraction": float((fire_counts == 0).float().mean()),
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero_ablated": zero,
        "ce_loss_recovered": recovered,
        "eval_tokens": n_tokens,
    }
    cat = [torch.cat(parts) for parts in zip(*entries, strict=True)]
    activations = FeatureActivations(
        windows=windows,
        row=cat[0],
        pos=cat[1],
        feature=cat[2],
        value=cat[3],
        fire_counts=fire_counts,
        n_tokens=n_tokens,
    )
    return EvaluationResult(metrics=metrics, activations=activations)


class _SpliceRunner:
    """Per-token losses of one batch: clean, and with the hook's activation replaced.

    For residual-stream hooks the shared prefix runs once: the forward stops at the hook and
    each variant resumes from there (``start_at_layer``). Other sites use forward hooks.
    """

    def __init__(self, model: HookedTransformer, hook: HookPoint, tokens: torch.Tensor) -> None:
        self.model = model
        self.hook = hook
        self.tokens = tokens
        self.resume_layer: int | None = {
            "resid_post": hook.layer + 1,
            "resid_pre": hook.layer,
        }.get(hook.site)
        self.residual: torch.Tensor | None = None

    def clean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The activation at the hook and the clean per-token loss."""
        if self.resume_layer is not None:
            self.residual = self.model(self.tokens, stop_at_layer=self.resume_layer)
            return self.residual, self._resume(self.residual)
        captured: dict[str, torch.Tensor] = {}

        def capture(act: torch.Tensor, hook: Any) -> torch.Tensor:
            captured["act"] = act.detach().clone()
            return act

        loss = self.model.run_with_hooks(
            self.tokens,
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=[(self.hook.name, capture)],
        )
        return captured["act"], loss

    def with_replacement(self, mask: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
        """Per-token loss with the activation at ``mask`` positions replaced."""
        if self.resume_layer is not None:
            assert self.residual is not None
            residual = self.residual.clone()
            residual[mask] = replacement.to(residual.dtype)
            return self._resume(residual)

        def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            act[mask] = replacement.to(act.dtype)
            return act

        return self.model.run_with_hooks(
            self.tokens,
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=[(self.hook.name, replace)],
        )

    def _resume(self, residual: torch.Tensor) -> torch.Tensor:
        return self.model(
            residual,
            start_at_layer=self.resume_layer,
            tokens=self.tokens,
            return_type="loss",
            loss_per_token=True,
        )
