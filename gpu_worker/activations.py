"""Activations at the hook for training: the LM run once, to the hooked layer only.

:class:`ActivationPlan` cuts the training windows into chunks that fit in memory;
:class:`ActivationBatches` serves shuffled batches from them to SAELens's trainer, can
resume at any sample, and asks for checkpoints at batch boundaries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.corpus import TokenWindows
from gpu_worker.stopping import StopFlag, TrainingInterrupted
from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

# Tokens per LM forward pass: CPU matmuls are near their peak at 4k tokens; a GPU wants more.
LM_BATCH_TOKENS = {"cpu": 4096, "cuda": 32768}
CHECKPOINT_EVERY_STEPS = 50


@torch.inference_mode()
def hook_activations(
    model: HookedTransformer,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    hook: HookPoint,
    *,
    batch_tokens: int | None = None,
    stop: StopFlag | None = None,
    on_batch: Callable[[int], None] | None = None,
    reader: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Activations at ``hook`` for the masked positions of ``tokens``: ``[n_masked, d_in]``.

    ``reader`` (tokens -> activations), when given, replaces TransformerLens's forward:
    :func:`gpu_worker.hf_forward.residual_reader` gives a checked, faster one.

    The forward pass stops right after the hooked layer. On CUDA it runs under bf16
    autocast (as SAELens's ``autocast_lm``): the language model is most of training's cost
    and bf16 doubles its speed there; the activations are handed on as fp32.
    """
    device = torch.device(model.cfg.device)
    if batch_tokens is None:
        batch_tokens = LM_BATCH_TOKENS.get(device.type, LM_BATCH_TOKENS["cpu"])
    windows_per_batch = max(1, batch_tokens // tokens.shape[1])
    parts: list[torch.Tensor] = []
    for start in range(0, tokens.shape[0], windows_per_batch):
        if stop is not None and stop.is_set:
            raise TrainingInterrupted(
                f"{stop.signal_name} while reading activations (no SAE step yet)"
            )
        batch = tokens[start : start + windows_per_batch].to(device)
        with _lm_autocast(device):
            if reader is not None:
                acts = reader(batch)
            else:
                _, cache = model.run_with_cache(
                    batch, stop_at_layer=hook.stop_at_layer, names_filter=hook.name
                )
                acts = cache[hook.name]
        parts.append(acts[mask[start : start + windows_per_batch].to(device)].float())
        if on_batch is not None:
            on_batch(int(mask[start : start + windows_per_batch].sum()))
    return torch.cat(parts) if parts else torch.empty(0, model.cfg.d_model)


def _lm_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class ActivationPlan:
    """The training windows cut into chunks; chunk ``c`` holds samples ``[starts[c], starts[c+1])``."""

    windows: TokenWindows
    chunk_windows: int
    starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        counts = self.windows.mask.sum(dim=1)
        self.starts = [0]
        for begin in range(0, counts.shape[0], self.chunk_windows):
            self.starts.append(
                self.starts[-1] + int(counts[begin : begin + self.chunk_windows].sum())
            )

    @property
    def n_chunks(self) -> int:
        return len(self.starts) - 1

    @property
    def n_samples(self) -> int:
        return self.starts[-1]

    def chunk_of(self, sample: int) -> int:
        for index in range(self.n_chunks):
            if sample < self.starts[index + 1]:
                return index
        return self.n_chunks - 1

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(index * self.chunk_windows, (index + 1) * self.chunk_windows)
        return self.windows.tokens[rows], self.windows.mask[rows]


class ActivationBatches:
    """Shuffled activation batches for SAETrainer, resumable at any sample.

    Every ``checkpoint_every`` batches, and when a stop was requested, the iterator asks
    ``on_boundary`` to checkpoint before handing out the next batch: at that point the
    trainer has finished its previous step, so the saved state is consistent.
    """

    def __init__(
        self,
        *,
        plan: ActivationPlan,
        activations_for: Callable[[int], torch.Tensor],
        batch_size: int,
        seed: int,
        start_sample: int = 0,
        on_boundary: Callable[[int, bool], None] | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY_STEPS,
        stop: StopFlag | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.plan = plan
        self.activations_for = activations_for
        self.batch_size = batch_size
        self.seed = seed
        self.position = start_sample
        self.on_boundary = on_boundary
        self.checkpoint_every = checkpoint_every
        self.stop = stop
        self.on_progress = on_progress
        self.batches_served = 0
        self._chunk_index = -1
        self._chunk: torch.Tensor | None = None

    def __iter__(self) -> ActivationBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.on_boundary is not None:
            if self.stop is not None and self.stop.is_set:
                self.on_boundary(self.position, True)
            elif self.batches_served and self.batches_served % self.checkpoint_every == 0:
                self.on_boundary(self.position, False)
        if self.on_progress is not None and self.batches_served:
            self.on_progress(self.position)  # samples trained so far
        rows: list[torch.Tensor] = []
        needed = self.batch_size
        while needed:
            # Past the last sample (the final partial batch), wrap around to the start.
            sample = self.position % self.plan.n_samples
            chunk = self.load_chunk(self.plan.chunk_of(sample))
            offset = sample - self.plan.starts[self._chunk_index]
            take = min(needed, chunk.shape[0] - offset)
            rows.append(chunk[offset : offset + take])
            self.position += take
            needed -= take
        self.batches_served += 1
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def load_chunk(self, index: int) -> torch.Tensor:
        """Chunk ``index`` shuffled (kept until another chunk is needed)."""
        if index != self._chunk_index:
            self._chunk = None  # free the previous chunk before building the next
            activations = self.activations_for(index)
            generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
            order = torch.randperm(activations.shape[0], generator=generator)
            self._chunk = activations[order.to(activations.device)]
            self._chunk_index = index
        assert self._chunk is not None
        return self._chunk
