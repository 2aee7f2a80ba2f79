"""The SageMaker container contract in a temporary base dir: train, serve and the CLI.

The worker runs as SageMaker would run it: ``python -m gpu_worker train|serve`` in a
subprocess, configured only through the base dir, hyperparameters.json and the
environment.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpu_worker.sagemaker_contract import (
    ContainerPaths,
    ProgressFile,
    failure_reason,
    resolve_base_dir,
)
from saeflow.core.errors import InvalidRunOptions

REPO = Path(__file__).resolve().parents[2]

TINY_HYPERPARAMETERS = {
    "model": "default",
    "hook": "blocks.3.hook_resid_post",
    "architecture": "topk",
    "expansion_factor": "1",
    "k": "8",
    "training_tokens": "2048",
    "context_size": "32",
    "batch_size_tokens": "256",
    "eval_tokens": "256",
    "seed": "1",
}


def worker(
    args: list[str], env: dict[str, str], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpu_worker", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def worker_env(cache_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAEFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    if cache_dir is not None:
        env["SAEFLOW_CACHE_DIR"] = str(cache_dir)
    env.update(extra)
    return env


def write_hyperparameters(base: Path, hyperparameters: dict[str, str]) -> ContainerPaths:
    paths = ContainerPaths(base)
    paths.hyperparameters_file.parent.mkdir(parents=True)
    paths.hyperparameters_file.write_text(json.dumps(hyperparameters))
    return paths


# --- no model needed ------------------------------------------------------------


def test_paths_follow_the_sagemaker_layout(tmp_path: Path) -> None:
    assert resolve_base_dir(None, {}) == Path("/opt/ml")
    assert resolve_base_dir(None, {"SAEFLOW_SM_BASE_DIR": str(tmp_path)}) == tmp_path
    assert resolve_base_dir("/x", {"SAEFLOW_SM_BASE_DIR": str(tmp_path)}) == Path("/x")
    paths = ContainerPaths(Path("/opt/ml"))
    assert str(paths.hyperparameters_file) == "/opt/ml/input/config/hyperparameters.json"
    assert str(paths.channel_dir("train")) == "/opt/ml/input/data/train"
    assert str(paths.model_dir) == "/opt/ml/model"
    assert str(paths.failure_file) == "/opt/ml/output/failure"
    assert str(paths.checkpoint_dir) == "/opt/ml/checkpoints"


def test_progress_file_is_whole_json_with_eta(tmp_path: Path) -> None:
    progress = ProgressFile(tmp_path / "output" / "progress.json", min_interval_s=0)
    progress("train", 0, 1000, "tokens")
    state = json.loads((tmp_path / "output" / "progress.json").read_text())
    assert state == {"stage": "train", "done": 0, "total": 1000, "unit": "tokens", "eta_s": None}
    time.sleep(0.05)
    progress("train", 500, 1000, "tokens")
    state = json.loads((tmp_path / "output" / "progress.json").read_text())
    assert state["done"] == 500 and state["eta_s"] is not None and state["eta_s"] > 0
    progress("evaluation", 3, 3)
    state = json.loads((tmp_path / "output" / "progress.json").read_text())
    assert state["stage"] == "evaluation" and state["unit"] == "batches" and state["eta_s"] == 0.0
    assert [p.name for p in (tmp_path / "output").iterdir()] == ["progress.json"]  # no temp left


def test_failure_reason_starts_with_the_error_name() -> None:
    assert failure_reason(InvalidRunOptions("bad k")) == "InvalidRunOptions: bad k"
    assert failure_reason(RuntimeError("CUDA out of memory")).startswith("RuntimeError: CUDA")
    assert len(failure_reason(ValueError("x" * 5000))) <= 1000


@pytest.mark.parametrize(
    ("hyperparameters", "expected"),
    [
        ({"architecture": "nope"}, "InvalidRunOptions: hyperparameter 'architecture'"),
        ({"lerning_rate": "0.1"}, "InvalidRunOptions: unknown hyperparameter(s) lerning_rate"),
        ({"k": "many"}, "InvalidRunOptions: hyperparameter 'k' must be an integer"),
        ({"hook": "blocks.x.hook_resid_post"}, "InvalidHook: invalid hook"),
    ],
)
def test_bad_hyperparameters_write_the_failure_file(
    tmp_path: Path, hyperparameters: dict[str, str], expected: str
) -> None:
    paths = write_hyperparameters(tmp_path, hyperparameters)
    done = worker(["train", "--base-dir", str(tmp_path)], worker_env(), timeout=120)
    assert done.returncode != 0
    reason = paths.failure_file.read_text()
    assert reason.splitlines()[0].startswith(expected), reason
    assert "Traceback" not in done.stderr
    assert not paths.model_dir.exists() or not any(paths.model_dir.iterdir())


def test_base_dir_from_the_environment(tmp_path: Path) -> None:
    paths = write_hyperparameters(tmp_path, {"expansion_factor": "0"})
    done = worker(["train"], worker_env(SAEFLOW_SM_BASE_DIR=str(tmp_path)), timeout=120)
    assert done.returncode != 0
    assert paths.failure_file.read_text().startswith(
        "InvalidRunOptions: hyperparameter 'expansion_factor'"
    )


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = worker(["extract", str(tmp_path / "missing.txt"), "--sae", str(tmp_path)], worker_env())
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("InvalidRecord: cannot read prompts file")
    )
    assert "Traceback" not in done.stderr
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    done = worker(["extract", str(prompts), "--sae", str(tmp_path / "nope")], worker_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("SaeNotFound:")
    assert "Traceback" not in done.stderr
    done = worker(["steer", "--sae", "x"], worker_env())  # argparse: missing arguments
    assert done.returncode == 2 and "Traceback" not in done.stderr


# --- real model -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(port: int, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("server did not become ready")


@pytest.mark.slow
def test_serve_contract_in_a_temp_base_dir(
    tmp_path: Path, small_sae_dir: Path, model_cache_dir: Path
) -> None:
    paths = ContainerPaths(tmp_path)
    shutil.copytree(small_sae_dir, paths.model_dir)  # what SageMaker unpacks from model.tar.gz
    port = free_port()
    env = worker_env(
        model_cache_dir, SAEFLOW_TOP_K="3", SAEFLOW_MAX_PROMPT_TOKENS="16", SAEFLOW_CE_LOSS="1"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gpu_worker", "serve", "--base-dir", str(tmp_path),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_ping(port, process, timeout=240)
        lines = [
            {"prompt_index": 0, "id": "p0", "set": "main", "text": "Boats sail on the sea."},
            {"prompt_index": 1, "id": "p1", "set": "main", "text": "word " * 40},
        ]
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request(
            "POST", "/invocations", body=body, headers={"Content-Type": "application/jsonlines"}
        )
        response = conn.getresponse()
        assert response.status == 200
        out = [json.loads(line) for line in response.read().decode().splitlines()]
        assert [o["id"] for o in out] == ["p0", "p1"]
        assert out[0]["error"] is None
        assert all(len(per_token) <= 3 for per_token in out[0]["features"])  # SAEFLOW_TOP_K
        n_tokens = out[0]["n_tokens"]
        assert out[0]["quality"]["n"] == n_tokens and out[0]["quality"]["sq_err"] > 0
        ce = out[0]["ce"]  # SAEFLOW_CE_LOSS
        assert ce["n"] == n_tokens - 1 and 0 < ce["clean"] < ce["zero"]
        assert out[1]["error"]["error"] == "PromptTooLong"  # SAEFLOW_MAX_PROMPT_TOKENS
        assert "ce" not in out[1] and "quality" not in out[1]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if process.stderr:
            process.stderr.close()


@pytest.mark.slow
def test_extract_cli_reports_quality_and_ce_when_asked(
    tmp_path: Path, small_sae_dir: Path, model_cache_dir: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Boats sail on the sea.\nThe cat sat.\n")
    command = ["extract", str(prompts), "--sae", str(small_sae_dir)]
    plain = worker(command, worker_env(model_cache_dir))
    with_ce = worker([*command, "--ce-loss"], worker_env(model_cache_dir))
    for done in (plain, with_ce):
        assert done.returncode == 0, done.stderr[-3000:]
    plain_out = [json.loads(line) for line in plain.stdout.splitlines()]
    ce_out = [json.loads(line) for line in with_ce.stdout.splitlines()]
    assert [o["ce"] for o in plain_out] == [None, None]
    assert [o["quality"] for o in plain_out] == [o["quality"] for o in ce_out]
    assert all(o["ce"]["n"] == o["n_tokens"] - 1 for o in ce_out)
    bad = worker(command, worker_env(model_cache_dir, SAEFLOW_CE_LOSS="yes"))
    assert bad.returncode == 2 and "SAEFLOW_CE_LOSS" in bad.stderr


@pytest.mark.slow
def test_train_contract_writes_a_loadable_sae(tmp_path: Path, model_cache_dir: Path) -> None:
    from sae_lens import SAE

    paths = write_hyperparameters(tmp_path, TINY_HYPERPARAMETERS)
    done = worker(["train", "--base-dir", str(tmp_path)], worker_env(model_cache_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not paths.failure_file.exists()
    for name in (
        "cfg.json",
        "sae_weights.safetensors",
        "metrics.json",
        "feature_data.jsonl",
        "feature_summary.json",
        "corpus_windows.jsonl",
        "saeflow_sae.json",
    ):
        assert (paths.model_dir / name).is_file(), name
    assert "Training SAE" not in done.stderr  # SAETrainer's tqdm bar stays off
    sae = SAE.load_from_disk(str(paths.model_dir), device="cpu")
    assert sae.cfg.d_in == sae.cfg.d_sae == 576
    metrics = json.loads((paths.model_dir / "metrics.json").read_text())
    assert metrics["d_sae"] == 576 and "explained_variance" in metrics
    described = json.loads((paths.model_dir / "saeflow_sae.json").read_text())
    assert described["hook"] == TINY_HYPERPARAMETERS["hook"]
    progress = json.loads(paths.progress_file.read_text())
    assert set(progress) == {"stage", "done", "total", "unit", "eta_s"}


@pytest.mark.slow
def test_sigterm_during_training_fails_the_job_with_a_reason(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    paths = write_hyperparameters(tmp_path, dict(TINY_HYPERPARAMETERS, training_tokens="200000"))
    process = subprocess.Popen(
        [sys.executable, "-m", "gpu_worker", "train", "--base-dir", str(tmp_path)],
        cwd=REPO, env=worker_env(model_cache_dir),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not paths.progress_file.exists() and time.monotonic() < deadline:
            assert process.poll() is None, "training ended before it could be stopped"
            time.sleep(0.5)
        assert paths.progress_file.exists(), "training never reported progress"
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode != 0
    reason = paths.failure_file.read_text()
    assert reason.startswith(("TrainingInterrupted:", "TrainingStopped:")), reason
    assert "SIGTERM" in reason, reason
    assert not (paths.model_dir / "cfg.json").exists()


def test_dockerfile_runs_the_contract_entry_point() -> None:
    dockerfile = (REPO / "gpu_worker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "gpu_worker"]' in dockerfile  # docker run IMAGE train|serve
    assert "ARG BASE_IMAGE" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    assert "EXPOSE 8080" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies a missing path: {source}"
    requirements = (REPO / "gpu_worker" / "requirements.txt").read_text().splitlines()
    packages = [
        line.split("=")[0].split(">")[0] for line in requirements if line and line[0] != "#"
    ]
    assert "torch" not in packages  # the base image's CUDA torch stays
