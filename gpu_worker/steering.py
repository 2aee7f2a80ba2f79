"""Steering: generate with ``strength * W_dec[feature]`` added at the hook.

As in the seed's steering notebook, the feature's decoder direction is added at every
position of the hooked activation, and a baseline (nothing added) is sampled with the
same seed so that any difference comes from the steering, not from the sampling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

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
        hooks = []
        if feature is not None and strength != 0.0:
            vector = strength * self.direction(feature)

            def add_direction(activation: torch.Tensor, hook: Any) -> torch.Tensor:
                return activation + vector.to(activation.dtype)

            hooks.append((self.hook.name, add_direction))
        tokens = self.model.to_tokens(prompt, prepend_bos=True)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        # fork_rng: a fixed seed per generation without disturbing anyone else's RNG state.
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(sampling.seed)
            with self.model.hooks(fwd_hooks=hooks):
                output = self.model.generate(
                    tokens,
                    max_new_tokens=sampling.max_new_tokens,
                    temperature=sampling.temperature,
                    do_sample=sampling.temperature > 0,
                    freq_penalty=sampling.freq_penalty,
                    use_past_kv_cache=True,
                    stop_at_eos=True,
                    return_type="tokens",
                    verbose=False,
                )
        new_tokens = output[0, tokens.shape[1] :]
        eos = self.model.tokenizer.eos_token_id
        if eos is not None:
            # Generation pads finished sequences with EOS; keep only what was said.
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
        baseline = self.generate(prompt, sampling)
        steered = {
            float(strength): self.generate(prompt, sampling, feature=feature, strength=strength)
            for strength in strengths
        }
        return SteeringResult(prompt=prompt, feature=feature, baseline=baseline, steered=steered)
