"""A SageMaker training job run locally: ``python -m gpu_worker train --base-dir <base>``.

``<base>/input/config/hyperparameters.json`` + channels downloaded to
``<base>/input/data/<channel>/``; then ``<base>/model/`` tarred to
``<S3OutputPath>/<job>/output/model.tar.gz``, checkpoints uploaded to CheckpointConfig; on
a non-zero exit the job fails with ``output/failure`` as its FailureReason.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from infra.local.job_context import FAILURE_REASON_MAX, JobContext
from infra.local.worker_processes import log_tail

LOG = logging.getLogger(__name__)


def run_training_job(context: JobContext, job: Any) -> None:
    started = time.monotonic()
    try:
        base = context.fresh_base()
        context.progress.progress_file = base / "output" / "progress.json"
        prepare_training_dir(context, job)
        exit_code = context.workers.run(["train", "--base-dir", str(base)], base, env={})
        checkpoint_uri = (job.checkpoint_config or {}).get("S3Uri")
        if checkpoint_uri:
            context.files.upload_folder(base / "checkpoints", checkpoint_uri)
        if exit_code != 0:
            failure = base / "output" / "failure"
            reason = failure.read_text(errors="replace").strip() if failure.exists() else ""
            reason = reason or log_tail(base / "worker.log") or f"exit code {exit_code}"
            finish_training(context, job, started, f"AlgorithmError: {reason}")
            return
        context.files.upload_tar(base / "model", job.model_artifacts["S3ModelArtifacts"])
        finish_training(context, job, started, None)
        context.remove_base()
    except Exception as exc:
        LOG.exception("local training job %s failed", job.training_job_name)
        finish_training(context, job, started, f"InternalServerError: {exc}")


def prepare_training_dir(context: JobContext, job: Any) -> None:
    """The container's /opt/ml layout under the job's folder, inputs downloaded."""
    base = context.base
    config = base / "input" / "config"
    config.mkdir(parents=True)
    for folder in ("model", "output", "checkpoints"):
        (base / folder).mkdir()
    hyperparameters = {k: str(v) for k, v in (job.hyper_parameters or {}).items()}
    channels = job.input_data_config or []
    config_files = {
        "hyperparameters.json": hyperparameters,
        "inputdataconfig.json": {
            c["ChannelName"]: {"ContentType": c.get("ContentType", "")} for c in channels
        },
        "resourceconfig.json": {"current_host": "algo-1", "hosts": ["algo-1"]},
    }
    for name, content in config_files.items():
        (config / name).write_text(json.dumps(content))
    for channel in channels:
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        context.files.download_prefix(uri, base / "input" / "data" / channel["ChannelName"])
    checkpoint_uri = (job.checkpoint_config or {}).get("S3Uri")
    if checkpoint_uri:
        context.files.download_prefix(checkpoint_uri, base / "checkpoints")


def finish_training(context: JobContext, job: Any, started: float, failure: str | None) -> None:
    """Set what DescribeTrainingJob answers once the job ended."""
    seconds = max(1, round(time.monotonic() - started))
    job.training_time_in_seconds = seconds
    job.billable_time_in_seconds = seconds
    job.training_end_time = datetime.now(UTC)
    job.last_modified_time = job.training_end_time
    status = "Completed" if failure is None else "Failed"
    if failure is not None:
        job.failure_reason = failure[:FAILURE_REASON_MAX]
    job.training_job_status = job.secondary_status = context.progress.status = status
    LOG.info("training job %s: %s in %ss", job.training_job_name, status, seconds)
