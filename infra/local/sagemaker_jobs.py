"""SageMaker training and batch-transform jobs run by the worker as local processes.

moto records the jobs (``moto_patches`` makes them start "InProgress"); the runner here
starts each in a thread that does the work SageMaker would do, honouring the container
contract the worker implements: ``training_job`` and ``transform_job`` say how.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from infra.local.job_context import JobContext, JobProgress
from infra.local.job_files import JobFiles
from infra.local.training_job import run_training_job
from infra.local.transform_job import run_transform_job
from infra.local.worker_processes import WorkerProcesses


class LocalJobRunner:
    """Runs SageMaker jobs recorded by moto as local worker processes."""

    def __init__(
        self,
        *,
        s3_client: Any,
        work_dir: Path,
        worker_env: Mapping[str, str],
        worker_command: list[str] | None = None,
    ) -> None:
        self._files = JobFiles(s3_client)
        # Tests substitute a stub worker; the real one is ``python -m gpu_worker``.
        command = worker_command or [sys.executable, "-m", "gpu_worker"]
        self._workers = WorkerProcesses(command, worker_env)
        self._work_dir = work_dir
        self._progress: dict[str, JobProgress] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- what moto_patches calls

    def start_training_job(self, job: Any) -> None:
        self._start(job.training_job_name, "training", run_training_job, job)

    def start_transform_job(self, job: Any, model: dict[str, Any] | None) -> None:
        self._start(job.transform_job_name, "transform", run_transform_job, job, model)

    # -------------------------------------------------------------- what the CLI reads

    def progress(self) -> list[JobProgress]:
        """A snapshot of every job, refreshed from the worker's progress file."""
        with self._lock:
            jobs = list(self._progress.values())
        for job in jobs:
            if job.progress_file is not None and job.status == "InProgress":
                _refresh_from_file(job)
        return jobs

    def stop_all(self) -> None:
        """Terminate worker processes still running (the stack is shutting down)."""
        self._workers.stop_all()

    def _start(self, job_name: str, kind: str, run: Callable[..., None], *args: Any) -> None:
        progress = JobProgress(job_name=job_name, kind=kind)
        with self._lock:
            self._progress[job_name] = progress
        context = JobContext(self._work_dir / job_name, self._files, self._workers, progress)
        threading.Thread(
            target=run, args=(context, *args), name=f"sagemaker-{job_name}", daemon=True
        ).start()


def _refresh_from_file(job: JobProgress) -> None:
    assert job.progress_file is not None
    try:
        data = json.loads(job.progress_file.read_text())
    except (OSError, ValueError):
        return  # not written yet, or caught mid-write
    job.stage = str(data.get("stage", job.stage))
    job.done = float(data.get("done") or 0)
    job.total = float(data["total"]) if data.get("total") else None
    job.unit = str(data.get("unit", ""))
    job.eta_s = float(data["eta_s"]) if data.get("eta_s") is not None else None


def worker_environment(endpoint_url: str, region: str) -> dict[str, str]:
    """The environment worker processes get: this process's, pointed at the local stack."""
    env = dict(os.environ)
    env.update(
        {
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_ACCESS_KEY_ID": "saeflow-local",
            "AWS_SECRET_ACCESS_KEY": "saeflow-local",
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    return env
