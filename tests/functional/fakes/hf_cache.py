"""A Hugging Face hub cache on disk, laid out as a download leaves it, holding SAELens-format
SAE folders: what ``HF_HUB_OFFLINE=1`` loads pretrained SAEs from (no network)."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_sae_folder(cache: Path, repo_id: str, folder: str, sae_dir: Path) -> Path:
    """Put ``sae_dir``'s files (cfg.json, sae_weights.safetensors...) at ``<repo>/<folder>/``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / folder
    target.mkdir(parents=True, exist_ok=True)
    for path in sae_dir.iterdir():
        if path.is_file():
            shutil.copy(path, target / path.name)
    return target
