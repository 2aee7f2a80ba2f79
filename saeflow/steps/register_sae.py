"""register_sae: unpack a trained SAE, apply the quality gate, register it under saes/.

Input: the state with ``$.run``, ``$.sae`` (mode ``train``) and ``$.training``
(``{"job_name", "model_artifacts": "s3://.../model.tar.gz", "billable_seconds"}``).

1. Streams ``model.tar.gz`` member by member (``tarfile`` mode ``r|gz``: bounded memory,
   never the whole archive) into ``runs/<id>/sae-candidate/``.
2. Reads ``metrics.json`` and applies the gate (``options.gate``): explained variance,
   dead fraction, CE loss recovered, L0 range (``max_l0`` None = d_sae / 2).
   A failing gate raises :class:`QualityGateFailed` naming every failing number.
3. Copies the candidate to ``$.sae.uri`` (``saes/<slug>/<hook>/<hash>/``), ``metrics.json``
   LAST: resolve_sae treats its presence as "this SAE is complete and reusable".

Returns ``$.registered`` = ``{"uri", "metrics", "gate": {"passed", "checks": [...]},
"weights_sha256"}``: the sha256 of ``sae_weights.safetensors``, also written to
``weights.sha256`` beside it (the label registry's key; see saeflow.steps.sae_weights).
"""

from __future__ import annotations

import logging
import math
import posixpath
import tarfile
from typing import Any

from saeflow.core import layout
from saeflow.core.errors import ObjectNotFound, QualityGateFailed, TrainingFailed
from saeflow.core.options import GateOptions, RunOptions
from saeflow.ports import ObjectStore
from saeflow.steps.sae_weights import HashingReader

logger = logging.getLogger(__name__)

REQUIRED_FILES = (*layout.SAE_FILES, layout.SAE_METRICS)


def _number(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def evaluate_gate(metrics: dict[str, Any], gate: GateOptions) -> dict[str, Any]:
    """Pure: ``{"passed": bool, "checks": [{"metric", "value", "op", "threshold", "passed"}]}``.

    A missing or non-finite metric fails its check (value None).
    """
    d_sae = _number(metrics, "d_sae")
    max_l0 = gate.max_l0 if gate.max_l0 is not None else (d_sae / 2 if d_sae else None)
    rules: list[tuple[str, str, float | None]] = [
        ("explained_variance", ">=", gate.min_explained_variance),
        ("dead_fraction", "<=", gate.max_dead_fraction),
        ("ce_loss_recovered", ">=", gate.min_ce_loss_recovered),
        ("l0", ">=", gate.min_l0),
        ("l0", "<=", max_l0),
    ]
    checks = []
    for metric, op, threshold in rules:
        if threshold is None:
            continue
        value = _number(metrics, metric)
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        checks.append(
            {"metric": metric, "value": value, "op": op, "threshold": threshold, "passed": ok}
        )
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def gate_failure_message(result: dict[str, Any]) -> str:
    failing = [
        f"{c['metric']} {'missing' if c['value'] is None else format(c['value'], '.4g')} "
        f"(needs {c['op']} {c['threshold']:.4g})"
        for c in result["checks"]
        if not c["passed"]
    ]
    return "the trained SAE failed the quality gate: " + "; ".join(failing)


def _member_path(name: str) -> str | None:
    """A safe relative path for a tar member, or None to skip it."""
    path = posixpath.normpath(name.lstrip("/"))
    if path in ("", ".") or path.startswith("../") or path == "..":
        return None
    return path


def unpack_model_tar(
    store: ObjectStore, artifacts_uri: str, dest_prefix: str, digests: dict[str, str] | None = None
) -> list[str]:
    """Stream the training job's model.tar.gz into ``dest_prefix``; returns relative paths.

    ``digests`` receives the sha256 of the weights file as it streams past.
    """
    bucket, key = layout.parse_s3_uri(artifacts_uri)
    source = store if bucket == store.bucket else store.for_bucket(bucket)
    written: list[str] = []
    try:
        stream = source.open_stream(key)
    except ObjectNotFound as exc:
        raise TrainingFailed(f"training produced no model artifacts at {artifacts_uri}") from exc
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as archive:
            for member in archive:
                path = _member_path(member.name)
                if not member.isfile() or path is None:
                    continue
                fileobj = archive.extractfile(member)
                if fileobj is None:
                    continue
                reader = HashingReader(fileobj)
                store.upload_stream(dest_prefix + path, reader)  # type: ignore[arg-type]
                if digests is not None and path == layout.SAE_WEIGHTS:
                    digests[path] = reader.sha256.hexdigest()
                written.append(path)
    except tarfile.TarError as exc:
        raise TrainingFailed(
            f"model artifacts {artifacts_uri} are not a valid tar.gz: {exc}"
        ) from exc
    finally:
        stream.close()
    return written


def run(event: dict[str, Any], *, store: ObjectStore) -> dict[str, Any]:
    run_id = event["run"]["run_id"]
    options = RunOptions.from_dict(event["run"]["options"])
    artifacts = event["training"]["model_artifacts"]
    candidate = layout.sae_candidate_prefix(run_id)

    digests: dict[str, str] = {}
    files = unpack_model_tar(store, artifacts, candidate, digests)
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise TrainingFailed(f"model artifacts {artifacts} lack {', '.join(missing)}")
    try:
        metrics = store.get_json(candidate + layout.SAE_METRICS)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise TrainingFailed(f"metrics.json in {artifacts} is not valid JSON: {exc}") from exc
    if not isinstance(metrics, dict):
        raise TrainingFailed(f"metrics.json in {artifacts} must hold a JSON object")

    gate = evaluate_gate(metrics, options.gate)
    logger.info("quality gate for run %s: %s", run_id, gate)
    if not gate["passed"]:
        raise QualityGateFailed(gate_failure_message(gate))

    _, dest = layout.parse_s3_uri(event["sae"]["uri"])
    weights_sha256 = digests[layout.SAE_WEIGHTS]
    store.put_bytes(dest + layout.SAE_WEIGHTS_SHA256, weights_sha256.encode(), "text/plain")
    # metrics.json last: its presence marks a complete SAE (resolve_sae's cache test).
    for path in sorted(files, key=lambda p: p == layout.SAE_METRICS):
        store.copy(candidate + path, dest + path)
    return {
        "uri": event["sae"]["uri"],
        "metrics": metrics,
        "gate": gate,
        "weights_sha256": weights_sha256,
    }
