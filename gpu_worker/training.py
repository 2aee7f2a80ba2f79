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

SAETrainer draws a tqdm bar; the worker's entry point (``python -m gpu_worker``) sets
``TQDM_DISABLE=1`` before tqdm is imported, and progress goes through the callback instead.

The parts live beside this module: :mod:`gpu_worker.activations` (the LM to the hook,
batches), :mod:`gpu_worker.sae_setup` (SAE and trainer settings), :mod:`gpu_worker.checkpoints`
and :mod:`gpu_worker.stopping` (signals), :mod:`gpu_worker.evaluation` (held-out metrics),
:mod:`gpu_worker.feature_data` and :mod:`gpu_worker.feature_summary` (feature files).
:func:`run_training` is the entry point: train, evaluate on held-out text, write the SAE
(SAELens format), ``metrics.json``, the feature files and ``saeflow_sae.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
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
from saeflow.core import layout
from saeflow.core.contract import SaeManifest
from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from sae_lens import SAE
    from sae_lens.training.sae_trainer import SAETrainer
    from transformer_lens import HookedTransformer

    from gpu_worker.evaluation import FeatureActivations

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

METRICS_FILENAME = layout.SAE_METRICS
FEATURE_DATA_FILENAME = layout.SAE_FEATURE_DATA
FEATURE_SUMMARY_FILENAME = layout.SAE_FEATURE_SUMMARY
CORPUS_WINDOWS_FILENAME = layout.SAE_CORPUS_WINDOWS
# Version of the feature files' contract (2: first-token evidence, content density, 8 random
# examples, feature_summary.json and corpus_windows.jsonl); recorded in saeflow_sae.json.
FEATURE_DATA_VERSION = 2
# Activations kept in memory at once (fp32 rows); one chunk for CPU-sized runs.
MAX_CHUNK_BYTES = 2 * 1024**3


def _no_progress(stage: str, done: int, total: int) -> None:
    del stage, done, total


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
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = config_fingerprint(config)
    resume = latest_checkpoint(checkpoint_dir, fingerprint)
    if resume is not None and resume.name == FINAL_CHECKPOINT:
        logger.info("training already finished in %s; reusing it", resume)
        return _finished_result(resume)
    run = _TrainingRun(
        config,
        model=model,
        windows=windows,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        progress=progress or _no_progress,
        stop=stop,
    )
    run.prepare(resume, checkpoint_every_steps)
    return run.fit()


def _finished_result(final_dir: Path) -> TrainingResult:
    """The result recorded in a finished run's marker."""
    info = json.loads((final_dir / CHECKPOINT_MARKER).read_text())
    return TrainingResult(
        sae_dir=final_dir,
        never_fired_fraction=float(info["never_fired_fraction"]),
        train_seconds=float(info["train_seconds"]),
        activation_seconds=float(info.get("activation_seconds", 0.0)),
        samples=int(info["samples"]),
    )


