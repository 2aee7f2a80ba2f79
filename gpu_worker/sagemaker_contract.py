"""The SageMaker container contract: the ONLY module that knows the ``/opt/ml`` layout.

Training jobs read ``input/config/hyperparameters.json`` (all values strings) and the
channels under ``input/data/<channel>/``, write the SAE to ``model/``, checkpoints to
``/opt/ml/checkpoints`` and, on failure, the reason to ``output/failure`` (SageMaker
shows its start as the job's FailureReason). Batch transform serves the SAE found in
``model/``. The base directory is configurable so the embedded mode runs the same
code against a temporary folder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from saeflow.core.errors import SaeflowError, TrainingFailed

logger = logging.getLogger(__name__)

DEFAULT_BASE_DIR = Path("/opt/ml")
BASE_DIR_ENV = "SAEFLOW_SM_BASE_DIR"
# SageMaker truncates FailureReason at 1024 characters; keep the useful part inside.
_FAILURE_MAX_CHARS = 1000


@dataclass(frozen=True)
class ContainerPaths:
    """Every path of the contract, below one base directory (``/opt/ml`` on SageMaker)."""

    base: Path

    @property
    def hyperparameters_file(self) -> Path:
        return self.base / "input" / "config" / "hyperparameters.json"

    @property
    def input_data_dir(self) -> Path:
        return self.base / "input" / "data"

    def channel_dir(self, channel: str) -> Path:
        return self.input_data_dir / channel

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def progress_file(self) -> Path:
        return self.output_dir / "progress.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"


def resolve_base_dir(explicit: str | None, environ: dict[str, str]) -> Path:
    """Argument > ``SAEFLOW_SM_BASE_DIR`` > ``/opt/ml``."""
    if explicit:
        return Path(explicit)
    if environ.get(BASE_DIR_ENV):
        return Path(environ[BASE_DIR_ENV])
    return DEFAULT_BASE_DIR


def write_atomically(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What ``done``/``total`` count in the training job's stages (when the caller does not say).
_STAGE_UNITS = {"activations": "tokens", "training": "tokens", "evaluation": "batches"}


class ProgressFile:
    """``progress(stage, done, total, unit)`` -> ``output/progress.json``, written atomically.

    The embedded mode polls this file for its progress bar. The ETA is linear in the
    stage's own rate; writes are throttled so a fast loop does not hammer the disk.
    """

    def __init__(self, path: Path, *, min_interval_s: float = 0.5) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self._stage: str | None = None
        self._stage_started = 0.0
        self._last_write = 0.0

    def __call__(self, stage: str, done: int, total: int, unit: str | None = None) -> None:
        if unit is None:
            unit = _STAGE_UNITS.get(stage, "steps")
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_started, self._last_write = stage, now, 0.0
        finished = total > 0 and done >= total
        if not finished and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        elapsed = now - self._stage_started
        eta = None
        if 0 < done < total and elapsed > 0:
            eta = round(elapsed * (total - done) / done, 1)
        elif finished:
            eta = 0.0
        state = {"stage": stage, "done": done, "total": total, "unit": unit, "eta_s": eta}
        try:
            write_atomically(self.path, json.dumps(state))
        except OSError as exc:  # progress is a courtesy; never fail the job over it
            logger.warning("could not write progress: %s", exc)


def read_hyperparameters(paths: ContainerPaths) -> dict[str, str]:
    """The job's hyperparameters (absent file = no hyperparameters = all defaults)."""
    path = paths.hyperparameters_file
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainingFailed(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainingFailed(f"{path.name} must hold a JSON object")
    return data


def failure_reason(exc: BaseException) -> str:
    """``<ErrorName>: <message>`` - the first line is what the workflow's Catch reads."""
    if isinstance(exc, SaeflowError):
        name, message = exc.name, str(exc)
    else:
        name, message = type(exc).__name__, str(exc) or repr(exc)
    return f"{name}: {message}"[:_FAILURE_MAX_CHARS]


def write_failure(paths: ContainerPaths, exc: BaseException) -> str:
    reason = failure_reason(exc)
    try:
        write_atomically(paths.failure_file, reason + "\n")
    except OSError as write_error:
        logger.error("could not write the failure file: %s", write_error)
    return reason


class TrainingStopped(TrainingFailed):
    """SIGTERM (a SageMaker stop or Spot interruption) arrived before training ended."""


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise TrainingStopped(f"stopped by signal {signal.Signals(signum).name}")


def resolve_device(requested: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_train(paths: ContainerPaths, *, cache_dir: Path, hf_token: str | None = None) -> int:
    """The ``train`` entry: hyperparameters -> SAE in ``model/``. Returns the exit status."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        _train(paths, cache_dir=cache_dir, hf_token=hf_token)
    except BaseException as exc:  # every failure must reach the failure file
        reason = write_failure(paths, exc)
        if isinstance(exc, SaeflowError):
            logger.error("training failed: %s", reason)
        else:
            logger.exception("training failed: %s", reason)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _train(paths: ContainerPaths, *, cache_dir: Path, hf_token: str | None) -> dict[str, Any]:
    # Imported here: reading hyperparameters and reporting bad ones needs no torch.
    from gpu_worker.config import TrainConfig

    config = TrainConfig.from_hyperparameters(read_hyperparameters(paths))
    logger.info("training config: %s", config.to_dict())
    from gpu_worker.models import load_language_model
    from gpu_worker.training import run_training

    device = resolve_device(config.device)
    model = load_language_model(config.model, cache_dir=cache_dir, device=device, hf_token=hf_token)
    config.hook_point.check_layers(model.cfg.n_layers)
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    paths.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    progress: Callable[..., None] = ProgressFile(paths.progress_file)
    metrics = run_training(
        config,
        model=model,
        corpus_dir=paths.input_data_dir,
        output_dir=paths.model_dir,
        checkpoint_dir=paths.checkpoint_dir,
        cache_dir=cache_dir,
        progress=progress,
    )
    logger.info("training done: %s", metrics)
    return metrics
