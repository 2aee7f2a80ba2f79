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

:func:`run_training` is the entry point: train, evaluate on held-out text, write the SAE
(SAELens format), ``metrics.json``, ``feature_data.jsonl`` and ``saeflow_sae.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.config import TrainConfig
from gpu_worker.corpus import TokenWindows, collect_windows
from gpu_worker.models import SAE_REF_FILENAME, canonical_model_id
from saeflow.core.errors import InvalidRunOptions, TrainingFailed
from saeflow.core.hooks import HookPoint

if TYPE_CHECKING:
    from sae_lens.saes.sae import TrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

CHECKPOINT_MARKER = "saeflow_checkpoint.json"
FINAL_CHECKPOINT = "final"
METRICS_FILENAME = "metrics.json"
FEATURE_DATA_FILENAME = "feature_data.jsonl"
# Activations kept in memory at once (fp32 rows); one chunk for CPU-sized runs.
MAX_CHUNK_BYTES = 2 * 1024**3
LM_BATCH_TOKENS = 4096
CHECKPOINT_EVERY_STEPS = 50
_KEEP_CHECKPOINTS = 2


class TrainingInterrupted(TrainingFailed):
    """SIGTERM/SIGINT stopped training; a checkpoint was written where there was one to write."""


# --- stop requests (signals) -------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM/SIGINT; checked at batch boundaries, where stopping is safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def set(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGTERM/SIGINT to ``flag`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        logger.warning("received %s: stopping at the next batch boundary", name)
        flag.set(name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# --- activations ---------------------------------------------------------------------------


@torch.inference_mode()
def hook_activations(
    model: HookedTransformer,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    hook: HookPoint,
    *,
    batch_tokens: int = LM_BATCH_TOKENS,
    stop: StopFlag | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Activations at ``hook`` for the masked positions of ``tokens``: ``[n_masked, d_in]``.

    The forward pass stops right after the hooked layer.
    """
    device = model.cfg.device
    windows_per_batch = max(1, batch_tokens // tokens.shape[1])
    parts: list[torch.Tensor] = []
    for start in range(0, tokens.shape[0], windows_per_batch):
        if stop is not None and stop.is_set:
            raise TrainingInterrupted(
                f"{stop.signal_name} while reading activations (no SAE step yet)"
            )
        batch = tokens[start : start + windows_per_batch].to(device)
        _, cache = model.run_with_cache(
            batch, stop_at_layer=hook.stop_at_layer, names_filter=hook.name
        )
        acts = cache[hook.name]
        parts.append(acts[mask[start : start + windows_per_batch].to(device)].float())
        if on_batch is not None:
            on_batch(int(mask[start : start + windows_per_batch].sum()))
    return torch.cat(parts) if parts else torch.empty(0, model.cfg.d_model)


@dataclass
class ActivationPlan:
    """The training windows cut into chunks; chunk ``c`` holds samples ``[starts[c], starts[c+1])``."""

    windows: TokenWindows
    chunk_windows: int
    starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        counts = self.windows.mask.sum(dim=1)
        self.starts = [0]
        for begin in range(0, counts.shape[0], self.chunk_windows):
            self.starts.append(
                self.starts[-1] + int(counts[begin : begin + self.chunk_windows].sum())
            )

    @property
    def n_chunks(self) -> int:
        return len(self.starts) - 1

    @property
    def n_samples(self) -> int:
        return self.starts[-1]

    def chunk_of(self, sample: int) -> int:
        for index in range(self.n_chunks):
            if sample < self.starts[index + 1]:
                return index
        return self.n_chunks - 1

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(index * self.chunk_windows, (index + 1) * self.chunk_windows)
        return self.windows.tokens[rows], self.windows.mask[rows]


class ActivationBatches:
    """Shuffled activation batches for SAETrainer, resumable at any sample.

    Every ``checkpoint_every`` batches, and when a stop was requested, the iterator asks
    ``on_boundary`` to checkpoint before handing out the next batch: at that point the
    trainer has finished its previous step, so the saved state is consistent.
    """

    def __init__(
        self,
        *,
        plan: ActivationPlan,
        activations_for: Callable[[int], torch.Tensor],
        batch_size: int,
        seed: int,
        start_sample: int = 0,
        on_boundary: Callable[[int, bool], None] | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY_STEPS,
        stop: StopFlag | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.plan = plan
        self.activations_for = activations_for
        self.batch_size = batch_size
        self.seed = seed
        self.position = start_sample
        self.on_boundary = on_boundary
        self.checkpoint_every = checkpoint_every
        self.stop = stop
        self.on_progress = on_progress
        self.batches_served = 0
        self._chunk_index = -1
        self._chunk: torch.Tensor | None = None

    def __iter__(self) -> ActivationBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.on_boundary is not None:
            if self.stop is not None and self.stop.is_set:
                self.on_boundary(self.position, True)
            elif self.batches_served and self.batches_served % self.checkpoint_every == 0:
                self.on_boundary(self.position, False)
        if self.on_progress is not None and self.batches_served:
            self.on_progress(self.position)  # samples trained so far
        rows: list[torch.Tensor] = []
        needed = self.batch_size
        while needed:
            # Past the last sample (the final partial batch), wrap around to the start.
            sample = self.position % self.plan.n_samples
            chunk = self.load_chunk(self.plan.chunk_of(sample))
            offset = sample - self.plan.starts[self._chunk_index]
            take = min(needed, chunk.shape[0] - offset)
            rows.append(chunk[offset : offset + take])
            self.position += take
            needed -= take
        self.batches_served += 1
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def load_chunk(self, index: int) -> torch.Tensor:
        """Chunk ``index`` shuffled (kept until another chunk is needed)."""
        if index != self._chunk_index:
            self._chunk = None  # free the previous chunk before building the next
            activations = self.activations_for(index)
            generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
            order = torch.randperm(activations.shape[0], generator=generator)
            self._chunk = activations[order.to(activations.device)]
            self._chunk_index = index
        assert self._chunk is not None
        return self._chunk


# --- the SAELens SAE and trainer -----------------------------------------------------------


def build_training_sae(config: TrainConfig, d_in: int, device: str) -> TrainingSAE:
    """The SAELens training SAE for ``config.architecture``, activations normalised."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d_sae = d_in * config.expansion_factor
    if config.architecture in ("topk", "batchtopk") and config.k > d_sae:
        raise InvalidRunOptions(f"hyperparameter 'k' ({config.k}) exceeds the SAE width {d_sae}")
    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": device,
        # Scale inputs to norm sqrt(d_in) so one lr fits every model; folded in at the end.
        "normalize_activations": "expected_average_only_in",
    }
    torch.manual_seed(config.seed)
    if config.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=config.k, **common))
    if config.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=config.k, **common))
    if config.architecture == "jumprelu":
        return JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(l0_coefficient=config.l1_coefficient, **common)
        )
    steps = max(1, config.training_tokens // config.batch_size_tokens)
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(
            l1_coefficient=config.l1_coefficient, l1_warm_up_steps=steps // 20, **common
        )
    )


