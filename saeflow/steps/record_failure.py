"""record_failure: turn a caught failure into error.json, a failure report and run.json status.

Input: the state with ``$.failure`` = ``{"Error", "Cause"}`` (what a Catch puts there) and
the run id at ``$.run_id`` (execution input) or ``$.run.run_id``.

The real error hides in ``Cause`` in different shapes (see :func:`explain_failure`):

- a Lambda error: ``{"errorType", "errorMessage", "stackTrace"}``; saeflow errors carry
  their line as a ``"line N: "`` prefix of the message (``SaeflowError.__str__``);
- a SageMaker ``.sync`` task: the Describe*Job response with ``FailureReason``. The worker
  writes ``"<ErrorName>: <message>"`` to its failure file, so a named saeflow error
  (e.g. ``InvalidHook``) survives; otherwise a training job gives ``TrainingFailed`` and a
  transform job ``ExtractionFailed``;
- anything else (``States.Timeout``...): the ``Error`` as is, ``Cause`` as the message.

Writes ``reports/<id>/error.json`` = ``{"run_id", "error", "message", "line"?}``,
``reports/<id>/index.html`` and ``summary.md`` (the report renderer given a failed report:
the error, the run facts and options known so far), and sets ``status: "failed"`` in
``runs/<id>/run.json``. Returns ``{"error", "message"}``.

A good report is never replaced: when write_report already wrote a succeeded report (a
later step, e.g. the ReportReady event, failed), ``reports/<id>/`` is left as it is and only
run.json records the failure (``"report_kept": true``).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import saeflow
from saeflow.core import layout
from saeflow.core.errors import ALL_ERRORS
from saeflow.core.report.build import ReportInputs, build_report
from saeflow.core.report.render import render_html, render_markdown
from saeflow.ports import ObjectStore
from saeflow.steps.run_record import has_good_report, now_iso, update_run_record

logger = logging.getLogger(__name__)

_LINE_PREFIX = re.compile(r"^line (\d+): (.*)$", re.DOTALL)
_NAMED_MESSAGE = re.compile(r"^([A-Za-z][A-Za-z0-9]*): (.*)$", re.DOTALL)
# SageMaker prefixes a job's failure file with the kind of failure.
_SAGEMAKER_PREFIXES = (
    "AlgorithmError: ",
    "ClientError: ",
    "InternalServerError: ",
    "CapacityError: ",
)
_MAX_MESSAGE = 4000


def _split_line(message: str) -> tuple[str, int | None]:
    match = _LINE_PREFIX.match(message)
    if match:
        return match.group(2), int(match.group(1))
    return message, None


def _from_failure_reason(reason: str, default_name: str) -> tuple[str, str]:
    text = reason
    for prefix in _SAGEMAKER_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    match = _NAMED_MESSAGE.match(text.strip())
    if match and match.group(1) in ALL_ERRORS:
        return match.group(1), match.group(2)
    return default_name, reason


def explain_failure(error: str | None, cause: str | None) -> dict[str, Any]:
    """Pure: ``{"error", "message", "line"?}`` from a Step Functions ``Error`` / ``Cause``."""
    name = error or "UnknownError"
    message = cause or ""
    parsed: Any = None
    if cause:
        try:
            parsed = json.loads(cause)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict):
        if "errorMessage" in parsed or "errorType" in parsed:  # a Lambda error
            error_type = parsed.get("errorType")
            if name not in ALL_ERRORS and error_type in ALL_ERRORS:
                name = error_type
            message = str(parsed.get("errorMessage", ""))
        elif (
            "FailureReason" in parsed
            or "TrainingJobStatus" in parsed
            or "TransformJobStatus" in parsed
        ):
            default = "ExtractionFailed" if "TransformJobStatus" in parsed else "TrainingFailed"
            job = parsed.get("TrainingJobName") or parsed.get("TransformJobName") or "the job"
            reason = str(
                parsed.get("FailureReason")
                or f"{job} ended {parsed.get('TrainingJobStatus') or parsed.get('TransformJobStatus')}"
            )
            name, message = _from_failure_reason(reason, default)
        elif "errorMessage" not in parsed and "message" in parsed:
            message = str(parsed["message"])
    message, line = _split_line(message.strip())
    body: dict[str, Any] = {"error": name, "message": message[:_MAX_MESSAGE] or name}
    if line is not None:
        body["line"] = line
    return body


def failure_report_files(
    run_id: str, failure: dict[str, Any], run_record: dict[str, Any] | None = None
) -> tuple[str, str]:
    """``(index.html, summary.md)`` of a failed run, from what run.json knew (if anything)."""
    run_record = run_record or {}
    report = build_report(
        ReportInputs(
            run_id=run_id,
            status="failed",
            error=failure,
            options=run_record.get("options") or {},
            run_json=run_record,
            versions={"saeflow": saeflow.__version__},
        )
    )
    return render_html(report), render_markdown(report)


def run(event: dict[str, Any], *, store: ObjectStore) -> dict[str, Any]:
    run_id = event.get("run_id") or (event.get("run") or {}).get("run_id")
    if not run_id:
        raise ValueError("record_failure needs $.run_id or $.run.run_id")
    raw = event.get("failure") or {}
    failure = explain_failure(raw.get("Error"), raw.get("Cause"))
    logger.info("run %s failed: %s", run_id, failure)

    kept = has_good_report(store, run_id)
    if not kept:
        write_failure_files(store, run_id, failure)
    update_run_record(
        store, run_id, status="failed", error=failure, failed_at=now_iso(), report_kept=kept
    )
    return {"error": failure["error"], "message": failure["message"]}


def write_failure_files(store: ObjectStore, run_id: str, failure: dict[str, Any]) -> None:
    """error.json and the failure page (the report renderer given a failed report, with the
    run facts and options run.json holds so far)."""
    run_key = layout.run_json_key(run_id)
    run_record = store.get_json(run_key) if store.exists(run_key) else {"run_id": run_id}
    store.put_json(layout.error_key(run_id), {"run_id": run_id, **failure})
    page, summary = failure_report_files(run_id, failure, run_record)
    store.put_bytes(
        layout.report_html_key(run_id), page.encode("utf-8"), "text/html; charset=utf-8"
    )
    store.put_bytes(
        layout.summary_key(run_id), summary.encode("utf-8"), "text/markdown; charset=utf-8"
    )
