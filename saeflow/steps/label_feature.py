"""Workflow step "label_feature": label ONE feature (one item of the Map state).

Item: ``{"feature_id", "bundle_key", "weights_sha256", "labeler", "model_id", "max_usd",
"refresh", "run_id", "bucket"}``: the aggregate step's item (feature id, bundle key) with
its ``label_settings`` and the run's id and bucket, as the Map's ItemSelector builds it.

1. This run labelled the feature already (a retried item): that record is the answer.
2. The registry holds a label for (weights, labeller model, prompt version, feature)
   that beat its shuffled baseline, and ``refresh`` is off: reuse it, no request.
3. Otherwise explain and score the feature (the LLM the caller supplies, or the offline
   heuristic), resuming from ``labels/<fid>.progress.json`` when an earlier attempt got
   the explanation, within the run's spending cap (``max_usd``, on actual spend) and the
   invocation's time. The label is stored in the registry with a conditional write: if
   another run stored one first, that label stands for this run too.

Writes ``runs/<run_id>/labels/<fid>.json`` (a label, or an unlabelled record with the
reason) and returns ``{"feature_id", "label_key", "labelled"}``. Throttling and
``LabelerOutOfTime`` propagate for the Map's Retry; other failures of the labeller are
recorded as an unlabelled feature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saeflow.core import layout
from saeflow.core.errors import LabelerError, ObjectNotFound
from saeflow.core.labeling.label import label_heuristically, label_with_llm
from saeflow.core.labeling.registry import (
    as_reused,
    registry_entry,
    registry_key,
    reuse_refusal,
)
from saeflow.core.labeling.session import InMemoryLedger, LabelSession, Limits
from saeflow.ports import Labeler, LabelRegistry, ObjectStore, RegistryKey, SpendLedger
from saeflow.steps.run_record import now_iso

logger = logging.getLogger(__name__)

# Given the item's "labeler" value (auto | bedrock | anthropic | offline) and its
# "model_id" (label.model_id, None = the deployment's default), the LLM backend to use,
# or None for the offline heuristic. The caller (Lambda handler or CLI) decides what
# "auto" means from the credentials it has (see saeflow.adapters.labelers).
LabelerFactory = Callable[[str, str | None], Labeler | None]
_PROCESS_LEDGER = InMemoryLedger()  # when no registry table holds the run's counter


@dataclass(frozen=True)
class LabelStepSettings:
    """The invocation's clock: seconds left, and how long one request may take."""

    remaining_s: Callable[[], float] | None = None
    request_worst_s: float = 0.0


def _read(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        value = store.get_json(key)
    except (ObjectNotFound, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _done_already(store: ObjectStore, key: str, feature_id: int) -> dict[str, Any] | None:
    record = _read(store, key)
    return record if record and record.get("feature_id") == feature_id else None


def _resume(store: ObjectStore, key: str, registry_key_: RegistryKey | None) -> dict | None:
    progress = _read(store, key)
    if not progress or (
        registry_key_ is not None
        and progress.get("prompt_version") not in (None, registry_key_.prompt_version)
    ):
        return None
    return progress


def _label_now(
    event: dict[str, Any],
    store: ObjectStore,
    labeler: Labeler | None,
    key: RegistryKey | None,
    ledger: SpendLedger,
    settings: LabelStepSettings,
) -> dict[str, Any]:
    feature_id, run_id = int(event["feature_id"]), str(event["run_id"])
    bundle = store.get_json(event["bundle_key"])
    if labeler is None:
        return label_heuristically(bundle)
    progress_key = layout.label_progress_key(run_id, feature_id)
    version = key.prompt_version if key is not None else None
    max_usd = event.get("max_usd")
    limits = Limits(
        run_id=run_id,
        ledger=ledger,
        max_usd=float(max_usd) if max_usd is not None else None,
        remaining_s=settings.remaining_s,
        request_worst_s=settings.request_worst_s,
    )
    return label_with_llm(
        bundle,
        LabelSession(labeler, limits),
        resume=_resume(store, progress_key, key),
        save_progress=lambda p: store.put_json(progress_key, {**p, "prompt_version": version}),
    )


def run(
    event: dict[str, Any],
    *,
    store: ObjectStore,
    registry: LabelRegistry | None,
    labeler_for: LabelerFactory,
    ledger: SpendLedger | None = None,
    settings: LabelStepSettings | None = None,
) -> dict[str, Any]:
    settings = settings or LabelStepSettings()
    feature_id, run_id = int(event["feature_id"]), str(event["run_id"])
    backend = str(event.get("labeler", "auto"))
    if backend == "none":
        raise LabelerError("label_feature was called for label.backend=none")
    if event.get("bucket") and event["bucket"] != store.bucket:
        store = store.for_bucket(event["bucket"])
    label_key = layout.label_key(run_id, feature_id)
    done = _done_already(store, label_key, feature_id)
    if done is not None:
        logger.info("feature %d: labelled already by this run", feature_id)
        return _result(feature_id, label_key, done)

    labeler = None if backend == "offline" else labeler_for(backend, event.get("model_id"))
    weights = event.get("weights_sha256")
    key = registry_key(weights, labeler) if registry is not None and weights else None
    stored = registry.get(key, feature_id) if key is not None and registry is not None else None
    refusal = "no registry key (weights hash)"
    if event.get("refresh"):
        refusal = "label.refresh=true"
    elif key is not None:
        refusal = reuse_refusal(stored, key)
    if stored is not None and refusal is None:
        record = as_reused(stored, feature_id, "stored label that beat its baseline")
    else:
        record = _label_now(event, store, labeler, key, ledger or _PROCESS_LEDGER, settings)
        if key is not None and registry is not None and record.get("label"):
            record = _store_first(registry, key, record, stored, run_id)
    store.put_json(label_key, record)
    logger.info(
        "feature %d: %s (%s; reuse: %s)",
        feature_id,
        repr(record.get("label")) if record.get("label") else record.get("unlabelled_reason"),
        record.get("label_source"),
        refusal or "yes",
    )
    return _result(feature_id, label_key, record)


def _store_first(
    registry: LabelRegistry,
    key: RegistryKey,
    record: dict[str, Any],
    stored: dict[str, Any] | None,
    run_id: str,
) -> dict[str, Any]:
    """Store the new label; if another run got there first, its label stands for this run."""
    entry = registry_entry(record, key, run_id=run_id, labelled_at=now_iso())
    replacing = str(stored.get("run_id") or "") if stored else None
    winner = registry.put_first(key, int(record["feature_id"]), entry, replacing=replacing)
    if not winner or not winner.get("label"):
        return {**record, **{k: entry[k] for k in ("model_id", "prompt_version", "run_id")}}
    adopted = as_reused(winner, int(record["feature_id"]), "another run stored its label first")
    adopted["usage"] = record.get("usage")  # what this run spent is still spent
    return adopted


def _result(feature_id: int, label_key: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"feature_id": feature_id, "label_key": label_key, "labelled": bool(record.get("label"))}
