"""demo.cold_s / demo.warm_s: `saeflow run examples/prompts.jsonl` with a fresh local state
(the SAE is trained) and again with that state (the SAE and labels are reused).

Both runs use the real CLI in a subprocess, so imports and model loading are counted as a
user sees them. The model conversion cache (~/.cache/saeflow/models) is kept warm for both:
it is a one-off install-time cost, not a per-run cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "prompts.jsonl"


def _timed_run(state_dir: Path, out_dir: Path) -> float:
    command = [
        str(Path(sys.executable).with_name("saeflow")),
        "run",
        str(EXAMPLE),
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
    with tempfile.TemporaryDirectory(prefix="saeflow-bench-demo-") as tmp:
        state_dir, out_dir = Path(tmp) / "state", Path(tmp) / "out"
        cold = _timed_run(state_dir, out_dir)
        warm = _timed_run(state_dir, out_dir / "warm")
    return {"cold_s": cold, "warm_s": warm, "goal_cold_s": 480, "goal_warm_s": 60}
