"""SageMaker training and batch-transform jobs run by the worker as local processes.

moto records the jobs (``moto_patches`` makes them start "InProgress"); this module does
the work SageMaker would do, honouring the container contract the worker implements:

- training: ``<base>/input/config/hyperparameters.json`` + channels downloaded to
  ``<base>/input/data/<channel>/``, ``python -m gpu_worker train --base-dir <base>``, then
  ``<base>/model/`` tarred to ``<S3OutputPath>/<job>/output/model.tar.gz``; on a non-zero
  exit the job fails with ``output/failure`` as its FailureReason.
- transform: the model's S3 data in ``<base>/model``, ``python -m gpu_worker serve`` on a
  free 127.0.0.1 port with the model's Environment, ``GET /ping`` until ready, then every
  input object split by line, batched (MultiRecord) up to MaxPayloadInMB, ``POST
  /invocations``, and ``<object>.out`` written under S3OutputPath.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

_FAILURE_REASON_MAX = 1024  # SageMaker's limit on FailureReason
_PING_TIMEOUT_S = 900.0
_DEFAULT_MAX_PAYLOAD_MB = 6
# SageMaker decides how many records go in one MultiRecord request (up to the payload
# limit); locally smaller requests let the progress bar move while the CPU works.
_LOCAL_MAX_RECORDS_PER_REQUEST = 8


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
        self._s3 = s3_client
        self._work_dir = work_dir
        self._worker_env = dict(worker_env)
        # Tests substitute a stub worker; the real one is ``python -m gpu_worker``.
        self._worker_command = worker_command or [sys.executable, "-m", "gpu_worker"]
        self._progress: dict[str, JobProgress] = {}
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()

    # -------------------------------------------------------------- what moto_patches calls

    def start_training_job(self, job: Any) -> None:
        self._start(job.training_job_name, "training", self._run_training, job)

    def start_transform_job(self, job: Any, model: dict[str, Any] | None) -> None:
        self._start(job.transform_job_name, "transform", self._run_transform, job, model)

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
        for process in list(self._processes):
            _terminate(process)

    # -------------------------------------------------------------- internals

    def _start(self, job_name: str, kind: str, target: Any, *args: Any) -> None:
        progress = JobProgress(job_name=job_name, kind=kind)
        with self._lock:
            self._progress[job_name] = progress
        threading.Thread(
            target=target, args=(progress, *args), name=f"sagemaker-{job_name}", daemon=True
        ).start()

    def _base_dir(self, job_name: str) -> Path:
        base = self._work_dir / job_name
        if base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True)
        return base

    def _run_training(self, progress: JobProgress, job: Any) -> None:
        started = time.monotonic()
        try:
            base = self._base_dir(job.training_job_name)
            progress.progress_file = base / "output" / "progress.json"
            self._prepare_training_dir(job, base)
            exit_code = self._run_worker(["train", "--base-dir", str(base)], base, env={})
            self._upload_checkpoints(job, base)
            if exit_code != 0:
                failure = base / "output" / "failure"
                reason = failure.read_text(errors="replace").strip() if failure.exists() else ""
                reason = reason or _tail(base / "worker.log") or f"exit code {exit_code}"
                self._finish_training(job, progress, started, f"AlgorithmError: {reason}")
                return
            artifact = job.model_artifacts["S3ModelArtifacts"]
            self._upload_model_tar(base / "model", artifact)
            self._finish_training(job, progress, started, None)
            _remove_succeeded(base)
        except Exception as exc:
            LOG.exception("local training job %s failed", job.training_job_name)
            self._finish_training(job, progress, started, f"InternalServerError: {exc}")

    def _prepare_training_dir(self, job: Any, base: Path) -> None:
        config = base / "input" / "config"
        config.mkdir(parents=True)
        (base / "model").mkdir()
        (base / "output").mkdir()
        (base / "checkpoints").mkdir()
        hyperparameters = {k: str(v) for k, v in (job.hyper_parameters or {}).items()}
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        channels = job.input_data_config or []
        (config / "inputdataconfig.json").write_text(
            json.dumps(
                {c["ChannelName"]: {"ContentType": c.get("ContentType", "")} for c in channels}
            )
        )
        (config / "resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
        )
        for channel in channels:
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            self._download_prefix(uri, base / "input" / "data" / channel["ChannelName"])
        checkpoint_uri = (job.checkpoint_config or {}).get("S3Uri")
        if checkpoint_uri:
            self._download_prefix(checkpoint_uri, base / "checkpoints")

    def _upload_checkpoints(self, job: Any, base: Path) -> None:
        checkpoint_uri = (job.checkpoint_config or {}).get("S3Uri")
        if not checkpoint_uri:
            return
        bucket, prefix = _split_s3_uri(checkpoint_uri)
        for path in sorted((base / "checkpoints").rglob("*")):
            if path.is_file():
                key = _join_key(prefix, path.relative_to(base / "checkpoints").as_posix())
                self._s3.upload_file(str(path), bucket, key)

    def _upload_model_tar(self, model_dir: Path, artifact_uri: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
        bucket, key = _split_s3_uri(artifact_uri)
        self._s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())

    def _finish_training(
        self, job: Any, progress: JobProgress, started: float, failure: str | None
    ) -> None:
        seconds = max(1, round(time.monotonic() - started))
        job.training_time_in_seconds = seconds
        job.billable_time_in_seconds = seconds
        job.training_end_time = datetime.now(UTC)
        job.last_modified_time = job.training_end_time
        if failure is None:
            job.training_job_status = job.secondary_status = "Completed"
            progress.status = "Completed"
        else:
            job.failure_reason = failure[:_FAILURE_REASON_MAX]
            job.training_job_status = job.secondary_status = "Failed"
            progress.status = "Failed"
        LOG.info("training job %s: %s in %ss", job.training_job_name, progress.status, seconds)

    def _run_transform(self, progress: JobProgress, job: Any, model: Any) -> None:
        started = time.monotonic()
        process: subprocess.Popen[bytes] | None = None
        try:
            if model is None:
                raise RuntimeError(f"model {job.model_name} does not exist")
            base = self._base_dir(job.transform_job_name)
            container = model.get("PrimaryContainer") or {}
            self._download_model_data(container, base / "model")
            env = {**(container.get("Environment") or {}), **(job.environment or {})}
            port = _free_port()
            process = self._spawn_worker(
                ["serve", "--base-dir", str(base), "--port", str(port)], base, env
            )
            progress.stage = "loading model"
            _wait_for_ping(port, process)
            self._transform_all(job, port, progress)
            _terminate(process)
            self._finish_transform(job, progress, None)
            _remove_succeeded(base)
        except Exception as exc:
            LOG.warning("local transform job %s failed: %s", job.transform_job_name, exc)
            self._finish_transform(job, progress, f"ClientError: {exc}")
        finally:
            if process is not None:
                _terminate(process)
                self._processes.discard(process)
            LOG.info(
                "transform job %s: %s in %.1fs",
                job.transform_job_name,
                progress.status,
                time.monotonic() - started,
            )

    def _download_model_data(self, container: Mapping[str, Any], model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        source = (container.get("ModelDataSource") or {}).get("S3DataSource")
        if source:
            self._download_prefix(source["S3Uri"], model_dir)
            return
        url = container.get("ModelDataUrl")
        if url:
            bucket, key = _split_s3_uri(url)
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
                tar.extractall(model_dir, filter="data")

    def _transform_all(self, job: Any, port: int, progress: JobProgress) -> None:
        source = job.transform_input["DataSource"]["S3DataSource"]
        in_bucket, in_prefix = _split_s3_uri(source["S3Uri"])
        out_bucket, out_prefix = _split_s3_uri(job.transform_output["S3OutputPath"])
        content_type = job.transform_input.get("ContentType") or "application/jsonlines"
        max_bytes = int(job.max_payload_in_mb or _DEFAULT_MAX_PAYLOAD_MB) * 1024 * 1024
        multi = (job.batch_strategy or "MultiRecord") == "MultiRecord"
        keys = self._list_keys(in_bucket, in_prefix)
        inputs = {key: self._read_lines(in_bucket, key) for key in keys}
        progress.stage, progress.unit = "extract", "records"
        progress.total = float(sum(len(lines) for lines in inputs.values()))
        started = time.monotonic()
        for key, lines in inputs.items():
            outputs: list[str] = []
            for batch in _batches(lines, max_bytes, multi, _LOCAL_MAX_RECORDS_PER_REQUEST):
                outputs.extend(_invoke(port, batch, content_type))
                progress.done += len(batch)
                rate = progress.done / max(time.monotonic() - started, 1e-6)
                progress.eta_s = (progress.total - progress.done) / rate if rate else None
            relative = key[len(in_prefix) :].lstrip("/") if in_prefix else key
            out_key = _join_key(out_prefix, f"{relative}.out")
            body = "\n".join(outputs) + ("\n" if outputs else "")
            self._s3.put_object(Bucket=out_bucket, Key=out_key, Body=body.encode())

    def _finish_transform(self, job: Any, progress: JobProgress, failure: str | None) -> None:
        job.transform_end_time = datetime.now(UTC)
        job.last_modified_time = job.transform_end_time
        if failure is None:
            job.transform_job_status = progress.status = "Completed"
        else:
            job.failure_reason = failure[:_FAILURE_REASON_MAX]
            job.transform_job_status = progress.status = "Failed"

    # -------------------------------------------------------------- processes and S3

    def _run_worker(self, args: list[str], base: Path, env: Mapping[str, str]) -> int:
        process = self._spawn_worker(args, base, env)
        try:
            return process.wait()
        finally:
            self._processes.discard(process)

    def _spawn_worker(
        self, args: list[str], base: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        log = (base / "worker.log").open("ab")
        process = subprocess.Popen(
            [*self._worker_command, *args],
            env={**self._worker_env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self._processes.add(process)
        return process

    def _list_keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(k for k in keys if not k.endswith("/"))

    def _read_lines(self, bucket: str, key: str) -> list[bytes]:
        body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return [line for line in body.splitlines() if line.strip()]

    def _download_prefix(self, uri: str, target: Path) -> None:
        bucket, prefix = _split_s3_uri(uri)
        target.mkdir(parents=True, exist_ok=True)
        for key in self._list_keys(bucket, prefix):
            relative = key[len(prefix) :].lstrip("/") or Path(key).name
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            self._s3.download_file(bucket, key, str(destination))


def _remove_succeeded(base: Path) -> None:
    """A finished job's files are in S3; only a failed job's folder is kept, to debug it."""
    shutil.rmtree(base, ignore_errors=True)


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


def _batches(
    lines: list[bytes], max_bytes: int, multi: bool, max_records: int
) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if len(line) + 1 > max_bytes:
            raise ValueError(f"a record of {len(line)} bytes exceeds MaxPayloadInMB")
        full = len(batch) >= max_records or size + len(line) + 1 > max_bytes
        if batch and (not multi or full):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += len(line) + 1
    if batch:
        yield batch


def _invoke(port: int, batch: list[bytes], content_type: str) -> list[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=b"\n".join(batch) + b"\n",
        headers={"Content-Type": content_type, "Accept": content_type},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise RuntimeError(f"/invocations answered {exc.code}: {detail}") from exc
    out = [line for line in text.splitlines() if line.strip()]
    if len(out) != len(batch):
        raise RuntimeError(f"/invocations returned {len(out)} lines for {len(batch)} records")
    return out


def _wait_for_ping(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _PING_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with code {process.returncode} before /ping")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the worker did not answer /ping within {_PING_TIMEOUT_S:.0f}s")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _join_key(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}" if prefix else name


def _tail(path: Path, lines: int = 5) -> str:
    if not path.exists():
        return ""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


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
