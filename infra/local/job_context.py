"""What a local SageMaker job works with: its folder, S3, the worker, and its progress."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.job_files import JobFiles
from infra.local.worker_processes import WorkerProcesses

FAILURE_REASON_MAX = 1024  # SageMaker's limit on FailureReason


@dataclass
class JobProgress:
    """What the CLI shows for a running job (training: the worker's progress.json)."""

    job_name: str
    kind: str  # "training" | "transform"
    status: str = "InProgress"
    stage: str = "starting"
    done: float = 0.0
    total: float | None = None
    unit: str = ""
    eta_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    progress_file: Path | None = None


@dataclass
class JobContext:
    base: Path  # the job's folder: <work_dir>/<job name>
    files: JobFiles
    workers: WorkerProcesses
    progress: JobProgress

    def fresh_base(self) -> Path:
        if self.base.exists():
            shutil.rmtree(self.base)
        self.base.mkdir(parents=True)
        return self.base

    def remove_base(self) -> None:
        """A finished job's files are in S3; only a failed job's folder is kept, to debug it."""
        shutil.rmtree(self.base, ignore_errors=True)
