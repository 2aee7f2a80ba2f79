"""Label one feature: explain it and score the explanation (LLM or offline heuristic).

The LLM path is one explain request and one detection request (the feature's held-out
contexts and, in the same request, its baseline partner's), each through a
:class:`~saeflow.core.labeling.session.LabelSession` (spending cap, time left, one repair).
The result is one plain JSON label record, the shape stored in
``runs/<id>/labels/<fid>.json`` and in the label registry.

A feature that cannot be labelled gets an *unlabelled* record (``label`` null) with the
reason; a label whose detection request fails keeps its label with a null score and the
reason. A retryable failure (throttling, too little time left) propagates after the
progress so far (the explanation, the usage) has been handed to ``save_progress``, so a
retry never asks again for what it already has.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from saeflow.core.errors import LabelerError
from saeflow.core.labeling.answers import Explanation, check_detection, check_label
from saeflow.core.labeling.detection import DETECTION_METHOD, Detection, detection_score
from saeflow.core.labeling.examples import Example, example_text, interleave, split_examples
from saeflow.core.labeling.offline import (
    OFFLINE_SOURCE,
    heuristic_predictions,
    offline_explanation,
    strongest_tokens,
)
from saeflow.core.labeling.prompts import (
    LLM_EXPLAIN_WINDOWS,
    build_detection_request,
    build_explanation_request,
)
from saeflow.core.labeling.session import BudgetReached, LabelSession, UnusableAnswer, Usage

logger = logging.getLogger(__name__)

Progress = dict[str, Any]  # {"explanation": {...} | None, "usage": {...}}


@dataclass(frozen=True)
class Scored:
    """A label's detection score and its shuffled-label baseline."""

    own: Detection
    baseline: Detection | None
    baseline_feature: int | None


def score_label(
    bundle: Mapping[str, Any], predict: Callable[[list[Example]], list[bool]]
) -> Scored:
    """Score a label with ``predict`` (one call over the feature's held-out contexts and,
    for the baseline, another feature's)."""
    own = split_examples(bundle).held_out
    partner = bundle.get("baseline") or {}
    others = [dict(ctx) for ctx in partner.get("contexts") or ()]
    if not own and not others:
        return Scored(detection_score([], []), None, None)
    predictions = predict(own + others)
    baseline = detection_score(predictions[len(own) :], others) if others else None
    return Scored(
        detection_score(predictions[: len(own)], own),
        baseline,
        partner.get("feature_id") if others else None,
    )


def label_heuristically(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """The offline label: strongest tokens, scored by its own token rule."""
    split = split_examples(bundle)
    explanation = offline_explanation(bundle, split.explain, split.negatives)
    groups = strongest_tokens(split.explain)
    scored = score_label(bundle, lambda contexts: heuristic_predictions(groups, contexts))
    return label_record(bundle, explanation.to_dict(), scored, OFFLINE_SOURCE, Usage())


def unlabelled_record(
    feature_id: int, reason: str, *, source: str | None = None, usage: Usage | None = None
) -> dict[str, Any]:
    """A feature left without a label, and why (the report shows the reason)."""
    return {
        "feature_id": int(feature_id),
        "label": None,
        "explanation": None,
        "confidence": None,
        "label_source": source,
        "unlabelled_reason": reason,
        "score": None,
        "score_reason": f"not labelled: {reason}",
        "score_method": None,
        "detection": None,
        "baseline": None,
        "usage": (usage or Usage()).to_dict(),
        "reused": False,
    }


def _explain(bundle: Mapping[str, Any], session: LabelSession) -> Explanation:
    split = split_examples(bundle)
    corpus = bundle.get("corpus") or {}
    prompt_side = [ex for ex in split.explain if ex.get("source") != "corpus"]
    corpus_side = [ex for ex in split.explain if ex.get("source") == "corpus"]
    shown = interleave(prompt_side, corpus_side)
    request = build_explanation_request(
        int(bundle["feature_id"]),
        shown[:LLM_EXPLAIN_WINDOWS],
        promoted_tokens=corpus.get("promoted_tokens") or (),
        suppressed_tokens=corpus.get("suppressed_tokens") or (),
    )
    return session.ask_checked("explain", request, check_label)


def _scored(bundle: Mapping[str, Any], explanation: Explanation, session: LabelSession) -> Scored:
    def predict(contexts: list[Example]) -> list[bool]:
        # Shuffled so that positives and negatives do not come in blocks.
        order = sorted(range(len(contexts)), key=lambda i: (_mix(example_text(contexts[i])), i))
        shown = [contexts[i] for i in order]
        request = build_detection_request(explanation, shown)
        answers = session.ask_checked(
            "detect", request, lambda tool_input: check_detection(tool_input, len(shown))
        )
        predictions = [False] * len(contexts)
        for position, index in enumerate(order):
            predictions[index] = answers[position]
        return predictions

    try:
        return score_label(bundle, predict)
    except (UnusableAnswer, BudgetReached) as exc:
        reason = f"not scored: {exc.message}"
    except LabelerError as exc:  # the service refused (not throttling): keep the label
        reason = f"not scored: {exc.name}: {exc.message}"
    return Scored(Detection(None, None, 0, 0, reason), None, None)


def label_with_llm(
    bundle: Mapping[str, Any],
    session: LabelSession,
    *,
    resume: Progress | None = None,
    save_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Explain (unless ``resume`` holds the explanation already) and score one feature.

    ``save_progress`` receives ``{"explanation", "usage"}`` after every request, so that a
    retry after throttling or a timeout resumes from it (pass it back as ``resume``).
    """
    feature_id = int(bundle["feature_id"])
    source = session.labeler.name
    state: Progress = {"explanation": (resume or {}).get("explanation")}
    if resume:
        session.usage = Usage.from_dict(resume.get("usage"))
    if save_progress is not None:
        session.progress = lambda usage: save_progress({**state, "usage": usage.to_dict()})
    if state["explanation"]:
        explanation = Explanation(**state["explanation"])
    else:
        if not split_examples(bundle).explain:
            return unlabelled_record(feature_id, "no activating example to explain from")
        try:
            explanation = _explain(bundle, session)
        except (UnusableAnswer, BudgetReached) as exc:
            return unlabelled_record(feature_id, exc.message, source=source, usage=session.usage)
        except LabelerError as exc:  # the service refused (not throttling)
            reason = f"{exc.name}: {exc.message}"
            return unlabelled_record(feature_id, reason, source=source, usage=session.usage)
        state["explanation"] = explanation.to_dict()
        if session.progress is not None:
            session.progress(session.usage)
    scored = _scored(bundle, explanation, session)
    return label_record(bundle, explanation.to_dict(), scored, source, session.usage)


def _mix(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def label_record(
    bundle: Mapping[str, Any],
    explanation: Mapping[str, Any],
    scored: Scored,
    source: str,
    usage: Usage,
) -> dict[str, Any]:
    own = scored.own
    baseline = scored.baseline.to_dict() if scored.baseline is not None else None
    return {
        "feature_id": int(bundle["feature_id"]),
        "sae_id": bundle.get("sae_id"),
        **explanation,
        "label_source": source,
        "score": round(own.balanced_accuracy, 4) if own.balanced_accuracy is not None else None,
        "score_reason": own.reason,
        "score_method": DETECTION_METHOD,
        "detection": own.to_dict(),
        "baseline": None
        if baseline is None
        else {"feature_id": scored.baseline_feature, **baseline},
        "usage": usage.to_dict(),
        "reused": False,
    }
