"""What a finished run leaves for the user: the report folder and the exit status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeflow.core import layout
from saeflow.core.errors import is_invalid_input

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    folder: Path
    exit_code: int
    message: str


def download_report(s3: Any, bucket: str, run_id: str, out_dir: Path) -> Path:
    """Copy ``reports/<run_id>/`` to ``out_dir/<run_id>/``."""
    prefix = layout.report_prefix(run_id)
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    folder = out_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) :]
            if not relative or relative.endswith("/"):
                continue
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
    return folder


def outcome_of(run_id: str, folder: Path, execution: dict[str, Any]) -> RunOutcome:
    """Exit 0 with the report path, 2 for invalid input, 1 for anything else."""
    index = folder / "index.html"
    if execution.get("status") == "SUCCEEDED" and index.exists():
        return RunOutcome(run_id, folder, EXIT_OK, str(index))
    error_file = folder / "error.json"
    if error_file.exists():
        error = json.loads(error_file.read_text())
        name = str(error.get("error", "RunFailed"))
        line = f" (line {error['line']})" if error.get("line") else ""
        message = f"{name}: {error.get('message', '')}{line}"
        code = EXIT_INVALID_INPUT if is_invalid_input(name) else EXIT_FAILED
        return RunOutcome(run_id, folder, code, f"{message} -- see {error_file}")
    status = execution.get("status", "UNKNOWN")
    cause = str(execution.get("error") or "") or "no report was written"
    return RunOutcome(run_id, folder, EXIT_FAILED, f"run {status.lower()}: {cause}")
