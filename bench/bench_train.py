"""Training throughput: saeflow's trainer vs SAELens's runner, language model included.

Both sides start from the same raw text (the training split of the offline fortunes corpus,
same documents in the same order), use the same HookedTransformer object, hook, SAE
architecture (TopK, 8x width, k=32), lr, token budget, context size and batch size, and
exclude position 0 and special tokens. Each side is timed from raw text to a trained SAE
saved on disk: tokenisation, the language model's forward passes to the hook and the SAE
steps are all inside the time; loading the model is not. Both SAEs are then reloaded with
``SAE.load_from_disk`` and scored by the same code (:func:`gpu_worker.evaluation.evaluate_sae`)
on the same held-out windows.

``run(...) -> dict`` is called by the bench runner; ``python -m bench.bench_train`` prints
the dict as JSON (``--tokens N`` sets the budget).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench._train_baseline import train_with_runner
from gpu_worker.config import TrainConfig
from gpu_worker.corpus import (
    TokenWindows,
    collect_windows,
    iter_documents,
    special_token_ids,
    split_documents,
)
from gpu_worker.evaluation import evaluate_sae
from gpu_worker.training import train_sae
from saeflow.core.hooks import HookPoint

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = 100_000
DEFAULT_EVAL_TOKENS = 8_192
# The quality figures compared side by side (same evaluation code, same held-out tokens).
_QUALITY_KEYS = ("explained_variance", "mse", "l0", "dead_fraction", "ce_loss_recovered")


def run(
    *,
    training_tokens: int = DEFAULT_TOKENS,
    eval_tokens: int = DEFAULT_EVAL_TOKENS,
    model: Any | None = None,
    cache_dir: Path | None = None,
    device: str = "auto",
    hook: str = "blocks.15.hook_resid_post",
    seed: int = 42,
) -> dict[str, Any]:
    """Measure and return the ``train`` figures of bench/results.json (plus details)."""
    from gpu_worker.models import load_language_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = TrainConfig.from_hyperparameters(
        {
            "hook": hook,
            "training_tokens": str(training_tokens),
            "eval_tokens": str(eval_tokens),
            "seed": str(seed),
            "device": device,
        }
    )
    hook_point = config.hook_point
    if model is None:
        # The bench is an entry point: like the worker's CLI it honours SAEFLOW_CACHE_DIR.
        default_cache = os.environ.get("SAEFLOW_CACHE_DIR") or Path.home() / ".cache" / "saeflow"
        model = load_language_model(
            config.model, cache_dir=Path(cache_dir or default_cache), device=device
        )
    eval_windows = collect_windows(
        config.corpus,
        model.tokenizer,
        context_size=config.context_size,
        n_tokens=config.eval_tokens,
        split="heldout",
        seed=config.seed,
        repeat=False,
    )
    _warm_up(model, hook_point, config.context_size)

    with tempfile.TemporaryDirectory(prefix="saeflow-bench-train-") as tmp:
        base = _time_baseline(model, config, Path(tmp) / "baseline")
        ours = _time_ours(model, config, Path(tmp) / "ours")
        base_quality = _quality(model, base.pop("sae_dir"), hook_point, eval_windows)
        our_quality = _quality(model, ours.pop("sae_dir"), hook_point, eval_windows)

    tokens_per_s = ours["samples"] / ours["seconds"]
    baseline_tokens_per_s = base["samples"] / base["seconds"]
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "baseline_tokens_per_s": round(baseline_tokens_per_s, 1),
        "ratio": round(tokens_per_s / baseline_tokens_per_s, 2),
        "explained_variance": round(our_quality["explained_variance"], 4),
        "baseline_explained_variance": round(base_quality["explained_variance"], 4),
        "ev_difference": round(
            our_quality["explained_variance"] - base_quality["explained_variance"], 4
        ),
        "goal": "ratio >= 2 with explained_variance >= baseline - 0.02",
        "training_tokens": ours["samples"],
        "baseline_training_tokens": base["samples"],
        "seconds": round(ours["seconds"], 2),
        "baseline_seconds": round(base["seconds"], 2),
        "seconds_breakdown": ours["breakdown"],
        # CPU time of this process (all threads): on a shared machine it moves far less
        # with other people's load than wall time does, so it is the steadier comparison.
        "cpu_seconds": round(ours["cpu_seconds"], 2),
        "baseline_cpu_seconds": round(base["cpu_seconds"], 2),
        "cpu_time_ratio": round(
            (base["cpu_seconds"] / base["samples"]) / (ours["cpu_seconds"] / ours["samples"]), 2
        ),
        "quality": {k: _round(v) for k, v in our_quality.items()},
        "baseline_quality": {k: _round(v) for k, v in base_quality.items()},
        "eval_tokens": eval_windows.n_tokens,
        "config": {
            "model": config.model,
            "hook": hook_point.name,
            "architecture": f"{config.architecture} k={config.k}",
            "expansion_factor": config.expansion_factor,
            "lr": config.lr,
            "context_size": config.context_size,
            "batch_size_tokens": config.batch_size_tokens,
            "corpus": config.corpus,
            "seed": config.seed,
        },
        "baseline_settings": base["settings"],
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "order": "baseline first, then saeflow (same process, same model object)",
    }


def _time_baseline(model: Any, config: TrainConfig, out: Path) -> dict[str, Any]:
    """SAELens's runner from raw documents; reading the documents is inside the time."""
    started, cpu_started = time.perf_counter(), time.process_time()
    documents = list(split_documents(iter_documents(config.corpus, seed=config.seed), "train"))
    read_seconds = time.perf_counter() - started
    result = train_with_runner(
        model=model,
        documents=documents,
        hook_name=config.hook_point.name,
        d_in=int(model.cfg.d_model),
        expansion_factor=config.expansion_factor,
        k=config.k,
        lr=config.lr,
        training_tokens=config.training_tokens,
        context_size=config.context_size,
        batch_size_tokens=config.batch_size_tokens,
        exclude_token_ids=special_token_ids(model.tokenizer),
        seed=config.seed,
        device=config.device,
        output_dir=out,
    )
    return {
        "sae_dir": result.sae_dir,
        "seconds": read_seconds + result.seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "samples": result.samples,
        "settings": result.settings,
    }