def trainer_config(config: TrainConfig, device: str, checkpoint_dir: Path) -> Any:
    """SAETrainerConfig sized to the run: windows and warm-up scale with the step count."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    steps = max(1, config.training_tokens // config.batch_size_tokens)
    # A feature silent for ~10% of the run counts as dead (TopK's aux loss revives it);
    # SAELens's default of 1000 steps is longer than a whole CPU run.
    window = max(10, min(1000, steps // 10))
    return SAETrainerConfig(
        total_training_samples=config.training_tokens,
        train_batch_size_samples=config.batch_size_tokens,
        lr=config.lr,
        lr_end=config.lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=max(1, steps // 20),
        lr_decay_steps=steps // 5,
        device=device,
        autocast=False,
        dead_feature_window=window,
        feature_sampling_window=max(window, steps // 4),
        n_checkpoints=0,  # saeflow checkpoints at batch boundaries (see ActivationBatches)
        checkpoint_path=str(checkpoint_dir),
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=1,  # unused: the factor is set from the activations
    )


def norm_scaling_factor(activations: torch.Tensor, d_in: int, max_rows: int = 65_536) -> float:
    """SAELens's ``expected_average_only_in`` factor: sqrt(d_in) / mean activation norm."""
    sample = activations[:max_rows].float()
    return float(math.sqrt(d_in) / sample.norm(dim=-1).mean().item())


# --- checkpoints ------------------------------------------------------------------------


def config_fingerprint(config: TrainConfig) -> str:
    """Identifies the settings a checkpoint belongs to (device excluded: resumable anywhere)."""
    settings = config.to_dict()
    settings.pop("device", None)
    settings["model"] = canonical_model_id(settings["model"])
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def latest_checkpoint(checkpoint_dir: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint of these settings (``final`` first), or None."""
    if not checkpoint_dir.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in checkpoint_dir.iterdir():
        marker = path / CHECKPOINT_MARKER
        if not marker.is_file():
            continue
        try:
            info = json.loads(marker.read_text())
        except ValueError:
            continue
        if info.get("fingerprint") != fingerprint:
            logger.warning("ignoring checkpoint %s: it belongs to other settings", path)
            continue
        rank = math.inf if path.name == FINAL_CHECKPOINT else int(info.get("samples", -1))
        if best is None or rank > best[0]:
            best = (rank, path)  # type: ignore[assignment]
    return best[1] if best else None


def _write_marker(path: Path, fingerprint: str, samples: int, extra: dict[str, Any]) -> None:
    info = {"fingerprint": fingerprint, "samples": samples, **extra}
    (path / CHECKPOINT_MARKER).write_text(json.dumps(info, indent=2))


def _prune_checkpoints(checkpoint_dir: Path, keep: Path) -> None:
    steps = sorted(
        (p for p in checkpoint_dir.glob("step-*") if p.is_dir()),
        key=lambda p: int(p.name.removeprefix("step-")) if p.name[5:].isdigit() else -1,
    )
    for path in steps[:-_KEEP_CHECKPOINTS]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


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

    def activations_for(index: int) -> torch.Tensor:
        tokens, mask = plan.chunk(index)
        started = time.perf_counter()
        done = plan.starts[index]

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("activations", min(done, total), total)

        acts = hook_activations(model, tokens, mask, hook, stop=stop, on_batch=on_batch)
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
    _write_marker(
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
    _write_marker(path, fingerprint, samples, {"steps": trainer.n_training_steps})
    _prune_checkpoints(checkpoint_dir, keep=path)
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
    return {
        "model": canonical_model_id(config.model),
        "hook": hook.name,
        "architecture": config.architecture,
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "options": config.to_dict(),
        "versions": versions,
    }
