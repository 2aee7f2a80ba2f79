"""Training checkpoints: SAELens's own format plus a marker naming the settings.

A checkpoint directory counts only once its ``saeflow_checkpoint.json`` marker exists
(written last); the marker's fingerprint ties it to the settings, so a run never resumes
from another run's state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from gpu_worker.config import TrainConfig
from gpu_worker.models import canonical_model_id

logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "saeflow_checkpoint.json"
FINAL_CHECKPOINT = "final"
_KEEP_CHECKPOINTS = 2


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


def write_marker(path: Path, fingerprint: str, samples: int, extra: dict[str, Any]) -> None:
    info = {"fingerprint": fingerprint, "samples": samples, **extra}
    (path / CHECKPOINT_MARKER).write_text(json.dumps(info, indent=2))


def prune_checkpoints(checkpoint_dir: Path, keep: Path) -> None:
    steps = sorted(
        (p for p in checkpoint_dir.glob("step-*") if p.is_dir()),
        key=lambda p: int(p.name.removeprefix("step-")) if p.name[5:].isdigit() else -1,
    )
    for path in steps[:-_KEEP_CHECKPOINTS]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
