"""Train an SAE with SAELens: activations first, then SAELens's SAETrainer on shuffled batches.

Fast path: the language model runs once over the token budget, only up to the hooked layer
(``stop_at_layer``, inference mode), and the activations (position 0 and special tokens
excluded) are kept in memory in chunks. SAELens's :class:`SAETrainer` then trains the
SAELens training SAE class on shuffled batches from :class:`ActivationBatches`; the trainer
does no I/O: it gets the iterator and a checkpoint callback. This avoids SAELens's
``LanguageModelSAETrainingRunner`` running the full model in the training loop.

Checkpoints (SAELens's own format plus a ``saeflow_checkpoint.json`` marker, written last)
go to ``checkpoint_dir/step-<samples>/`` every few steps; a new run with the same settings
resumes from the latest. SIGTERM/SIGINT set a flag; at the next batch boundary a checkpoint
is written and :class:`TrainingInterrupted` raised, so the caller writes the failure file
and exits non-zero (SageMaker stops and Spot interruptions send SIGTERM).

The parts live beside this module: :mod:`gpu_worker.activations` (the LM to the hook,
batches), :mod:`gpu_worker.sae_setup` (SAE and trainer settings), :mod:`gpu_worker.checkpoints`
and :mod:`gpu_worker.stopping` (signals). :func:`run_training` is the entry point: train, evaluate on held-out text, write the SAE
(SAELens format), ``metrics.json``, ``feature_data.jsonl`` and ``saeflow_sae.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.activations import (
    CHECKPOINT_EVERY_STEPS,
    ActivationBatches,
    ActivationPlan,
    hook_activations,
)
from gpu_worker.checkpoints import (
    CHECKPOINT_MARKER,
    FINAL_CHECKPOINT,
    config_fingerprint,
    latest_checkpoint,
    prune_checkpoints,
    write_marker,
)
from gpu_worker.config import TrainConfig
from gpu_worker.corpus import TokenWindows, collect_windows
from gpu_worker.hf_forward import residual_reader
from gpu_worker.models import SAE_REF_FILENAME, canonical_model_id
from gpu_worker.sae_setup import build_training_sae, norm_scaling_factor, trainer_config
from gpu_worker.stopping import StopFlag, TrainingInterrupted, stop_on_signals
from saeflow.core.contract import SaeManifest
from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from sae_lens.training.sae_trainer import SAETrainer
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

METRICS_FILENAME = "metrics.json"
FEATURE_DATA_FILENAME = "feature_data.jsonl"
# Activations kept in memory at once (fp32 rows); one chunk for CPU-sized runs.
MAX_CHUNK_BYTES = 2 * 1024**3


# --- the training stage -----------------------------------------------------------------


@dataclass
class TrainingResult:
    """The trained inference SAE directory and what training measured."""

    sae_dir: Path
    never_fired_fraction: float
    train_seconds: float
    activation_seconds: float
    samples: int


def train_sae(
    config: TrainConfig,
    *,
    model: HookedTransformer,
    windows: TokenWindows,
    checkpoint_dir: Path,
    progress: ProgressFn | None = None,
    stop: StopFlag | None = None,
    checkpoint_every_steps: int = CHECKPOINT_EVERY_STEPS,
) -> TrainingResult:
    """Train (or resume, or reuse a finished run in ``checkpoint_dir``); return the SAE dir."""
    from sae_lens.training.sae_trainer import SAETrainer

    hook = config.hook_point
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = config_fingerprint(config)
    resume = latest_checkpoint(checkpoint_dir, fingerprint)
    if resume is not None and resume.name == FINAL_CHECKPOINT:
        info = json.loads((resume / CHECKPOINT_MARKER).read_text())
        logger.info("training already finished in %s; reusing it", resume)
        return TrainingResult(
            sae_dir=resume,
            never_fired_fraction=float(info["never_fired_fraction"]),
            train_seconds=float(info["train_seconds"]),
            activation_seconds=float(info.get("activation_seconds", 0.0)),
            samples=int(info["samples"]),
        )

    device = str(model.cfg.device)
    d_in = _hook_width(model, hook)
    sae = build_training_sae(config, d_in, device)
    bytes_per_row = d_in * 4
    counts = windows.mask.sum(dim=1).float().mean().item()
    chunk_windows = max(1, int(MAX_CHUNK_BYTES // bytes_per_row // max(counts, 1.0)))
    plan = ActivationPlan(windows=windows, chunk_windows=chunk_windows)
    timing = {"activations": 0.0}
    total = config.training_tokens

    readers: dict[str, Any] = {}

    def activations_for(index: int) -> torch.Tensor:
        tokens, mask = plan.chunk(index)
        if "reader" not in readers:  # built on first use: a finished run needs none
            readers["reader"] = residual_reader(model, hook, tokens[:2])
        started = time.perf_counter()
        done = plan.starts[index]

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("activations", min(done, total), total)

        acts = hook_activations(
            model, tokens, mask, hook, stop=stop, on_batch=on_batch, reader=readers["reader"]
        )
        timing["activations"] += time.perf_counter() - started
        return acts

    trainer_holder: dict[str, SAETrainer] = {}

    def on_boundary(samples: int, stopping: bool) -> None:
        trainer = trainer_holder["trainer"]
        path = _save_step_checkpoint(trainer, checkpoint_dir, fingerprint, samples)
        if stopping:
            assert stop is not None
            raise TrainingInterrupted(
                f"{stop.signal_name} after {samples} of {total} training tokens; "
                f"checkpoint written to {path}; a new run with the same settings resumes there"
            )

    def on_progress(samples: int) -> None:
        if progress is not None:
            progress("training", min(samples, total), total)

    start_sample = 0
    if resume is not None:
        start_sample = int(json.loads((resume / CHECKPOINT_MARKER).read_text())["samples"])
        logger.info("resuming from %s at %d tokens", resume, start_sample)

    batches = ActivationBatches(
        plan=plan,
        activations_for=activations_for,
        batch_size=config.batch_size_tokens,
        seed=config.seed,
        start_sample=start_sample,
        on_boundary=on_boundary,
        checkpoint_every=checkpoint_every_steps,
        stop=stop,
        on_progress=on_progress,
    )
    trainer = SAETrainer(
        cfg=trainer_config(config, device, checkpoint_dir),
        sae=sae,
        data_provider=batches,
    )
    trainer_holder["trainer"] = trainer
    if resume is not None:
        trainer.load_trainer_state(resume)
        sae.load_weights_from_checkpoint(resume)
    else:
        # The scaler needs activations before step one; the chunk stays loaded for it.
        first_chunk = batches.load_chunk(plan.chunk_of(0))
        scale = norm_scaling_factor(first_chunk, d_in)
        trainer.activation_scaler.scaling_factor = scale
        # Start the decoder bias at the data mean: a short run cannot afford to learn the
        # residual stream's large mean component from zero.
        with torch.no_grad():
            sae.b_dec.copy_(first_chunk[:65_536].mean(dim=0).to(sae.b_dec.device) * scale)

    started = time.perf_counter()
    activation_seconds_before = timing["activations"]
    with _quiet_progress_bars():
        trained = trainer.fit()
    reader = readers.pop("reader", None)
    if reader is not None:
        reader.close()  # and the HF model goes with it
    # SAE steps only: chunks read inside fit() count as activation time.
    elapsed = time.perf_counter() - started - (timing["activations"] - activation_seconds_before)
    never_fired = (trainer.n_forward_passes_since_fired >= trainer.n_training_steps).float()
    final_dir = checkpoint_dir / FINAL_CHECKPOINT
    shutil.rmtree(final_dir, ignore_errors=True)
    trained.save_inference_model(str(final_dir))
    result = TrainingResult(
        sae_dir=final_dir,
        never_fired_fraction=float(never_fired.mean().item()),
        train_seconds=elapsed,
        activation_seconds=timing["activations"],
        samples=trainer.n_training_samples,
    )
    write_marker(
        final_dir,
        fingerprint,
        trainer.n_training_samples,
        {
            "never_fired_fraction": result.never_fired_fraction,
            "train_seconds": result.train_seconds,
            "activation_seconds": result.activation_seconds,
        },
    )
    for path in checkpoint_dir.glob("step-*"):
        shutil.rmtree(path, ignore_errors=True)
    if progress is not None:
        progress("training", total, total)
    return result


def _save_step_checkpoint(
    trainer: SAETrainer, checkpoint_dir: Path, fingerprint: str, samples: int
) -> Path:
    name = f"step-{samples}"
    trainer.save_checkpoint(checkpoint_name=name)
    path = checkpoint_dir / name
    write_marker(path, fingerprint, samples, {"steps": trainer.n_training_steps})
    prune_checkpoints(checkpoint_dir, keep=path)
    logger.info("checkpoint %s", path)
    return path


def _hook_width(model: HookedTransformer, hook: HookPoint) -> int:
    hook.check_layers(model.cfg.n_layers)
    if hook.name not in model.hook_dict:
        raise InvalidRunOptions(f"the model has no hook {hook.name}")
    with torch.inference_mode():
        probe = torch.tensor([[model.tokenizer.bos_token_id or 0, 1]], device=model.cfg.device)
        _, cache = model.run_with_cache(
            probe, stop_at_layer=hook.stop_at_layer, names_filter=hook.name
        )
    return int(cache[hook.name].shape[-1])


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """SAETrainer draws a tqdm bar; progress goes through the progress callback instead."""
    import tqdm.auto

    original = tqdm.auto.tqdm
    try:
        import sae_lens.training.sae_trainer as trainer_module

        trainer_module.tqdm = _silent_tqdm(original)  # type: ignore[attr-defined]
        yield
    finally:
        trainer_module.tqdm = original  # type: ignore[attr-defined]


def _silent_tqdm(original: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return original(*args, **kwargs)

    return make


# --- the whole job --------------------------------------------------------------------


def run_training(
    config: TrainConfig,
    *,
    model: HookedTransformer,
    corpus_dir: Path | None,
    output_dir: Path,
    checkpoint_dir: Path,
    cache_dir: Path,
    progress: ProgressFn | None = None,
    checkpoint_every_steps: int = CHECKPOINT_EVERY_STEPS,
) -> dict[str, Any]:
    """Train, evaluate on held-out text and write the SAE directory; return the metrics.

    ``corpus_dir`` is the folder holding the input channels (``channel:<name>`` corpora).
    Writes into ``output_dir``: ``cfg.json`` + ``sae_weights.safetensors`` (SAELens format),
    ``metrics.json``, ``feature_data.jsonl`` and ``saeflow_sae.json``. Raises
    :class:`TrainingInterrupted` on SIGTERM/SIGINT (after checkpointing) and
    :class:`InvalidRunOptions` / :class:`InvalidHook` on settings the model cannot take.
    """
    from sae_lens import SAE

    from gpu_worker.evaluation import evaluate_sae
    from gpu_worker.feature_data import build_feature_data, write_feature_data

    del cache_dir  # the model arrives loaded; kept in the signature for future caches
    hook = config.hook_point
    hook.check_layers(model.cfg.n_layers)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    report = progress or (lambda stage, done, total: None)
    stop = StopFlag()

    def check_stop() -> None:
        if stop.is_set:
            raise TrainingInterrupted(
                f"{stop.signal_name} after training finished; the trained SAE is in the "
                f"checkpoint dir and a new run with the same settings resumes from it"
            )

    with stop_on_signals(stop):
        started = time.perf_counter()
        train_windows = collect_windows(
            config.corpus,
            model.tokenizer,
            context_size=config.context_size,
            # One batch of slack: SAETrainer's last step may run past the budget.
            n_tokens=config.training_tokens + config.batch_size_tokens,
            split="train",
            seed=config.seed,
            channels_dir=corpus_dir,
        )
        eval_windows = collect_windows(
            config.corpus,
            model.tokenizer,
            context_size=config.context_size,
            n_tokens=config.eval_tokens,
            split="heldout",
            seed=config.seed,
            channels_dir=corpus_dir,
            repeat=False,
        )
        trained = train_sae(
            config,
            model=model,
            windows=train_windows,
            checkpoint_dir=checkpoint_dir,
            progress=report,
            stop=stop,
            checkpoint_every_steps=checkpoint_every_steps,
        )
        check_stop()
        sae = SAE.load_from_disk(str(trained.sae_dir), device=str(model.cfg.device))
        sae.cfg.metadata.model_name = canonical_model_id(config.model)
        sae.cfg.metadata.hook_name = hook.name
        sae.cfg.metadata.context_size = config.context_size
        sae.cfg.metadata.prepend_bos = True
        sae.cfg.metadata.exclude_special_tokens = True
        sae.cfg.metadata.dataset_path = config.corpus

        evaluation = evaluate_sae(
            model,
            sae,
            hook,
            eval_windows,
            on_batch=lambda done, total: report("evaluation", done, total),
            check_stop=check_stop,
        )
        check_stop()
        report("feature_data", 0, 1)
        records = build_feature_data(evaluation.activations, sae, model)
        write_feature_data(records, output_dir / FEATURE_DATA_FILENAME)
        report("feature_data", 1, 1)

        sae.save_model(str(output_dir))
        wall = time.perf_counter() - started
        metrics = {
            **evaluation.metrics,
            "never_fired_fraction": trained.never_fired_fraction,
            "training_tokens": trained.samples,
            "train_seconds": round(trained.train_seconds, 3),
            "activation_seconds": round(trained.activation_seconds, 3),
            # End to end: the language model's forward passes are part of training.
            "tokens_per_s": round(
                trained.samples / max(trained.train_seconds + trained.activation_seconds, 1e-9), 1
            ),
            "wall_seconds": round(wall, 3),
            "d_in": int(sae.cfg.d_in),
            "d_sae": int(sae.cfg.d_sae),
            "architecture": config.architecture,
        }
        (output_dir / METRICS_FILENAME).write_text(json.dumps(metrics, indent=2))
        (output_dir / SAE_REF_FILENAME).write_text(
            json.dumps(_sae_description(config, hook, sae), indent=2)
        )
    logger.info("trained SAE written to %s: %s", output_dir, metrics)
    return metrics


def _sae_description(config: TrainConfig, hook: HookPoint, sae: Any) -> dict[str, Any]:
    """saeflow_sae.json of a trained SAE: what it was trained on and with which versions."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("saeflow", "sae-lens", "transformer-lens", "torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return SaeManifest(
        model=canonical_model_id(config.model),
        hook=hook.name,
        architecture=config.architecture,
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
        options=config.to_dict(),
        versions=versions,
    ).model_dump()