class _TrainingRun:
    """One training run: SAETrainer fed by :class:`ActivationBatches`, which calls back here
    for chunks of activations, progress and checkpoint boundaries."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: HookedTransformer,
        windows: TokenWindows,
        checkpoint_dir: Path,
        fingerprint: str,
        progress: ProgressFn,
        stop: StopFlag | None,
    ) -> None:
        self.config = config
        self.model = model
        self.hook = config.hook_point
        self.checkpoint_dir = checkpoint_dir
        self.fingerprint = fingerprint
        self.progress = progress
        self.stop = stop
        self.total = config.training_tokens
        self.device = str(model.cfg.device)
        self.d_in = _hook_width(model, self.hook)
        rows_per_window = windows.mask.sum(dim=1).float().mean().item()
        self.plan = ActivationPlan(
            windows=windows,
            chunk_windows=max(
                1, int(MAX_CHUNK_BYTES // (self.d_in * 4) // max(rows_per_window, 1.0))
            ),
        )
        self.activation_seconds = 0.0
        self.reader: Any = None  # built on first use: a finished run needs none
        self.trainer: SAETrainer | None = None

    def prepare(self, resume: Path | None, checkpoint_every_steps: int) -> None:
        """Build the SAE, the batches and the trainer; resume or initialise them."""
        from sae_lens.training.sae_trainer import SAETrainer

        start_sample = 0
        if resume is not None:
            start_sample = int(json.loads((resume / CHECKPOINT_MARKER).read_text())["samples"])
            logger.info("resuming from %s at %d tokens", resume, start_sample)
        sae = build_training_sae(self.config, self.d_in, self.device)
        self.batches = ActivationBatches(
            plan=self.plan,
            activations_for=self.activations_for,
            batch_size=self.config.batch_size_tokens,
            seed=self.config.seed,
            start_sample=start_sample,
            on_boundary=self.on_boundary,
            checkpoint_every=checkpoint_every_steps,
            stop=self.stop,
            on_progress=self.on_progress,
        )
        self.trainer = SAETrainer(
            cfg=trainer_config(self.config, self.device, self.checkpoint_dir),
            sae=sae,
            data_provider=self.batches,
        )
        if resume is not None:
            self.trainer.load_trainer_state(resume)
            sae.load_weights_from_checkpoint(resume)
        else:
            self._initialise(sae)

    def _initialise(self, sae: Any) -> None:
        """Activation scale and decoder bias from the first chunk (which stays loaded)."""
        assert self.trainer is not None
        first_chunk = self.batches.load_chunk(self.plan.chunk_of(0))
        scale = norm_scaling_factor(first_chunk, self.d_in)
        self.trainer.activation_scaler.scaling_factor = scale
        # Start the decoder bias at the data mean: a short run cannot afford to learn the
        # residual stream's large mean component from zero.
        with torch.no_grad():
            sae.b_dec.copy_(first_chunk[:65_536].mean(dim=0).to(sae.b_dec.device) * scale)

    def activations_for(self, index: int) -> torch.Tensor:
        """The activations of chunk ``index`` (ActivationBatches asks for them)."""
        tokens, mask = self.plan.chunk(index)
        if self.reader is None:
            self.reader = residual_reader(self.model, self.hook, tokens[:2])
        started = time.perf_counter()
        done = self.plan.starts[index]

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            self.progress("activations", min(done, self.total), self.total)

        acts = hook_activations(
            self.model,
            tokens,
            mask,
            self.hook,
            stop=self.stop,
            on_batch=on_batch,
            reader=self.reader,
        )
        self.activation_seconds += time.perf_counter() - started
        return acts

    def on_boundary(self, samples: int, stopping: bool) -> None:
        """A checkpoint boundary: save; on a stop signal, raise after saving."""
        assert self.trainer is not None
        path = _save_step_checkpoint(self.trainer, self.checkpoint_dir, self.fingerprint, samples)
        if stopping:
            assert self.stop is not None
            raise TrainingInterrupted(
                f"{self.stop.signal_name} after {samples} of {self.total} training tokens; "
                f"checkpoint written to {path}; a new run with the same settings resumes there"
            )

    def on_progress(self, samples: int) -> None:
        self.progress("training", min(samples, self.total), self.total)

    def fit(self) -> TrainingResult:
        """Train to the budget; write the final SAE and its marker; drop step checkpoints."""
        trainer = self.trainer
        assert trainer is not None
        started = time.perf_counter()
        activation_seconds_before = self.activation_seconds
        trained = trainer.fit()
        if self.reader is not None:
            self.reader.close()  # and the HF model goes with it
            self.reader = None
        # SAE steps only: chunks read inside fit() count as activation time.
        elapsed = (
            time.perf_counter() - started - (self.activation_seconds - activation_seconds_before)
        )
        never_fired = (trainer.n_forward_passes_since_fired >= trainer.n_training_steps).float()
        final_dir = self.checkpoint_dir / FINAL_CHECKPOINT
        shutil.rmtree(final_dir, ignore_errors=True)
        trained.save_inference_model(str(final_dir))
        result = TrainingResult(
            sae_dir=final_dir,
            never_fired_fraction=float(never_fired.mean().item()),
            train_seconds=elapsed,
            activation_seconds=self.activation_seconds,
            samples=trainer.n_training_samples,
        )
        write_marker(
            final_dir,
            self.fingerprint,
            result.samples,
            {
                "never_fired_fraction": result.never_fired_fraction,
                "train_seconds": result.train_seconds,
                "activation_seconds": result.activation_seconds,
            },
        )
        for path in self.checkpoint_dir.glob("step-*"):
            shutil.rmtree(path, ignore_errors=True)
        self.progress("training", self.total, self.total)
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
    ``metrics.json``, ``feature_data.jsonl``, ``feature_summary.json``,
    ``corpus_windows.jsonl`` and ``saeflow_sae.json``. Raises :class:`TrainingInterrupted`
    on SIGTERM/SIGINT (after checkpointing) and :class:`InvalidRunOptions` /
    :class:`InvalidHook` on settings the model cannot take.
    """
    from gpu_worker.evaluation import evaluate_sae

    del cache_dir  # the model arrives loaded; kept in the signature for future caches
    config.hook_point.check_layers(model.cfg.n_layers)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    report = progress or _no_progress
    stop = StopFlag()
    with stop_on_signals(stop):
        started = time.perf_counter()
        train_windows, eval_windows = _collect_windows(config, model, corpus_dir)
        trained = train_sae(
            config,
            model=model,
            windows=train_windows,
            checkpoint_dir=checkpoint_dir,
            progress=report,
            stop=stop,
            checkpoint_every_steps=checkpoint_every_steps,
        )
        _check_stop(stop)
        sae = _load_trained_sae(trained.sae_dir, config, model)
        evaluation = evaluate_sae(
            model,
            sae,
            config.hook_point,
            eval_windows,
            on_batch=lambda done, total: report("evaluation", done, total),
            check_stop=lambda: _check_stop(stop),
        )
        _check_stop(stop)
        report("feature_data", 0, 1)
        write_feature_files(evaluation.activations, sae, model, output_dir, seed=config.seed)
        report("feature_data", 1, 1)
        sae.save_model(str(output_dir))
        wall_seconds = time.perf_counter() - started
        metrics = _job_metrics(evaluation.metrics, trained, sae, config, wall_seconds)
        _write_json(output_dir / METRICS_FILENAME, metrics)
        _write_json(output_dir / SAE_REF_FILENAME, _sae_description(config, sae))
    logger.info("trained SAE written to %s: %s", output_dir, metrics)
    return metrics


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2))


