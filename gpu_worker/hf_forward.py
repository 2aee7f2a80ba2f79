"""A faster road to residual-stream activations: the Hugging Face model itself.

TransformerLens re-implements the forward pass with a hook point at every site, which costs
time on a CPU (measured on the default model, 32 x 128 tokens to layer 15: ~920 tokens/s
through TransformerLens, ~1,090 through the HF model with sdpa attention). For the residual
stream before or after a decoder layer both compute the same numbers, so training reads its
activations from the HF model, stopped right after the layer by a forward hook.

"The same numbers" is checked, not assumed: :func:`residual_reader` runs a probe batch
through both and falls back to TransformerLens (returns None) unless every token's
activation agrees to ``MAX_RELATIVE_ERROR``. Evaluation, extraction and steering stay on
TransformerLens.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

# Measured: 3e-4 at worst on one token (float32 summation order), 1e-6 on average.
MAX_RELATIVE_ERROR = 1e-3
SUPPORTED_SITES = ("resid_pre", "resid_post")
# The models module records where a model's HF weights are on the model object.
HF_DIR_ATTRIBUTE = "saeflow_hf_dir"


class _Stop(Exception):
    """Raised by the forward hook: nothing after the hooked layer is computed."""


class HfResidualReader:
    """Residual-stream activations at ``hook`` from a Hugging Face decoder model."""

    def __init__(self, hf_model: Any, hook: HookPoint) -> None:
        if hook.site not in SUPPORTED_SITES:
            raise ValueError(f"HfResidualReader reads {SUPPORTED_SITES}, not {hook.site}")
        self.hf_model = hf_model
        self.hook = hook
        layer = hf_model.model.layers[hook.layer]
        self._captured: dict[str, torch.Tensor] = {}
        if hook.site == "resid_post":
            self._handle = layer.register_forward_hook(self._after_layer)
        else:
            self._handle = layer.register_forward_pre_hook(self._before_layer, with_kwargs=True)

    def _after_layer(self, _module: Any, _args: Any, output: Any) -> None:
        self._captured["x"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    def _before_layer(self, _module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self._captured["x"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, pos, d_model)`` activations for unpadded token windows."""
        self._captured.clear()
        with contextlib.suppress(_Stop):
            self.hf_model.model(input_ids=tokens, use_cache=False)
        return self._captured.pop("x")

    def close(self) -> None:
        self._handle.remove()


def residual_reader(
    model: HookedTransformer,
    hook: HookPoint,
    probe: torch.Tensor,
    *,
    max_relative_error: float = MAX_RELATIVE_ERROR,
) -> HfResidualReader | None:
    """A checked HF reader for ``model`` at ``hook``, or None (then use TransformerLens).

    None when the site is not a residual stream, the model has no local HF weights recorded
    (hub models), the HF model is not a decoder with ``model.layers``, or its activations on
    ``probe`` (a few token windows) differ from TransformerLens's.
    """
    hf_dir = getattr(model, HF_DIR_ATTRIBUTE, None)
    if hook.site not in SUPPORTED_SITES or not hf_dir:
        return None
    try:
        reader = HfResidualReader(_load_hf_model(Path(hf_dir), model), hook)
    except (AttributeError, IndexError, OSError, ValueError) as exc:
        logger.info("HF forward not available (%s); using TransformerLens", exc)
        return None
    probe = probe.to(model.cfg.device)
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            probe, stop_at_layer=hook.stop_at_layer, names_filter=hook.name
        )
        expected = cache[hook.name].float()
        got = reader(probe).float()
    error = float(((got - expected).norm(dim=-1) / expected.norm(dim=-1).clamp(min=1e-6)).max())
    if got.shape != expected.shape or not error <= max_relative_error:
        logger.warning(
            "the HF forward differs from TransformerLens at %s (relative error %.2g); "
            "using TransformerLens",
            hook.name,
            error,
        )
        reader.close()
        return None
    logger.info("reading %s through the HF model (relative error %.2g)", hook.name, error)
    return reader


def _load_hf_model(hf_dir: Path, model: HookedTransformer) -> Any:
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=model.cfg.dtype, local_files_only=True
    )
    return hf_model.to(model.cfg.device).eval()
