"""scale: how far one run goes, measured here (README "Scale and cost").

- ``prompts_10k``: a 10,000-prompt file (fortune cookies) through the embedded mode, the
  real CLI in a subprocess with the demo's SAE (trained first when there is none; not
  timed): wall time, peak RSS of each process of the run and of all of them at once, the
  report's size and the time headless Chromium takes to load it (and a blank page, for
  scale), the run's own extraction rate (job start to end, model load included).
- ``serve_gap``: where serve loses speed against the same model in-process
  (bench/bench_serve.py), on 256 of those prompts, with the run's SAE.
- ``synthetic_1m``: validate and the reduce path for a million prompts with no LM: a 1M-
  prompt file (64-token prompts; 1% of ~150 words, counted exactly), synthetic extraction
  shards shaped like the worker's; each Lambda step in its own process
  (bench/scale_steps.py) for its time and peak RSS: validate, one shard's
  summarize_shard, one merge_partials batch (ReduceBatchSize shards), the final merge and
  summary of the aggregate step; plus a projection to 10M.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import synthetic
from bench.bench_extract import bench_prompts
from bench.dir_store import DirStore
from saeflow.core import layout
from saeflow.core.scale import ReducePlan

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
DEMO_STATE = WORK / "demo-state"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
N_PROMPTS = 10_000
SYNTHETIC_PROMPTS = 1_000_000
SHARD_SIZE = 1000
DISTINCT_SHARDS = 8  # synthetic shards generated; the rest of a batch are copies of them
GOALS = {"peak_rss_mb_total": 4096, "report_mb": 20, "open_s": 5, "serve_ratio": 0.85}


class RssSampler:
    """Peak RSS of a process tree, per process and summed, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self.per_process: dict[str, float] = {}
        self.peak_total_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0.0
            for process in processes:
                try:
                    rss = process.memory_info().rss / 2**20
                    name = _role(process.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                self.per_process[name] = max(self.per_process.get(name, 0.0), rss)
            self.peak_total_mb = max(self.peak_total_mb, total)
            self._stop.wait(0.2)


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "gpu_worker" in text:
        return "worker " + next((a for a in ("train", "serve") if a in cmdline), "other")
    if "saeflow" in text:
        return "saeflow run (stack, moto, functions)"
    return cmdline[0] if cmdline else "?"


def _state_with_sae(work: Path) -> Path:
    """A state dir holding the demo's SAE: a copy of the demo part's, else trained here."""
    state = work / "state"
    if DEMO_STATE.exists():
        shutil.copytree(DEMO_STATE, state)
    else:
        _saeflow_run(ROOT / "examples" / "prompts.jsonl", work / "warm-up", state)
    return state


def _saeflow_run(prompts: Path, out: Path, state: Path) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).with_name("saeflow")), "run", str(prompts)]
    command += ["--out", str(out), "--label", "offline"]
    env = {**os.environ, "SAEFLOW_STATE_DIR": str(state)}
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    if process.wait() != 0:
        raise RuntimeError(f"saeflow run {prompts.name} failed ({process.returncode})")
    return process


