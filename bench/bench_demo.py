"""demo.cold_s / demo.warm_s: `saeflow run examples/prompts.jsonl` with a fresh local state
(the SAE is trained) and again with that state (the SAE and labels are reused).

Both runs use the real CLI in a subprocess, so imports and model loading are counted as a
user sees them. The model conversion cache (~/.cache/saeflow/models) is kept warm for both:
it is a one-off install-time cost, not a per-run cost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "prompts.jsonl"
# What `make demo` runs (keep in step with the Makefile's demo target).
DEMO_ARGS = (
    str(EXAMPLE),
    "--contrast",
    str(ROOT / "examples" / "contrast.jsonl"),
    "--set",
    "steer=auto",
)
# The cold run's state is kept for the `interpretation` part (it reuses the trained SAE).
STATE_DIR = ROOT / "bench" / "work" / "demo-state"


# The quality goals of the SAE the cold run trains (default model, layer 15, 8x, TopK k=32,
# the demo's token budget), read from its report.
QUALITY_GOALS = {
    "explained_variance": (">=", 0.75),
    "ce_loss_recovered": (">=", 0.97),
    "never_fired_fraction": ("<=", 0.05),
}


def _timed_run(state_dir: Path, out_dir: Path) -> float:
    command = [
        str(Path(sys.executable).with_name("saeflow")),
        "run",
        *DEMO_ARGS,
        "--out",
        str(out_dir),
        "--label",
        "offline",
    ]
    env = {**os.environ, "SAEFLOW_STATE_DIR": str(state_dir)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 1)


def run() -> dict:
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="saeflow-bench-demo-") as tmp:
        out_dir = Path(tmp) / "out"
        cold = _timed_run(STATE_DIR, out_dir)
        quality = _trained_sae_quality(out_dir)
        warm = _timed_run(STATE_DIR, out_dir / "warm")
    return {
        "cold_s": cold,
        "warm_s": warm,
        "goal_cold_s": 480,
        "goal_warm_s": 60,
        "quality": quality,
    }


def _trained_sae_quality(out_dir: Path) -> dict:
    """The cold run's SAE metrics (held-out text) beside their goals."""
    (report_file,) = out_dir.glob("*/report.json")
    sae = json.loads(report_file.read_text())["sae"]
    metrics = sae["metrics"]
    quality: dict = {
        key: round(float(metrics[key]), 4)
        for key in ("explained_variance", "ce_loss_recovered", "never_fired_fraction", "l0")
        if metrics.get(key) is not None
    }
    quality["dead_fraction_heldout"] = metrics.get("dead_fraction")
    quality["training_tokens"] = metrics.get("training_tokens")
    quality["eval_tokens"] = metrics.get("eval_tokens")
    quality["goals"] = {k: f"{op} {v}" for k, (op, v) in QUALITY_GOALS.items()}
    quality["met"] = all(
        key in quality and (quality[key] >= v if op == ">=" else quality[key] <= v)
        for key, (op, v) in QUALITY_GOALS.items()
    )
    return quality
