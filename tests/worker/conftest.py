"""Shared fixtures of the worker tests (real model, real SAELens; CPU).

- ``worker_cache_dir`` (session): the model cache (the dequantised default model lives in
  ``<dir>/models/smollm2-135m-instruct``). ``$SAEFLOW_CACHE_DIR`` if set, else
  ``~/.cache/saeflow``, so the one-off GGUF conversion (~30 s) is shared across test runs.
  ``model_cache_dir`` is the same directory under another name.
- ``default_model`` (session): the embedded SmolLM2-135M-Instruct as a HookedTransformer
  (eval mode, fp32, CPU), loaded once per session.
- ``small_sae_dir`` (session): a directory holding a small SAE trained by
  ``gpu_worker.training.run_training`` on the default corpus at
  ``blocks.15.hook_resid_post`` (TopK, k=16, 2x width = 1152 features, ~20k tokens):
  ``cfg.json``, ``sae_weights.safetensors``, ``metrics.json``, ``feature_data.jsonl`` and
  ``saeflow_sae.json``, exactly as a training job writes them to ``model/``. Extraction,
  serve and steering tests use it as a ready SAE. Treat it as read-only.
- ``small_train_config`` (session): the :class:`TrainConfig` that trained it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMALL_TRAIN_HYPERPARAMETERS = {
    "hook": "blocks.15.hook_resid_post",
    "architecture": "topk",
    "expansion_factor": "2",
    "k": "16",
    "lr": "0.001",
    "training_tokens": "20480",
    "batch_size_tokens": "512",
    "context_size": "64",
    "eval_tokens": "1024",
    "seed": "7",
}


@pytest.fixture(scope="session")
def worker_cache_dir() -> Path:
    configured = os.environ.get("SAEFLOW_CACHE_DIR")
    path = Path(configured) if configured else Path.home() / ".cache" / "saeflow"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def model_cache_dir(worker_cache_dir: Path) -> Path:
    return worker_cache_dir


@pytest.fixture(scope="session")
def default_model(worker_cache_dir: Path):
    from gpu_worker.models import load_language_model

    return load_language_model("default", cache_dir=worker_cache_dir, device="cpu")


@pytest.fixture(scope="session")
def small_train_config():
    from gpu_worker.config import TrainConfig

    return TrainConfig.from_hyperparameters(SMALL_TRAIN_HYPERPARAMETERS)


@pytest.fixture(scope="session")
def small_sae_dir(
    tmp_path_factory: pytest.TempPathFactory,
    default_model,
    small_train_config,
    worker_cache_dir: Path,
) -> Path:
    from gpu_worker.training import run_training

    base = tmp_path_factory.mktemp("small_sae")
    output = base / "model"
    run_training(
        small_train_config,
        model=default_model,
        corpus_dir=None,
        output_dir=output,
        checkpoint_dir=base / "checkpoints",
        cache_dir=worker_cache_dir,
    )
    return output