def _open_seconds(page: Path, profile: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return round(time.perf_counter() - started, 2)


def prompts_10k(work: Path) -> tuple[dict[str, Any], Path]:
    state = _state_with_sae(work)
    prompts = work / "prompts-10k.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in bench_prompts(N_PROMPTS)))
    out = work / "out"
    command = [str(Path(sys.executable).with_name("saeflow")), "run", str(prompts)]
    command += ["--out", str(out), "--label", "offline"]
    env = {**os.environ, "SAEFLOW_STATE_DIR": str(state)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    with RssSampler(process.pid) as sampler:
        code = process.wait()
    wall = round(time.perf_counter() - started, 1)
    if code != 0:
        raise RuntimeError(f"the 10k run failed ({code})")
    (folder,) = out.glob("*/")
    report = json.loads((folder / "report.json").read_text())
    html = folder / "index.html"
    blank = work / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title>")
    figures = {
        "wall_s": wall,
        "peak_rss_mb": round(max(sampler.per_process.values()), 1),
        "peak_rss_mb_total": round(sampler.peak_total_mb, 1),
        "peak_rss_mb_by_process": {k: round(v, 1) for k, v in sampler.per_process.items()},
        "report_mb": round(html.stat().st_size / 2**20, 3),
        "open_s": _open_seconds(html, work / "chromium"),
        "open_blank_s": _open_seconds(blank, work / "chromium"),
        "n_prompts": report["n_prompts"],
        "n_tokens": report["n_tokens"],
        "n_prompts_shown": report["n_prompts_shown"],
        "extraction_s": report["timings"]["extraction_s"],
        "extraction_tokens_per_s_job": report["timings"]["extraction_tokens_per_s"],
        "goals": {k: v for k, v in GOALS.items() if k != "serve_ratio"},
    }
    return figures, state


def serve_gap(state: Path) -> dict[str, Any]:
    """bench_serve on 256 of the 10k prompts, with the run's SAE (from the state dir)."""
    from bench import bench_serve
    from gpu_worker.backend import ModelBackend, WorkerSettings

    (cfg,) = sorted((state / "s3").glob("*/saes/*/*/*/cfg.json"))[:1]
    backend = ModelBackend.load(WorkerSettings(sae_ref=str(cfg.parent), device="cpu"))
    prompts = bench_prompts(N_PROMPTS)[::40][:256]
    figures = bench_serve.run(
        extractor=backend.extractor, backend=backend, prompts=prompts, sizes=(8, 256)
    )
    figures["goal_ratio"] = GOALS["serve_ratio"]
    figures["met"] = figures["http_256_ratio"] >= GOALS["serve_ratio"]
    return figures


def _step(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale_steps", *args],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"scale step {args[0]} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_1m(work: Path) -> dict[str, Any]:
    root = work / "synthetic"
    store = DirStore(root)
    run_id = "synthetic-1m-000000000000"
    key = "prompts/synthetic-1m.jsonl"
    file_bytes = synthetic.write_prompt_file(root / key, SYNTHETIC_PROMPTS)
    validate = _step("validate", str(root), key, run_id)
    n_shards = validate["n_shards"]
    plan = ReducePlan(n_shards, validate["reduce"]["batch_size"], 100)
    assert plan.batched, "a million prompts take more than one merge"
    store.put_json("saes/synthetic/feature_summary.json", synthetic.feature_summary())
    summaries = []
    for shard in range(DISTINCT_SHARDS):
        data = synthetic.extraction_shard(shard, SHARD_SIZE)
        store.put_bytes(layout.extract_output_key(run_id, shard), data)
        summaries.append(_step("summarize", str(root), run_id, str(shard)))
    # One batch: DISTINCT_SHARDS real partials copied to the batch size; then as many
    # copies of the merged batch as the run has batches, for the final merge.
    for i in range(DISTINCT_SHARDS):
        starts = ",".join(
            str(s) for s in range(i + DISTINCT_SHARDS, plan.batch_size, DISTINCT_SHARDS)
        )
        if starts:
            source = layout.shard_partial_key(run_id, i)
            _step("copy-partial", str(root), run_id, source, "shard", "1", str(n_shards), starts)
    merge = _step("merge", str(root), run_id, "0", str(plan.batch_size))
    batches = ",".join(str(b * plan.batch_size) for b in range(plan.n_batches))
    _step("copy-partial", str(root), run_id, layout.batch_partial_key(run_id, 0), "batch",
          str(plan.batch_size), str(n_shards), batches)  # fmt: skip
    final = _step("final", str(root), run_id, str(n_shards), str(plan.batch_size))
    summarize = max(summaries, key=lambda s: s["seconds"])
    steps = {"summarize_shard": summarize, "merge_partials": merge, "aggregate": final}
    figures = {
        "n_prompts": validate["n_prompts"],
        "file_mb": round(file_bytes / 2**20, 1),
        "n_shards": n_shards,
        "batch_size": plan.batch_size,
        "n_batches": plan.n_batches,
        "validate_s": validate["seconds"],
        "validate_peak_mb": validate["peak_rss_mb"],
        "token_check": validate["token_check"],
        "reduce_s": max(s["seconds"] for s in steps.values()),
        "reduce_peak_mb": max(s["peak_rss_mb"] for s in steps.values()),
        "steps": {
            name: {"seconds": s["seconds"], "peak_rss_mb": s["peak_rss_mb"]}
            for name, s in steps.items()
        },
        "shard_partial_mb": round(summarize["partial_bytes"] / 2**20, 2),
        "token_rows_per_shard": summarize["token_rows"],
        "goals": {"peak_mb": 1536, "step_s": 600},
    }
    figures["projection_10m"] = projection(figures, 10_000_000)
    shutil.rmtree(root, ignore_errors=True)  # a GB of synthetic files
    return figures


def projection(figures: dict[str, Any], n_prompts: int) -> dict[str, Any]:
    """10M prompts from the 1M figures: validate is linear in the prompts; a shard's step
    does not change; with the batch size at sqrt(shards) (validate's plan) both merge
    levels read sqrt(shards) partials, each costing what one measured merge input did."""
    n_shards = math.ceil(n_prompts / SHARD_SIZE)
    plan = ReducePlan.for_shards(n_shards, 32, 100)
    steps = figures["steps"]
    per_input = steps["merge_partials"]["seconds"] / figures["batch_size"]
    final_fixed = steps["aggregate"]["seconds"] - per_input * figures["n_batches"]
    return {
        "n_shards": n_shards,
        "batch_size": plan.batch_size,
        "n_batches": plan.n_batches,
        "validate_s": round(figures["validate_s"] * n_prompts / figures["n_prompts"], 0),
        "summarize_shard_s": steps["summarize_shard"]["seconds"],
        "merge_partials_s": round(per_input * plan.batch_size, 0),
        "aggregate_s": round(final_fixed + per_input * plan.n_batches, 0),
        "peak_mb": "as 1M: every step holds one running merge and one partial",
    }


def run() -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="saeflow-bench-scale-", dir=WORK) as tmp:
        work = Path(tmp)
        ten_k, state = prompts_10k(work)
        gap = serve_gap(state)
        one_m = synthetic_1m(work)
    return {"prompts_10k": ten_k, "serve_gap": gap, "synthetic_1m": one_m}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
