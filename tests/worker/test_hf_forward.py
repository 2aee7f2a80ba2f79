"""Training's HF road to residual activations: the same numbers as TransformerLens, checked."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gpu_worker.activations import hook_activations
from gpu_worker.hf_forward import residual_reader
from saeflow.core.hooks import HookPoint


def _windows(n: int = 3, length: int = 24) -> torch.Tensor:
    tokens = torch.randint(100, 40_000, (n, length), generator=torch.Generator().manual_seed(3))
    tokens[:, 0] = 1  # BOS, as training windows start
    return tokens


@pytest.mark.parametrize("hook_name", ["blocks.15.hook_resid_post", "blocks.4.hook_resid_pre"])
def test_hf_reader_matches_transformer_lens(default_model: Any, hook_name: str) -> None:
    hook = HookPoint.parse(hook_name)
    tokens = _windows()
    reader = residual_reader(default_model, hook, tokens[:2])
    assert reader is not None, "the embedded model should take the HF road"
    try:
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, 0] = False
        fast = hook_activations(default_model, tokens, mask, hook, reader=reader)
        slow = hook_activations(default_model, tokens, mask, hook)
    finally:
        reader.close()
    relative = (fast - slow).norm(dim=-1) / slow.norm(dim=-1)
    assert fast.shape == slow.shape
    assert float(relative.max()) < 1e-3


def test_other_sites_and_foreign_models_stay_on_transformer_lens(default_model: Any) -> None:
    tokens = _windows(2)
    assert residual_reader(default_model, HookPoint.parse("blocks.3.hook_mlp_out"), tokens) is None

    class HubModel:  # no local HF weights recorded (no HF_DIR_ATTRIBUTE): TransformerLens only
        pass

    assert residual_reader(HubModel(), HookPoint.parse("blocks.3.hook_resid_post"), tokens) is None  # type: ignore[arg-type]


def test_a_reader_that_disagrees_is_refused(default_model: Any) -> None:
    hook = HookPoint.parse("blocks.15.hook_resid_post")
    assert residual_reader(default_model, hook, _windows(2), max_relative_error=0.0) is None
