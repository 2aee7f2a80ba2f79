"""What the label registry stores, and when a stored label may stand for a new one.

A registry entry is keyed by :class:`~saeflow.ports.RegistryKey` (the SAE's weights hash,
the labeller's model id, the prompt version) and the feature id. It records the label,
its detection score and shuffled baseline, the run that wrote it and when.

A stored label is reused only when it was written by the same model and prompt version
(the key says so; the record is checked again) and it beat its baseline: its balanced
accuracy on its own held-out contexts is above the same label's on another feature's.
Anything else is relabelled, and the new label replaces the stored one (conditionally: if
another run replaced it meanwhile, that run's label stands).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saeflow.core.labeling.prompts import PROMPT_VERSION
from saeflow.core.labeling.session import Usage
from saeflow.ports import Labeler, RegistryKey

OFFLINE_MODEL_ID = "offline-heuristic"
# The offline rule has no prompt to hash, so its version is a hash of the code that shapes
# its labels and scores. A hand-bumped constant was forgotten once, and a report showed a
# label scored by a rule that no longer existed.
_OFFLINE_SOURCES = ("offline.py", "examples.py", "detection.py", "label.py")


def _offline_version() -> str:
    digest = hashlib.sha256()
    for name in _OFFLINE_SOURCES:
        digest.update((Path(__file__).with_name(name)).read_bytes())
    return f"h-{digest.hexdigest()[:10]}"


OFFLINE_VERSION = _offline_version()
RECORD_FIELDS = (
    "feature_id",
    "label",
    "explanation",
    "confidence",
    "label_source",
    "score",
    "score_reason",
    "score_method",
    "detection",
    "baseline",
)


def registry_key(weights_sha256: str, labeler: Labeler | None) -> RegistryKey:
    if labeler is None:
        return RegistryKey(weights_sha256, OFFLINE_MODEL_ID, OFFLINE_VERSION)
    return RegistryKey(weights_sha256, labeler.model_id, PROMPT_VERSION)


def beat_baseline(record: Mapping[str, Any]) -> bool:
    own = (record.get("detection") or {}).get("balanced_accuracy")
    base = (record.get("baseline") or {}).get("balanced_accuracy")
    return own is not None and base is not None and own > base


def reuse_refusal(stored: Mapping[str, Any] | None, key: RegistryKey) -> str | None:
    """Why ``stored`` may not stand for a new label (None: reuse it)."""
    if not stored or not stored.get("label"):
        return "no stored label"
    if stored.get("model_id") != key.model_id or stored.get("prompt_version") != key.prompt_version:
        return "stored by another model or prompt version"
    if not beat_baseline(stored):
        return "the stored label did not beat its shuffled baseline"
    return None


def registry_entry(
    record: Mapping[str, Any], key: RegistryKey, *, run_id: str, labelled_at: str
) -> dict[str, Any]:
    """The registry's copy of a label record: the label, its scores, who wrote it, when."""
    entry = {name: record.get(name) for name in RECORD_FIELDS}
    entry.update(
        {
            "weights_sha256": key.weights_sha256,
            "model_id": key.model_id,
            "prompt_version": key.prompt_version,
            "run_id": run_id,
            "labelled_at": labelled_at,
        }
    )
    return entry


def as_reused(stored: Mapping[str, Any], feature_id: int, why: str) -> dict[str, Any]:
    """A stored label as this run's record: no tokens spent now."""
    record = dict(stored)
    record["feature_id"] = feature_id
    record["reused"] = True
    record["reused_why"] = why
    record["usage"] = Usage().to_dict()
    return record