def _check_stop(stop: StopFlag) -> None:
    if stop.is_set:
        raise TrainingInterrupted(
            f"{stop.signal_name} after training finished; the trained SAE is in the "
            f"checkpoint dir and a new run with the same settings resumes from it"
        )


def _collect_windows(
    config: TrainConfig, model: HookedTransformer, corpus_dir: Path | None
) -> tuple[TokenWindows, TokenWindows]:
    """Training windows (the budget plus one batch of slack: SAETrainer's last step may run
    past it) and held-out evaluation windows (never repeated)."""
    common = {
        "context_size": config.context_size,
        "seed": config.seed,
        "channels_dir": corpus_dir,
    }
    train = collect_windows(
        config.corpus,
        model.tokenizer,
        n_tokens=config.training_tokens + config.batch_size_tokens,
        split="train",
        **common,
    )
    heldout = collect_windows(
        config.corpus,
        model.tokenizer,
        n_tokens=config.eval_tokens,
        split="heldout",
        repeat=False,
        **common,
    )
    return train, heldout


def _load_trained_sae(sae_dir: Path, config: TrainConfig, model: HookedTransformer) -> SAE:
    """The inference SAE, with the metadata that lets SAELens users load it right."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device=str(model.cfg.device))
    sae.cfg.metadata.model_name = canonical_model_id(config.model)
    sae.cfg.metadata.hook_name = config.hook_point.name
    sae.cfg.metadata.context_size = config.context_size
    sae.cfg.metadata.prepend_bos = True
    sae.cfg.metadata.exclude_special_tokens = True
    sae.cfg.metadata.dataset_path = config.corpus
    return sae


def write_feature_files(
    acts: FeatureActivations, sae: SAE, model: HookedTransformer, output_dir: Path, *, seed: int
) -> float:
    """``feature_data.jsonl``, ``feature_summary.json`` and ``corpus_windows.jsonl``;
    returns the seconds it took."""
    from gpu_worker.feature_data import TokenText, build_feature_data, write_feature_data
    from gpu_worker.feature_summary import (
        build_corpus_windows,
        build_feature_summary,
        first_token_evidence,
        write_json,
        write_jsonl,
    )

    started = time.perf_counter()
    evidence = first_token_evidence(acts)
    records = build_feature_data(acts, sae, model, evidence=evidence)
    write_feature_data(records, output_dir / FEATURE_DATA_FILENAME)
    write_json(build_feature_summary(acts, evidence), output_dir / FEATURE_SUMMARY_FILENAME)
    windows = build_corpus_windows(acts, TokenText(model.tokenizer), seed=seed)
    write_jsonl(windows, output_dir / CORPUS_WINDOWS_FILENAME)
    seconds = time.perf_counter() - started
    logger.info("feature files written in %.2f s", seconds)
    return seconds


def _job_metrics(
    evaluation: dict[str, float],
    trained: TrainingResult,
    sae: SAE,
    config: TrainConfig,
    wall_seconds: float,
) -> dict[str, Any]:
    """metrics.json (docs/ARCHITECTURE.md)."""
    lm_and_sae_seconds = trained.train_seconds + trained.activation_seconds
    return {
        **evaluation,
        "never_fired_fraction": trained.never_fired_fraction,
        "training_tokens": trained.samples,
        "train_seconds": round(trained.train_seconds, 3),
        "activation_seconds": round(trained.activation_seconds, 3),
        # End to end: the language model's forward passes are part of training.
        "tokens_per_s": round(trained.samples / max(lm_and_sae_seconds, 1e-9), 1),
        "wall_seconds": round(wall_seconds, 3),
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "architecture": config.architecture,
    }


def _sae_description(config: TrainConfig, sae: Any) -> dict[str, Any]:
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
        hook=config.hook_point.name,
        architecture=config.architecture,
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
        feature_data_version=FEATURE_DATA_VERSION,
        options=config.to_dict(),
        versions=versions,
    ).model_dump()
