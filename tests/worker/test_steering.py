"""Steering on the real default model with a real SAELens SAE."""

from __future__ import annotations

from typing import Any

import pytest

from gpu_worker.models import load_sae
from gpu_worker.steering import SamplingSettings, Steer, Steerer
from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint

pytestmark = pytest.mark.slow

PROMPT = "Should I travel by plane or by"


@pytest.fixture(scope="module")
def steerer(default_model: Any, small_sae_dir: Any) -> Steerer:
    sae = load_sae(small_sae_dir, device="cpu")
    return Steerer(default_model, sae, HookPoint.parse(sae.cfg.metadata.hook_name))


def test_steering_changes_the_output_with_a_fixed_seed(steerer: Steerer) -> None:
    sampling = SamplingSettings(max_new_tokens=8, seed=7)  # the seed notebook's T and penalty
    assert (sampling.temperature, sampling.freq_penalty) == (0.5, 2.0)
    result = steerer.steer(PROMPT, feature=3, strengths=[0.0, 200.0], sampling=sampling)
    assert result.baseline.strip()
    # Strength 0 adds nothing and the seed is fixed: a second sampling run gives the
    # baseline's exact text, so the steered difference is the steering's doing.
    assert result.steered[0.0] == result.baseline
    assert result.steered[200.0] != result.baseline
    # The steering hook is gone afterwards.
    assert steerer.generate(PROMPT, sampling) == result.baseline


def test_unknown_feature_is_a_clear_error(steerer: Steerer) -> None:
    with pytest.raises(InvalidRunOptions, match="does not exist"):
        steerer.steer(PROMPT, feature=steerer.d_sae, strengths=[10.0])
    with pytest.raises(InvalidRunOptions, match="max_new_tokens"):
        SamplingSettings(max_new_tokens=0)


def test_the_batched_sampler_matches_transformer_lens_greedy_and_batches_freely(
    steerer: Steerer, default_model: Any
) -> None:
    """Our KV-cache loop against TransformerLens's own generate (greedy: no randomness),
    and a row's text the same whatever else shares its batch."""
    import torch

    tokens = default_model.to_tokens(PROMPT, prepend_bos=True)
    with torch.inference_mode():
        reference = default_model.generate(
            tokens,
            max_new_tokens=12,
            temperature=0.0,
            do_sample=False,
            use_past_kv_cache=True,
            stop_at_eos=True,
            return_type="tokens",
            verbose=False,
        )
    expected = default_model.tokenizer.decode(
        reference[0, tokens.shape[1] :].tolist(), skip_special_tokens=True
    )
    assert (
        steerer.generate(PROMPT, SamplingSettings(max_new_tokens=12, temperature=0.0)) == expected
    )

    sampling = SamplingSettings(max_new_tokens=8, seed=3)
    steers = [Steer(3, 200.0), None, Steer(5, -100.0)]
    together = steerer.generate_many(PROMPT, sampling, steers)
    alone = [steerer.generate_many(PROMPT, sampling, [steer])[0] for steer in steers]
    assert together == alone
    assert together[0] != together[1]