def _time_ours(model: Any, config: TrainConfig, out: Path) -> dict[str, Any]:
    """saeflow's path as run_training takes it: windows from raw text, then train_sae."""
    started, cpu_started = time.perf_counter(), time.process_time()
    windows = collect_windows(
        config.corpus,
        model.tokenizer,
        context_size=config.context_size,
        # As run_training: one batch of slack, SAETrainer's last step may pass the budget.
        n_tokens=config.training_tokens + config.batch_size_tokens,
        split="train",
        seed=config.seed,
    )
    tokenize_seconds = time.perf_counter() - started
    result = train_sae(config, model=model, windows=windows, checkpoint_dir=out)
    seconds = time.perf_counter() - started
    return {
        "sae_dir": result.sae_dir,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "samples": result.samples,
        "breakdown": {
            "tokenize": round(tokenize_seconds, 2),
            "lm_activations": round(result.activation_seconds, 2),
            "sae_steps": round(result.train_seconds, 2),
            "other": round(
                seconds - tokenize_seconds - result.activation_seconds - result.train_seconds, 2
            ),
        },
    }


def _quality(model: Any, sae_dir: Path, hook: HookPoint, windows: TokenWindows) -> dict[str, float]:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device=str(model.cfg.device))
    metrics = evaluate_sae(model, sae, hook, windows).metrics
    return {key: float(metrics[key]) for key in _QUALITY_KEYS}


@torch.inference_mode()
def _warm_up(model: Any, hook: HookPoint, context_size: int) -> None:
    """One forward pass first, so neither side pays for first-call allocations."""
    tokens = torch.randint(100, 1000, (4, context_size), device=model.cfg.device)
    model.run_with_cache(tokens, stop_at_layer=hook.stop_at_layer, names_filter=hook.name)


def _round(value: float) -> float:
    return round(value, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__)
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    parser.add_argument("--eval-tokens", type=int, default=DEFAULT_EVAL_TOKENS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print(json.dumps(run(training_tokens=args.tokens, eval_tokens=args.eval_tokens), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
