"""start_run: an S3 "Object Created" event under ``prompts/`` -> one workflow execution.

Input: the EventBridge event (or just its ``detail``): ``detail.bucket.name``,
``detail.object.key``, ``detail.object["version-id"]`` (absent on unversioned buckets),
``detail.object.etag``.

- A sidecar ``*.options.json``, a folder marker (``.../``) or a key outside ``prompts/`` is
  not a run: returns ``{"started": False, "reason": ...}``.
- Any other key starts a run, even an unsupported suffix, so that validate writes
  ``error.json`` explaining what is accepted.
- The execution input is ``{"run_id", "bucket", "key", "version_id", "etag", "overrides": {}}``
  and the execution is named by the run id (duplicate events -> one execution).

Returns ``{"started": bool, "duplicate": bool, "run_id", "execution_arn"}`` (or a reason).
"""

from __future__ import annotations

import logging
from typing import Any

from saeflow.core import layout
from saeflow.ports import WorkflowStarter

logger = logging.getLogger(__name__)


def run_input_for(
    bucket: str, key: str, version_id: str | None, etag: str | None
) -> dict[str, Any]:
    """The execution input for an uploaded prompt set (deterministic for one upload)."""
    etag = (etag or "").strip('"') or None
    version_id = version_id if version_id and version_id != "null" else None
    return {
        "run_id": layout.run_id(bucket, key, version_id, etag),
        "bucket": bucket,
        "key": key,
        "version_id": version_id,
        "etag": etag,
        "overrides": {},
    }


def run(event: dict[str, Any], *, start_workflow: WorkflowStarter) -> dict[str, Any]:
    detail = event.get("detail", event)
    bucket = detail["bucket"]["name"]
    obj = detail["object"]
    key = obj["key"]
    if not key.startswith(layout.PROMPTS_PREFIX) or key.endswith("/"):
        return {"started": False, "duplicate": False, "reason": f"{key} is not a prompt set"}
    if layout.is_sidecar(key):
        return {"started": False, "duplicate": False, "reason": f"{key} is a run-options sidecar"}
    run_input = run_input_for(bucket, key, obj.get("version-id"), obj.get("etag"))
    result = start_workflow(run_input)
    logger.info(
        "run %s for s3://%s/%s: %s",
        run_input["run_id"],
        bucket,
        key,
        "duplicate event ignored" if result.get("duplicate") else "started",
    )
    return {
        "started": not result.get("duplicate", False),
        "duplicate": bool(result.get("duplicate", False)),
        "run_id": run_input["run_id"],
        "execution_arn": result.get("execution_arn"),
    }
