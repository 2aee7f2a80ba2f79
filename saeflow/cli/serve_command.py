"""``saeflow local serve`` and ``saeflow local status``.

serve: the local stack as a server on 127.0.0.1 with the template's EventBridge rule on,
so an upload under ``prompts/`` (the real AWS CLI, boto3, anything S3) starts a run.
status: the runs of a serving stack (found through ``<state-dir>/serve.json``), or, with
none serving, the reports persisted in the state dir.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, TextIO

LOG = logging.getLogger(__name__)

SERVE_FILE = "serve.json"


def serve(
    state_dir: Path,
    port: int,
    out: TextIO,
    *,
    verbose: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or ``stop``); persists state after every finished run."""
    from infra.local.stack import LocalStack, StackSettings, local_definition
    from saeflow.cli.bedrock_access import resolve_bedrock_access
    from saeflow.cli.labeler_choice import default_labeler

    stop = stop or threading.Event()
    # Before the local stack replaces the credential variables with its fake ones.
    bedrock = resolve_bedrock_access(os.environ)
    default_label = default_labeler(os.environ, bedrock_reachable=bedrock is not None)
    settings = StackSettings(
        state_dir=state_dir,
        public_port=port,
        enable_triggers=True,
        log_level="INFO" if verbose else "WARNING",
        echo_logs=verbose,
        # The deployed label function reads "auto" as Bedrock; locally it means this.
        function_environment={"SAEFLOW_AUTO_LABELER": default_label},
        function_environment_source=bedrock.environment if bedrock is not None else None,
    )
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with LocalStack(local_definition(), settings) as stack:
        bucket = stack.definition.bucket_name
        endpoint = stack.public_endpoint_url
        marker = state_dir / SERVE_FILE
        marker.write_text(
            json.dumps({"endpoint_url": endpoint, "pid": os.getpid(), "bucket": bucket})
        )
        out.write(
            f"saeflow local stack on {endpoint} (bucket {bucket}, state {state_dir})\n"
            f"  start a run:  aws --endpoint-url {endpoint} s3 cp p.jsonl "
            f"s3://{bucket}/prompts/p.jsonl\n"
            f"  list runs:    saeflow local status --state-dir {state_dir}\n"
            f"  labeller:     {default_label}"
            + (f" ({bedrock.describe()})" if bedrock is not None else "")
            + "\n"
            # The endpoint opens only now: anything that answers sees the restored state.
            + f"ready: {endpoint} accepts S3 calls ({stack.restored} stored objects and "
            "labels restored)\n"
        )
        out.flush()
        try:
            _serve_until(stack, stop, out)
        finally:
            marker.unlink(missing_ok=True)
    return 0


def _serve_until(stack: Any, stop: threading.Event, out: TextIO) -> None:
    finished: set[str] = set()
    while not stop.wait(1.0):
        try:
            executions = stack.list_executions()
        except Exception as exc:  # keep serving; the next poll may succeed
            LOG.warning("listing executions failed: %s", exc)
            continue
        done = [e for e in executions if e["status"] != "RUNNING" and e["name"] not in finished]
        for execution in done:
            finished.add(execution["name"])
            out.write(f"run {execution['name']}: {execution['status']}\n")
        if done:
            out.flush()
            stack.save()


def status(state_dir: Path, out: TextIO) -> int:
    marker = state_dir / SERVE_FILE
    if marker.exists():
        info = json.loads(marker.read_text())
        try:
            rows = _serving_runs(info["endpoint_url"])
        except Exception as exc:
            out.write(f"local stack at {info['endpoint_url']} does not answer ({exc})\n")
            rows = None
        if rows is not None:
            out.write(f"runs on {info['endpoint_url']}:\n")
            _print_rows(rows, out)
            return 0
    rows = _persisted_runs(state_dir)
    out.write(f"no local stack serving; reports kept in {state_dir}:\n")
    _print_rows(rows, out)
    return 0


def _serving_runs(endpoint_url: str) -> list[tuple[str, str, str]]:
    import boto3

    sfn = boto3.client(
        "stepfunctions",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="saeflow-local",
        aws_secret_access_key="saeflow-local",
    )
    rows: list[tuple[str, str, str]] = []
    for machine in sfn.list_state_machines()["stateMachines"]:
        for page in sfn.get_paginator("list_executions").paginate(
            stateMachineArn=machine["stateMachineArn"]
        ):
            for execution in page["executions"]:
                started = execution["startDate"].strftime("%Y-%m-%d %H:%M:%S")
                rows.append((execution["name"], execution["status"], started))
    return rows


def _persisted_runs(state_dir: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for reports in sorted((state_dir / "s3").glob("*/reports")):
        for folder in sorted(p for p in reports.iterdir() if p.is_dir()):
            state = "FAILED" if (folder / "error.json").exists() else "SUCCEEDED"
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(folder.stat().st_mtime))
            rows.append((folder.name, state, stamp))
    return rows


def _print_rows(rows: list[tuple[str, str, str]], out: TextIO) -> None:
    if not rows:
        out.write("  (none)\n")
    for name, state, started in rows:
        out.write(f"  {name:<56} {state:<10} {started}\n")
    out.flush()
