"""Next-token losses with the hook's activation replaced: the CE-loss splice.

Evaluation (held-out windows) and extraction (the user's prompts) both measure how much
the model's next-token loss suffers when the SAE's reconstruction replaces the activation
at the hook, against replacing it with zeros. One definition serves both:

- ``clean``: the model as it is;
- ``spliced``: the activation at the ``mask`` positions replaced by the reconstruction;
- ``zero``: the activation at the ``mask`` positions replaced by zeros.

``loss[b, t]`` is the loss of predicting token ``t + 1`` from position ``t``. Which
predictions count is the caller's choice (:meth:`SpliceLosses.row_sums`). Batches may be
right-padded: under causal attention a real position never sees a pad, so the losses of
real tokens do not depend on the padding (the attention mask is passed on all the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class SpliceLosses:
    """Per-token losses ``[batch, pos - 1]`` of one batch, three ways."""

    clean: torch.Tensor
    spliced: torch.Tensor
    zero: torch.Tensor

    def row_sums(self, predict: torch.Tensor) -> torch.Tensor:
        """``[4, batch]`` float64: per row the number of counted predictions and the three
        loss sums over them. ``predict[b, t]`` says whether the prediction made at ``t``
        counts; elsewhere the loss is ignored (a pad's loss may be anything)."""
        counted = predict.to(self.clean.device)
        sums = [counted.sum(dim=1).double()]
        for loss in (self.clean, self.spliced, self.zero):
            kept = torch.where(counted, loss.float(), torch.zeros((), device=loss.device))
            sums.append(kept.double().sum(dim=1))
        return torch.stack(sums)

    def totals(self, predict: torch.Tensor) -> dict[str, float]:
        """``{"n", "clean", "spliced", "zero"}`` summed over the counted predictions."""
        out: dict[str, float] = {"n": int(predict.sum())}
        for name in ("clean", "spliced", "zero"):
            out[name] = float(getattr(self, name)[predict].sum())
        return out


class SpliceRunner:
    """Per-token losses of one batch: clean, and with the hook's activation replaced.

    For residual-stream hooks the shared prefix runs once: the forward stops at the hook and
    each variant resumes from there (``start_at_layer``). Other sites use forward hooks.
    """

    def __init__(
        self,
        model: HookedTransformer,
        hook: HookPoint,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.hook = hook
        self.tokens = tokens
        self.attention_mask = attention_mask
        self.resume_layer: int | None = {
            "resid_post": hook.layer + 1,
            "resid_pre": hook.layer,
        }.get(hook.site)
        self.residual: torch.Tensor | None = None

    def clean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The activation at the hook ``[batch, pos, d]`` and the clean per-token loss."""
        if self.resume_layer is not None:
            self.residual = self.model(
                self.tokens, stop_at_layer=self.resume_layer, attention_mask=self.attention_mask
            )
            return self.residual, self._resume(self.residual)
        captured: dict[str, torch.Tensor] = {}

        def capture(act: torch.Tensor, hook: Any) -> torch.Tensor:
            captured["act"] = act.detach().clone()
            return act

        loss = self._run_with_hook(capture)
        return captured["act"], loss

    def losses(
        self, clean: torch.Tensor, mask: torch.Tensor, replacement: torch.Tensor
    ) -> SpliceLosses:
        """The three losses, given :meth:`clean`'s loss and the rows for the ``mask`` positions."""
        return SpliceLosses(
            clean=clean,
            spliced=self.with_replacement(mask, replacement),
            zero=self.with_replacement(mask, torch.zeros_like(replacement)),
        )

    def with_replacement(self, mask: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
        """Per-token loss with the activation at ``mask`` positions replaced."""
        if self.resume_layer is not None:
            assert self.residual is not None, "clean() runs first"
            residual = self.residual.clone()
            residual[mask] = replacement.to(residual.device, residual.dtype)
            return self._resume(residual)

        def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            act[mask] = replacement.to(act.device, act.dtype)
            return act

        return self._run_with_hook(replace)

    def _run_with_hook(self, hook_fn: Any) -> torch.Tensor:
        return self.model.run_with_hooks(
            self.tokens,
            return_type="loss",
            loss_per_token=True,
            attention_mask=self.attention_mask,
            fwd_hooks=[(self.hook.name, hook_fn)],
        )

    def _resume(self, residual: torch.Tensor) -> torch.Tensor:
        return self.model(
            residual,
            start_at_layer=self.resume_layer,
            tokens=self.tokens,
            attention_mask=self.attention_mask,
            return_type="loss",
            loss_per_token=True,
        )
