"""Steering: generate with ``strength * W_dec[feature]`` added at the hook.

As in the seed's steering notebook, the feature's decoder direction is added at every
position of the hooked activation, and a baseline (nothing added) is sampled with the
same seed so that any difference comes from the steering, not from the sampling. The
baseline and every steered variant of one prompt are generated as one batch with one
shared sampling noise (``Steerer.generate_many``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling for steered generation; defaults are the seed notebook's."""

    max_new_tokens: int = 50
    temperature: float = 0.5
    freq_penalty: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidRunOptions(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidRunOptions(f"temperature must be >= 0, got {self.temperature}")
        if self.seed < 0:
            raise InvalidRunOptions(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Steer:
    """Add ``strength * W_dec[feature]`` at the hook."""

    feature: int
    strength: float


@dataclass(frozen=True)
class SteeringResult:
    """The baseline continuation and one steered continuation per strength."""

    prompt: str
    feature: int
    baseline: str
    steered: dict[float, str] = field(default_factory=dict)


class Steerer:
    """Generates from a HookedTransformer with an SAE feature's decoder direction added."""

    def __init__(self, model: Any, sae: Any, hook: HookPoint) -> None:
        hook.check_layers(model.cfg.n_layers)
        self.model = model
        self.sae = sae
        self.hook = hook

    @property
    def d_sae(self) -> int:
        return int(self.sae.W_dec.shape[0])

    def direction(self, feature: int) -> torch.Tensor:
        """The feature's decoder row, on the model's device and dtype."""
        if (
            isinstance(feature, bool)
            or not isinstance(feature, int)
            or not 0 <= feature < self.d_sae
        ):
            raise InvalidRunOptions(
                f"steering feature {feature!r} does not exist; the SAE has features 0..{self.d_sae - 1}"
            )
        residual_dtype = self.model.W_U.dtype
        return self.sae.W_dec[feature].detach().to(self.model.cfg.device, residual_dtype)

    def generate(
        self,
        prompt: str,
        sampling: SamplingSettings,
        *,
        feature: int | None = None,
        strength: float = 0.0,
    ) -> str:
        """The continuation of ``prompt`` (prompt text not included)."""
        steer = Steer(feature, strength) if feature is not None and strength != 0.0 else None
        return self.generate_many(prompt, sampling, [steer])[0]

    def generate_many(
        self, prompt: str, sampling: SamplingSettings, steers: Sequence[Steer | None]
    ) -> list[str]:
        """One continuation of ``prompt`` per entry of ``steers`` (None: unsteered), together.

        The rows share one batch (the same prompt: no padding) and one sampling noise: at
        every step one Gumbel noise vector, from a generator seeded with ``sampling.seed``,
        is added to every row's scores (Gumbel-max sampling from softmax(scores / T)). A
        row's text so depends on its own steering only, not on the other rows or the batch
        size (up to float rounding), and rows whose logits agree pick the same token: the
        differences from the baseline are the steering's doing, not the sampling's."""
        if not steers:
            return []
        vectors = self._vectors(steers)
        hooks = []
        if bool(vectors.any()):

            def add_direction(activation: torch.Tensor, hook: Any) -> torch.Tensor:
                return activation + vectors[:, None, :].to(activation.dtype)

            hooks.append((self.hook.name, add_direction))
        prompt_tokens = self.model.to_tokens(prompt, prepend_bos=True)
        tokens = prompt_tokens.expand(len(steers), -1).contiguous()
        with torch.inference_mode(), self.model.hooks(fwd_hooks=hooks):
            new_tokens = self._sample(tokens, sampling)
        return [self._decode(row) for row in new_tokens]

    def _vectors(self, steers: Sequence[Steer | None]) -> torch.Tensor:
        """Per row, ``strength * W_dec[feature]`` (zeros for an unsteered row)."""
        vectors = torch.zeros(
            len(steers),
            int(self.model.cfg.d_model),
            dtype=self.model.W_U.dtype,
            device=self.model.cfg.device,
        )
        for row, steer in enumerate(steers):
            if steer is not None and steer.strength != 0.0:
                vectors[row] = steer.strength * self.direction(steer.feature)
        return vectors

    def _sample(self, tokens: torch.Tensor, sampling: SamplingSettings) -> torch.Tensor:
        """``[rows, new]`` sampled tokens; a finished row is padded with EOS."""
        model, rows = self.model, tokens.shape[0]
        device = tokens.device
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, rows)
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
        eos = model.tokenizer.eos_token_id
        # Every position is real (one prompt, no padding): an explicit all-ones mask keeps
        # TransformerLens from guessing padding from the pad token's id.
        logits = model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))
        # Token counts for the frequency penalty, kept only when sampling reads them.
        counts = None
        if sampling.temperature > 0 and sampling.freq_penalty:
            counts = torch.zeros(rows, logits.shape[-1], device=device)
            counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=counts.dtype))
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        sampled: list[torch.Tensor] = []
        for _ in range(sampling.max_new_tokens):
            scores = logits[:, -1, :].float()
            if sampling.temperature > 0:
                # As TransformerLens's sample_logits: temperature, then the frequency penalty.
                scores = scores / sampling.temperature
                if counts is not None:
                    scores = scores - sampling.freq_penalty * counts
                uniform = torch.rand(scores.shape[-1], generator=generator, device=device)
                gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
                scores = scores + gumbel
            next_tokens = scores.argmax(dim=-1)
            if eos is not None:
                next_tokens = torch.where(finished, torch.full_like(next_tokens, eos), next_tokens)
                finished |= next_tokens == eos
            sampled.append(next_tokens)
            if bool(finished.all()):
                break
            if counts is not None:
                counts[torch.arange(rows, device=device), next_tokens] += 1
            step = next_tokens[:, None]
            logits = model(step, past_kv_cache=cache, attention_mask=torch.ones_like(step))
        return torch.stack(sampled, dim=1)  # max_new_tokens >= 1: never empty

    def _decode(self, new_tokens: torch.Tensor) -> str:
        eos = self.model.tokenizer.eos_token_id
        if eos is not None:
            # Finished rows are padded with EOS; keep only what was said.
            positions = (new_tokens == eos).nonzero()
            if len(positions):
                new_tokens = new_tokens[: int(positions[0, 0])]
        return self.model.tokenizer.decode(new_tokens.tolist(), skip_special_tokens=True)

    def steer(
        self,
        prompt: str,
        feature: int,
        strengths: Sequence[float],
        sampling: SamplingSettings | None = None,
    ) -> SteeringResult:
        """Baseline and one steered generation per strength, all with the same seed."""
        sampling = sampling or SamplingSettings()
        self.direction(feature)  # fail before any generation on a bad feature
        texts = self.generate_many(
            prompt, sampling, [None, *(Steer(feature, float(s)) for s in strengths)]
        )
        steered = {float(s): text for s, text in zip(strengths, texts[1:], strict=True)}
        return SteeringResult(prompt=prompt, feature=feature, baseline=texts[0], steered=steered)
