"""A SageMaker batch-transform job run locally by the worker's HTTP server.

The model's S3 data in ``<base>/model``, ``python -m gpu_worker serve`` on a free
127.0.0.1 port with the model's Environment, ``GET /ping`` until ready, then every input
object split by line, batched (MultiRecord) up to MaxPayloadInMB, ``POST /invocations``,
and ``<object>.out`` written under S3OutputPath.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from infra.local.job_context import FAILURE_REASON_MAX, JobContext, JobProgress
from infra.local.job_files import join_key, split_s3_uri
from infra.local.worker_processes import free_port, wait_for_ping

LOG = logging.getLogger(__name__)

_DEFAULT_MAX_PAYLOAD_MB = 6
# SageMaker fills each MultiRecord request up to MaxPayloadInMB. Locally a request also
# stops at this many records, so the progress bar moves while the CPU works; it stays
# large because the worker batches only within a request (8 records a request cost a
# fifth of the throughput: `make bench` scale part, serve_gap).
_LOCAL_MAX_RECORDS_PER_REQUEST = 256


def run_transform_job(context: JobContext, job: Any, model: Any) -> None:
    started = time.monotonic()
    process: subprocess.Popen[bytes] | None = None
    try:
        if model is None:
            raise RuntimeError(f"model {job.model_name} does not exist")
        base = context.fresh_base()
        container = model.get("PrimaryContainer") or {}
        download_model_data(context, container)
        env = {**(container.get("Environment") or {}), **(job.environment or {})}
        port = free_port()
        process = context.workers.spawn(
            ["serve", "--base-dir", str(base), "--port", str(port)], base, env
        )
        context.progress.stage = "loading model"
        wait_for_ping(port, process)
        transform_all(context, job, port)
        context.workers.stop(process)
        finish_transform(job, context.progress, None)
        context.remove_base()
    except Exception as exc:
        LOG.warning("local transform job %s failed: %s", job.transform_job_name, exc)
        finish_transform(job, context.progress, f"ClientError: {exc}")
    finally:
        if process is not None:
            context.workers.stop(process)
        seconds = time.monotonic() - started
        status = context.progress.status
        LOG.info("transform job %s: %s in %.1fs", job.transform_job_name, status, seconds)


def download_model_data(context: JobContext, container: Mapping[str, Any]) -> None:
    """The model's S3 prefix (ModelDataSource) or model.tar.gz (ModelDataUrl) in base/model."""
    model_dir = context.base / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if source:
        context.files.download_prefix(source["S3Uri"], model_dir)
    elif container.get("ModelDataUrl"):
        context.files.extract_tar(container["ModelDataUrl"], model_dir)


def transform_all(context: JobContext, job: Any, port: int) -> None:
    """Every input object through /invocations; ``<key>.out`` under S3OutputPath."""
    files, progress = context.files, context.progress
    in_bucket, in_prefix = split_s3_uri(job.transform_input["DataSource"]["S3DataSource"]["S3Uri"])
    out_bucket, out_prefix = split_s3_uri(job.transform_output["S3OutputPath"])
    content_type = job.transform_input.get("ContentType") or "application/jsonlines"
    max_bytes = int(job.max_payload_in_mb or _DEFAULT_MAX_PAYLOAD_MB) * 1024 * 1024
    multi = (job.batch_strategy or "MultiRecord") == "MultiRecord"
    keys = files.list_keys(in_bucket, in_prefix)
    progress.stage, progress.unit = "extract", "records"
    # One object in memory at a time (a big set has many); counted first for the bar.
    progress.total = float(sum(len(files.read_lines(in_bucket, key)) for key in keys))
    started = time.monotonic()
    for key in keys:
        lines = files.read_lines(in_bucket, key)
        outputs: list[str] = []
        for batch in batches(lines, max_bytes, multi, _LOCAL_MAX_RECORDS_PER_REQUEST):
            outputs.extend(invoke(port, batch, content_type))
            _advance(progress, len(batch), started)
        relative = key[len(in_prefix) :].lstrip("/") if in_prefix else key
        files.write_lines(out_bucket, join_key(out_prefix, f"{relative}.out"), outputs)


def _advance(progress: JobProgress, records: int, started: float) -> None:
    progress.done += records
    rate = progress.done / max(time.monotonic() - started, 1e-6)
    progress.eta_s = (progress.total - progress.done) / rate if rate and progress.total else None


def batches(
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


def invoke(port: int, batch: list[bytes], content_type: str) -> list[str]:
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


def finish_transform(job: Any, progress: JobProgress, failure: str | None) -> None:
    """Set what DescribeTransformJob answers once the job ended."""
    job.transform_end_time = datetime.now(UTC)
    job.last_modified_time = job.transform_end_time
    if failure is not None:
        job.failure_reason = failure[:FAILURE_REASON_MAX]
    job.transform_job_status = progress.status = "Completed" if failure is None else "Failed"
