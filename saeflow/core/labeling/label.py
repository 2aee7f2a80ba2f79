"""Label one feature: explain it and score the explanation (LLM or offline heuristic).

The LLM path talks to a :class:`saeflow.ports.Labeler` (any backend that moves text);
everything else here is pure. The result is one plain JSON label record, the shape
stored in ``runs/<id>/labels/<fid>.json`` and in the label registry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.errors import LabelerError
from saeflow.core.labeling.detection import DETECTION_METHOD, Detection, detection_score
from saeflow.core.labeling.examples import Example, example_text, split_examples
from saeflow.core.labeling.offline import (
    OFFLINE_SOURCE,
    heuristic_predictions,
    offline_explanation,
    strongest_tokens,
)
from saeflow.core.labeling.prompts import (
    build_detection_prompt,
    build_explanation_prompt,
    parse_detection,
    parse_explanation,
)
from saeflow.ports import Labeler  # a Protocol: stdlib only

logger = logging.getLogger(__name__)

EXPLAIN_MAX_TOKENS = 400
DETECT_MAX_TOKENS = 900
# A malformed JSON answer is retried this many times with a reminder before giving up.
PARSE_ATTEMPTS = 2


@dataclass
class Usage:
    """LLM tokens and requests spent on one feature."""

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    model_ids: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
            "model_id": sorted(self.model_ids)[0] if self.model_ids else None,
        }


class UnusableAnswer(LabelerError):
    """The model answered, but never in the required JSON shape (caught in this module)."""


def _ask(labeler: Labeler, system: str, prompt: str, max_tokens: int, usage: Usage, parse):
    last_error: LabelerError | None = None
    for attempt in range(PARSE_ATTEMPTS):
        text_prompt = prompt
        if attempt:
            text_prompt += (
                "\n\nYour previous answer was not valid. Reply with the JSON object only."
            )
        completion = labeler.complete(system, text_prompt, max_tokens=max_tokens)
        usage.input_tokens += completion.input_tokens
        usage.output_tokens += completion.output_tokens
        usage.requests += 1
        usage.model_ids.add(completion.model_id)
        try:
            return parse(completion.text)
        except LabelerError as exc:
            logger.warning("labeler answer rejected (attempt %d): %s", attempt + 1, exc)
            last_error = exc
    raise UnusableAnswer(str(last_error)) from last_error


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


def label_with_llm(bundle: Mapping[str, Any], labeler: Labeler) -> dict[str, Any]:
    feature_id = int(bundle["feature_id"])
    split = split_examples(bundle)
    corpus = bundle.get("corpus") or {}
    usage = Usage()
    if not split.explain:
        record = label_heuristically(bundle)
        record["fallback_reason"] = "no activating example to show the model"
        return record
    system, prompt = build_explanation_prompt(
        feature_id,
        split.explain,
        promoted_tokens=corpus.get("promoted_tokens") or (),
        suppressed_tokens=corpus.get("suppressed_tokens") or (),
    )
    try:
        explanation = _ask(labeler, system, prompt, EXPLAIN_MAX_TOKENS, usage, parse_explanation)
    except UnusableAnswer as exc:
        # One feature's bad answers should not fail the run: fall back to the heuristic,
        # saying so, and keep the tokens the attempt cost.
        record = label_heuristically(bundle)
        record["usage"] = usage.to_dict()
        record["fallback_reason"] = f"{labeler.name} gave no usable answer: {exc.message}"
        return record

    def predict(contexts: list[Example]) -> list[bool]:
        # Shuffled so that positives and negatives do not come in blocks.
        order = sorted(range(len(contexts)), key=lambda i: (_mix(example_text(contexts[i])), i))
        shown = [contexts[i] for i in order]
        system, prompt = build_detection_prompt(explanation, shown)
        answers = _ask(
            labeler,
            system,
            prompt,
            DETECT_MAX_TOKENS,
            usage,
            lambda text: parse_detection(text, len(shown)),
        )
        predictions = [False] * len(contexts)
        for position, index in enumerate(order):
            predictions[index] = answers[position]
        return predictions

    try:
        scored = score_label(bundle, predict)
    except UnusableAnswer as exc:
        reason = f"no usable predictions: {exc.message}"
        scored = Scored(Detection(None, None, 0, 0, reason), None, None)
    return label_record(bundle, explanation.to_dict(), scored, labeler.name, usage)


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


def is_heuristic(record: Mapping[str, Any]) -> bool:
    return record.get("label_source") == OFFLINE_SOURCE


def reusable(stored: Mapping[str, Any] | None, *, want_llm: bool) -> bool:
    """Reuse a stored label unless it is heuristic and an LLM is available now."""
    if not stored or not stored.get("label"):
        return False
    return not (want_llm and is_heuristic(stored))


def as_reused(stored: Mapping[str, Any], feature_id: int) -> dict[str, Any]:
    """A stored label as this run's record: no tokens spent now."""
    record = dict(stored)
    record["feature_id"] = feature_id
    record["reused"] = True
    record["usage"] = Usage().to_dict()
    return record
