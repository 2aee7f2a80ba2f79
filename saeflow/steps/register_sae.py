"""register_sae: unpack a trained SAE, apply the quality gate, register it under saes/.

Input: the state with ``$.run``, ``$.sae`` (mode ``train``) and ``$.training``
(``{"job_name", "model_artifacts": "s3://.../model.tar.gz", "billable_seconds"}``).

1. Streams ``model.tar.gz`` member by member (``tarfile`` mode ``r|gz``: bounded memory,
   never the whole archive) into ``runs/<id>/sae-candidate/``.
2. Reads ``metrics.json`` and applies the gate (``options.gate``): explained variance,
   dead fraction, CE loss recovered, L0 range (``max_l0`` None = d_sae / 2).
   A failing gate raises :class:`QualityGateFailed` naming every failing number.
3. Registers it at ``$.sae.uri`` (``saes/<slug>/<hook>/<hash>/``) atomically: two runs
   that trained the same SAE end with ONE consistent SAE. The first to create the claim
   ``saeflow_registration.json`` (a conditional write) copies its files, ``metrics.json``
   LAST (resolve_sae treats its presence as "complete and reusable"); any other run adopts
   the registered SAE (its own candidate stays in its run folder). A run that finds a claim
   without ``metrics.json`` raises :class:`SaeRegistrationInProgress` (the state machine
   retries); a claim older than :data:`CLAIM_TTL_S` (its writer died) is taken over.

Returns ``$.registered`` = ``{"uri", "metrics", "gate": {"passed", "checks": [...]},
"adopted": bool, "weights_sha256"}``: the sha256 of ``sae_weights.safetensors`` (hashed while
it unpacks), written to ``weights.sha256`` beside it before ``metrics.json`` (the label
registry's key; see saeflow.steps.sae_weights). An adopted SAE's hash is the one its
registering run wrote.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import tarfile
import time
from collections.abc import Callable
from typing import Any

from saeflow.core import layout
from saeflow.core.errors import (
    ObjectNotFound,
    QualityGateFailed,
    SaeRegistrationInProgress,
    TrainingFailed,
)
from saeflow.core.options import GateOptions, RunOptions
from saeflow.ports import ObjectStore
from saeflow.steps.sae_weights import HashingReader, directory_weights

logger = logging.getLogger(__name__)

REQUIRED_FILES = (*layout.SAE_FILES, layout.SAE_METRICS)
# A claim this old without metrics.json belongs to a register_sae that died (Lambda's
# limit is 15 minutes); another run may take it over.
CLAIM_TTL_S = 1200


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


def run(
    event: dict[str, Any], *, store: ObjectStore, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    run_id = event["run"]["run_id"]
    options = RunOptions.from_dict(event["run"]["options"])
    artifacts = event["training"]["model_artifacts"]
    candidate = layout.sae_candidate_prefix(run_id)
    _, dest = layout.parse_s3_uri(event["sae"]["uri"])
    if store.exists(dest + layout.SAE_METRICS):  # a Lambda retry, or another run was first
        return adopt_registered(store, event["sae"]["uri"], dest, options)

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

    if not claim_registration(store, dest, run_id, clock()):
        return adopt_registered(store, event["sae"]["uri"], dest, options)
    weights_sha256 = digests[layout.SAE_WEIGHTS]
    store.put_bytes(dest + layout.SAE_WEIGHTS_SHA256, weights_sha256.encode(), "text/plain")
    # metrics.json last: its presence marks a complete SAE (resolve_sae's cache test).
    for path in sorted(files, key=lambda p: p == layout.SAE_METRICS):
        store.copy(candidate + path, dest + path)
    return {
        "uri": event["sae"]["uri"],
        "metrics": metrics,
        "gate": gate,
        "adopted": False,
        "weights_sha256": weights_sha256,
    }


def claim_registration(store: ObjectStore, dest: str, run_id: str, now: float) -> bool:
    """True when this run may copy its SAE to ``dest``; False when another run registered
    it meanwhile. Raises :class:`SaeRegistrationInProgress` while another run copies."""
    key = dest + layout.SAE_REGISTRATION_CLAIM
    claim = json.dumps({"run_id": run_id, "claimed_at": now}).encode()
    if store.put_bytes_if(key, claim, etag=None):
        return True
    etag = store.etag(key)
    try:
        held = store.get_json(key)
    except (ObjectNotFound, ValueError):
        held = {}
    if store.exists(dest + layout.SAE_METRICS):
        return False
    if held.get("run_id") == run_id:
        return True  # this run's own claim: a retried invocation continues the copy
    age = now - float(held.get("claimed_at") or 0)
    if age > CLAIM_TTL_S and etag is not None and store.put_bytes_if(key, claim, etag=etag):
        logger.warning("took over a stale registration claim (%.0f s old) at %s", age, dest)
        return True
    raise SaeRegistrationInProgress(
        f"run {held.get('run_id', '?')} is registering the same SAE at {dest}; waiting for it"
    )


def adopt_registered(
    store: ObjectStore, uri: str, dest: str, options: RunOptions
) -> dict[str, Any]:
    """Use the SAE another run (or an earlier attempt) registered: one SAE for everyone."""
    metrics = store.get_json(dest + layout.SAE_METRICS)
    gate = evaluate_gate(metrics, options.gate)
    if not gate["passed"]:
        raise QualityGateFailed(gate_failure_message(gate) + " (the SAE registered at " + uri + ")")
    logger.info("SAE %s was registered by another run; using it", uri)
    # The registered weights are the other run's: their hash, never this run's candidate's.
    weights = directory_weights(store, dest)
    return {
        "uri": uri,
        "metrics": metrics,
        "gate": gate,
        "adopted": True,
        "weights_sha256": weights["weights_sha256"],
    }
