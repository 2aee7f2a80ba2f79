"""What each reported feature's bundle holds, and which features get labelled.

A bundle (``runs/<id>/features/<fid>.json``) is everything a labeller and the report need
about one feature: its statistics, prompt windows (strongest, sampled, random), the
corpus's feature data, the corpus windows where it is silent, and, for the shuffled-label
baseline, another labelled feature's held-out contexts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saeflow.core.labeling.detection import baseline_partners
from saeflow.core.labeling.examples import split_examples

CORPUS_FIELDS = (
    "density",
    "max_activation",
    "top_examples",
    "random_examples",
    "histogram",
    "promoted_tokens",
    "suppressed_tokens",
    "first_token",
)
NEGATIVES_PER_FEATURE = 12


@dataclass(frozen=True)
class LabelBudget:
    """How many features may be labelled. The spend (``label.max_usd``) is capped while
    labelling, on what the requests actually cost (saeflow.steps.label_feature)."""

    max_features: int | None = None


def choose_features_to_label(reported_ids: list[int], budget: LabelBudget) -> tuple[list[int], str]:
    """The prefix of ``reported_ids`` the budget allows, and why it stops where it does."""
    n = len(reported_ids)
    if budget.max_features is not None and budget.max_features < n:
        n = max(0, budget.max_features)
        return reported_ids[:n], f"capped at label.max_features={budget.max_features}"
    return reported_ids, f"all {n} reported features"


def pick_corpus_data(
    lines: Iterable[Mapping[str, Any]], wanted: set[int]
) -> dict[int, dict[str, Any]]:
    """One streaming pass over feature_data.jsonl records, keeping only ``wanted`` ids."""
    found: dict[int, dict[str, Any]] = {}
    for line in lines:
        fid = line.get("id")
        if isinstance(fid, int) and fid in wanted:
            found[fid] = {key: line[key] for key in CORPUS_FIELDS if key in line}
            if len(found) == len(wanted):
                break
    return found


def corpus_negatives(
    windows: Sequence[Mapping[str, Any]], feature_id: int, limit: int = NEGATIVES_PER_FEATURE
) -> list[dict[str, Any]]:
    """Corpus windows (``corpus_windows.jsonl``) where the feature does not fire at all."""
    out = []
    for window in windows:
        per_token = window.get("features") or ()
        if any(int(entry[0]) == feature_id for token in per_token for entry in token):
            continue
        tokens = [str(t) for t in window.get("tokens") or ()]
        out.append({"tokens": tokens, "activations": [0.0] * len(tokens), "max": 0.0})
        if len(out) >= limit:
            break
    return out


def prompt_windows_for(windows: Sequence[Mapping[str, Any]], feature_id: int) -> list[dict]:
    """The pooled random prompt windows, with this feature's activations (mostly zeros)."""
    key = str(feature_id)
    out = []
    for window in windows:
        tokens = list(window["tokens"])
        acts = (window.get("features") or {}).get(key) or [0.0] * len(tokens)
        out.append({"tokens": tokens, "activations": list(acts), "max": max(acts, default=0.0)})
    return out


def build_bundle(
    *,
    feature_id: int,
    sae_id: str,
    run_id: str,
    stats: Mapping[str, Any],
    prompt_examples: list[dict[str, Any]],
    prompt_samples: list[dict[str, Any]],
    random_windows: list[dict[str, Any]],
    corpus: Mapping[str, Any] | None,
    negatives: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "feature_id": feature_id,
        "sae_id": sae_id,
        "run_id": run_id,
        "stats": dict(stats),
        "prompt_examples": prompt_examples,
        "prompt_samples": prompt_samples,
        "random_windows": random_windows,
        "corpus": dict(corpus) if corpus is not None else None,
        "corpus_negatives": negatives,
        "baseline": None,
    }


def attach_baselines(bundles: Mapping[int, dict[str, Any]], labelled: Sequence[int]) -> None:
    """Give each labelled bundle its partner's held-out contexts (shuffled-label baseline)."""
    partners = baseline_partners([f for f in labelled if f in bundles])
    for fid, partner in partners.items():
        contexts = split_examples(bundles[partner]).held_out
        bundles[fid]["baseline"] = {
            "feature_id": partner,
            "contexts": [
                {k: ctx[k] for k in ("tokens", "activations", "max", "fires", "source") if k in ctx}
                for ctx in contexts
            ],
        }
