"""The training baseline: SAELens's ``LanguageModelSAETrainingRunner`` with the model in the loop.

The runner gets the same HookedTransformer object (``override_model``) and the same training
documents as a ``datasets.Dataset`` of raw text (``override_dataset``), so it tokenises,
runs the language model to the hook and trains in its own interleaved loop. Everything not
shared with saeflow's run is left at SAELens's defaults, except what running offline, on
CPU and without side effects needs; :data:`CHANGED_SETTINGS` says which and why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

# Settings the baseline sets away from SAELens's defaults (besides the shared run settings).
CHANGED_SETTINGS = {
    "logger.log_to_wandb": "False (offline; also skips the in-training evals, which run "
    "only when logging to wandb)",
    "checkpoint_path": "None (no checkpoints are written with n_checkpoints=0 anyway)",
    "output_path": "a temporary folder instead of ./output (the final SAE, reloaded for EV)",
    "device": "cpu, or cuda when present (the machine's device)",
    "exclude_special_tokens": "the tokenizer's special ids (as saeflow's statistics mask)",
    "seqpos_slice": "(1, None): position 0 excluded, as in saeflow",
    "verbose": "False (log lines only)",
    "n_batches_in_buffer / store_batch_size_prompts": "defaults kept (20 / 32): the buffer "
    "is 20 x context tokens and one LM batch is 32 x context tokens, already CPU-sized",
}


@dataclass
class BaselineRun:
    """The baseline's trained SAE (inference format on disk) and its timings."""

    sae_dir: Path
    seconds: float
    samples: int
    settings: dict[str, Any]


def train_with_runner(
    *,
    model: HookedTransformer,
    documents: Sequence[str],
    hook_name: str,
    d_in: int,
    expansion_factor: int,
    k: int,
    lr: float,
    training_tokens: int,
    context_size: int,
    batch_size_tokens: int,
    exclude_token_ids: list[int],
    seed: int,
    device: str,
    output_dir: Path,
) -> BaselineRun:
    """Train with SAELens's runner from raw text; the time covers dataset to saved SAE."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
    from sae_lens.config import LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    torch.manual_seed(seed)  # the runner seeds nothing itself: SAE init follows this
    started = time.perf_counter()
    dataset = Dataset.from_dict({"text": list(documents)})
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_in * expansion_factor, k=k, dtype="float32", device=device
        ),
        model_name=str(getattr(model.cfg, "model_name", "model")),
        hook_name=hook_name,
        is_dataset_tokenized=False,
        context_size=context_size,
        training_tokens=training_tokens,
        train_batch_size_tokens=batch_size_tokens,
        lr=lr,
        device=device,
        seed=seed,
        exclude_special_tokens=exclude_token_ids,
        seqpos_slice=(1, None),
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(output_dir),
        verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
    trained = runner.run()
    seconds = time.perf_counter() - started
    del trained
    settings = {
        "runner": "sae_lens.LanguageModelSAETrainingRunner",
        "sae": "TopKTrainingSAEConfig defaults (normalize_activations='none', "
        "aux_loss_coefficient=1.0, rescale_acts_by_decoder_norm=True, decoder_init_norm=0.1)",
        "lr_schedule": f"{cfg.lr_scheduler_name}, warm-up {cfg.lr_warm_up_steps} steps",
        "dead_feature_window": cfg.dead_feature_window,
        "n_batches_in_buffer": cfg.n_batches_in_buffer,
        "store_batch_size_prompts": cfg.store_batch_size_prompts,
        "sequence_separator_token": cfg.sequence_separator_token,
        "changed": CHANGED_SETTINGS,
    }
    # SAETrainer steps while fewer than the budget's samples are seen: whole batches.
    samples = math.ceil(training_tokens / batch_size_tokens) * batch_size_tokens
    return BaselineRun(sae_dir=output_dir, seconds=seconds, samples=samples, settings=settings)
