"""Label one feature: explain it and score the explanation (LLM or offline heuristic).

The LLM path talks to a :class:`saeflow.ports.Labeler` (any backend that moves text);
everything else here is pure. The result is one plain JSON label record, the shape
stored in ``runs/<id>/labels/<fid>.json`` and in the label registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.errors import LabelerError
from saeflow.core.labeling.examples import split_examples
from saeflow.core.labeling.offline import OFFLINE_SOURCE, label_offline
from saeflow.core.labeling.prompts import (
    build_explanation_prompt,
    build_scoring_prompt,
    parse_explanation,
    parse_predictions,
)
from saeflow.core.labeling.scoring import (
    Score,
    score_predictions,
    true_activations,
    unscorable_reason,
)
from saeflow.ports import Labeler  # a Protocol: stdlib only

logger = logging.getLogger(__name__)

LLM_SCORE_METHOD = (
    "the model predicted, from the explanation alone, each held-out excerpt's max "
    "activation (0-10); Pearson r with the true max activations"
)
EXPLAIN_MAX_TOKENS = 400
SCORE_MAX_TOKENS = 600
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


def label_with_llm(bundle: Mapping[str, Any], labeler: Labeler) -> dict[str, Any]:
    feature_id = int(bundle["feature_id"])
    split = split_examples(bundle)
    corpus = bundle.get("corpus") or {}
    system, prompt = build_explanation_prompt(
        feature_id,
        split.explain,
        promoted_tokens=corpus.get("promoted_tokens") or (),
        suppressed_tokens=corpus.get("suppressed_tokens") or (),
    )
    usage = Usage()
    try:
        explanation = _ask(labeler, system, prompt, EXPLAIN_MAX_TOKENS, usage, parse_explanation)
    except UnusableAnswer as exc:
        # One feature's bad answers should not fail the run: fall back to the heuristic,
        # saying so, and keep the tokens the attempt cost.
        record = label_heuristically(bundle)
        record["usage"] = usage.to_dict()
        record["fallback_reason"] = f"{labeler.name} gave no usable answer: {exc.message}"
        return record

    truth = true_activations(split.held_out)
    reason = unscorable_reason(truth)
    if reason is not None:
        score = Score(None, LLM_SCORE_METHOD, len(truth), reason)
    else:
        system, prompt = build_scoring_prompt(explanation, split.held_out)
        n = len(split.held_out)
        try:
            predicted = _ask(
                labeler, system, prompt, SCORE_MAX_TOKENS, usage, lambda t: parse_predictions(t, n)
            )
            score = score_predictions(predicted, truth, LLM_SCORE_METHOD)
        except UnusableAnswer as exc:
            score = Score(None, LLM_SCORE_METHOD, n, f"no usable predictions: {exc.message}")
    return label_record(bundle, explanation.to_dict(), score, labeler.name, usage)


def label_heuristically(bundle: Mapping[str, Any]) -> dict[str, Any]:
    explanation, score = label_offline(bundle)
    return label_record(bundle, explanation.to_dict(), score, OFFLINE_SOURCE, Usage())


def label_record(
    bundle: Mapping[str, Any],
    explanation: Mapping[str, Any],
    score: Score,
    source: str,
    usage: Usage,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "feature_id": int(bundle["feature_id"]),
        "sae_id": bundle.get("sae_id"),
        **explanation,
        "label_source": source,
        **score.to_dict(),
        "usage": usage.to_dict(),
        "reused": False,
    }
    return record


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
