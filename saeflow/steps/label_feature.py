"""Workflow step "label_feature": label ONE feature (one item of the Map state).

Item: ``{"feature_id", "bundle_key", "sae_id", "labeler", "model_id", "run_id", "bucket"}``.
Reuses the registry's label for (sae_id, feature) when there is one; otherwise
explains the feature and scores the explanation (with the LLM the caller supplies,
or the offline heuristic), stores the label in the registry, writes
``runs/<run_id>/labels/<fid>.json`` and returns ``{"feature_id", "label_key"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from saeflow.core import layout
from saeflow.core.errors import LabelerError
from saeflow.core.labeling.label import (
    as_reused,
    label_heuristically,
    label_with_llm,
    reusable,
)
from saeflow.ports import Labeler, LabelRegistry, ObjectStore

logger = logging.getLogger(__name__)

# Given the item's "labeler" value (auto | bedrock | anthropic | offline) and its
# "model_id" (label.model_id, None = the deployment's default), the LLM backend to use,
# or None for the offline heuristic. The caller (Lambda handler or CLI) decides what
# "auto" means from the credentials it has (see saeflow.adapters.labelers).
LabelerFactory = Callable[[str, str | None], Labeler | None]


def run(
    event: dict[str, Any],
    *,
    store: ObjectStore,
    registry: LabelRegistry | None,
    labeler_for: LabelerFactory,
) -> dict[str, Any]:
    feature_id = int(event["feature_id"])
    sae_id = str(event["sae_id"])
    run_id = str(event["run_id"])
    backend = str(event.get("labeler", "auto"))
    if backend == "none":
        raise LabelerError("label_feature was called for label.backend=none")
    if event.get("bucket") and event["bucket"] != store.bucket:
        store = store.for_bucket(event["bucket"])

    model_id = event.get("model_id")
    labeler = None if backend == "offline" else labeler_for(backend, model_id)
    stored = registry.get(sae_id, feature_id) if registry is not None else None
    if stored is not None and reusable(stored, want_llm=labeler is not None):
        record = as_reused(stored, feature_id)
        logger.info("feature %d: reusing the registry's label (%s)", feature_id, sae_id)
    else:
        bundle = store.get_json(event["bundle_key"])
        record = label_heuristically(bundle) if labeler is None else label_with_llm(bundle, labeler)
        if registry is not None:
            registry.put(sae_id, feature_id, {k: v for k, v in record.items() if k != "reused"})
        logger.info(
            "feature %d labelled by %s: %r (score %s)",
            feature_id,
            record["label_source"],
            record["label"],
            record["score"],
        )
    key = layout.label_key(run_id, feature_id)
    store.put_json(key, record)
    return {"feature_id": feature_id, "label_key": key}
