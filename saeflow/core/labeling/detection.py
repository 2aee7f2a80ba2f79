"""Detection scores: does the label tell activating from non-activating held-out contexts?

For one feature, the labeller predicts "fires" or "does not fire" for each held-out context
(:mod:`saeflow.core.labeling.examples`) from the label alone; the score is the balanced
accuracy of those predictions with a 95% interval. Chance is 0.5 by construction.

The run's baseline is the same score for *shuffled* labels: feature i's label judged on
feature j's held-out contexts (j is i's successor in the labelled list). A label that
beats its baseline says something specific about its own feature, not just something
true of any text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saeflow.core.stats import balanced_accuracy, mean_ci

DETECTION_METHOD = (
    "detection: from the label alone, predict which held-out contexts make the feature fire "
    "(activating contexts across its activation range and as many non-activating ones, from "
    "the prompts and the corpus); balanced accuracy, 95% interval by the normal "
    "approximation with one success and one failure added per class"
)
BASELINE_METHOD = (
    "shuffled labels: each label judged on another labelled feature's held-out contexts "
    "(the next feature in the labelled list)"
)
MIN_PER_CLASS = 2


@dataclass(frozen=True)
class Detection:
    balanced_accuracy: float | None
    ci95: tuple[float, float] | None
    n_positive: int
    n_negative: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any] | None:
        if self.balanced_accuracy is None:
            return None
        return {
            "balanced_accuracy": round(self.balanced_accuracy, 4),
            "ci95": [round(v, 4) for v in self.ci95] if self.ci95 else None,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
        }


def detection_score(predicted: Sequence[bool], contexts: Sequence[Mapping[str, Any]]) -> Detection:
    """Balanced accuracy of ``predicted`` against each context's ``fires``."""
    actual = [bool(ctx.get("fires")) for ctx in contexts]
    result = balanced_accuracy(list(predicted), actual, min_per_class=MIN_PER_CLASS)
    reason = None
    if result.value is None:
        reason = (
            f"too few held-out contexts to score ({result.n_positive} activating, "
            f"{result.n_negative} non-activating; {MIN_PER_CLASS} of each needed)"
        )
    return Detection(result.value, result.ci95, result.n_positive, result.n_negative, reason)


def baseline_partners(feature_ids: Sequence[int]) -> dict[int, int]:
    """Each labelled feature's partner for the shuffled-label baseline (a derangement)."""
    ids = list(feature_ids)
    if len(ids) < 2:
        return {}
    return {fid: ids[(i + 1) % len(ids)] for i, fid in enumerate(ids)}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's labelling summary: mean score vs the shuffled baseline, and a verdict."""
    scored = [r for r in records if (r.get("detection") or {}).get("balanced_accuracy") is not None]
    paired = [r for r in scored if (r.get("baseline") or {}).get("balanced_accuracy") is not None]
    summary: dict[str, Any] = {
        "method": DETECTION_METHOD,
        "baseline_method": BASELINE_METHOD,
        "n_scored": len(scored),
        "mean_balanced_accuracy": None,
        "baseline_mean_balanced_accuracy": None,
        "improvement": None,
        "improvement_ci95": None,
        "verdict": "no label could be scored",
    }
    if scored:
        summary["mean_balanced_accuracy"] = round(
            mean_ci([r["detection"]["balanced_accuracy"] for r in scored])[0], 4
        )
    if paired:
        baseline, _ = mean_ci([r["baseline"]["balanced_accuracy"] for r in paired])
        diffs = [
            r["detection"]["balanced_accuracy"] - r["baseline"]["balanced_accuracy"] for r in paired
        ]
        improvement, ci = mean_ci(diffs)
        summary["baseline_mean_balanced_accuracy"] = round(baseline, 4)
        summary["improvement"] = round(improvement, 4)
        summary["improvement_ci95"] = [round(v, 4) for v in ci] if ci else None
        summary["verdict"] = _verdict(improvement, ci, len(paired))
    elif scored:
        summary["verdict"] = "no shuffled baseline (fewer than two labels were scored)"
    summary.update(unlabelled_summary(records))
    if summary["n_unlabelled"]:
        top = summary["unlabelled_reasons"][0]
        summary["verdict"] += (
            f"; {summary['n_unlabelled']} of {len(records)} features left unlabelled "
            f"({top['reason']}{' and other reasons' if len(summary['unlabelled_reasons']) > 1 else ''})"
        )
    return summary


def unlabelled_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How many labelling attempts ended without a label, and why (most frequent first)."""
    reasons: dict[str, int] = {}
    for record in records:
        if not record.get("label") and record.get("unlabelled_reason"):
            reason = _reason_kind(str(record["unlabelled_reason"]))
            reasons[reason] = reasons.get(reason, 0) + 1
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "n_unlabelled": sum(reasons.values()),
        "unlabelled_reasons": [{"reason": r, "count": n} for r, n in ranked[:5]],
    }


def _reason_kind(reason: str) -> str:
    """A reason without its per-feature details (what comes after the first colon)."""
    head = reason.split(": ", 1)[0]
    return head if len(head) <= 80 else head[:79] + "…"


def _verdict(improvement: float, ci: tuple[float, float] | None, n: int) -> str:
    points = f"{improvement:+.2f} balanced accuracy over {n} labels"
    if ci is None:
        return f"labels vs shuffled labels: {points} (too few labels for an interval)"
    if ci[0] > 0:
        return (
            f"the labels beat chance: they detect their own features better than shuffled "
            f"labels do ({points}, 95% interval {ci[0]:+.2f} to {ci[1]:+.2f})"
        )
    if ci[1] < 0:
        return f"the labels do worse than shuffled labels ({points}): do not trust them"
    return (
        f"the labels do not clearly beat chance ({points}, 95% interval {ci[0]:+.2f} to "
        f"{ci[1]:+.2f}): read them as guesses"
    )
