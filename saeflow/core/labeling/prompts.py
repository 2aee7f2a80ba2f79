"""Prompts for the LLM labeler and validation of its structured JSON answers.

The model is asked for JSON only; the answer is parsed tolerantly (code fences and
chatter around the object are ignored) but validated strictly (types, lengths,
allowed values), so what reaches the report is always well-formed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saeflow.core.errors import LabelerError
from saeflow.core.labeling.examples import Example, example_text

MAX_LABEL_CHARS = 80
MAX_EXPLANATION_CHARS = 600
CONFIDENCE_VALUES = ("low", "medium", "high")
HIGHLIGHT_OPEN, HIGHLIGHT_CLOSE = "<<", ">>"

EXPLAIN_SYSTEM = (
    "You are an interpretability researcher. You explain what a single feature of a "
    "sparse autoencoder trained on a language model's activations responds to, from "
    "text excerpts where it activates. Be specific and concise. Answer with one JSON "
    "object and nothing else."
)

SCORE_SYSTEM = (
    "You simulate a feature of a sparse autoencoder from its explanation: for each text "
    "excerpt you predict how strongly the feature fires on it. Answer with one JSON "
    "object and nothing else."
)


@dataclass(frozen=True)
class Explanation:
    label: str
    explanation: str
    confidence: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "explanation": self.explanation,
            "confidence": self.confidence,
        }


def _scale(value: float, top: float) -> int:
    return round(10 * value / top) if top > 0 else 0


def format_example_for_explainer(index: int, example: Mapping[str, Any], top: float) -> str:
    tokens = [str(t) for t in example.get("tokens", ())]
    acts = [float(a) for a in example.get("activations", ())] + [0.0] * len(tokens)
    marked = []
    firing = []
    for tok, act in zip(tokens, acts, strict=False):
        level = _scale(act, top)
        if level > 0:
            marked.append(f"{HIGHLIGHT_OPEN}{tok}{HIGHLIGHT_CLOSE}")
            firing.append(f"{json.dumps(tok, ensure_ascii=False)}={level}")
        else:
            marked.append(tok)
    return (
        f"Example {index}:\n"
        f"Text: {''.join(marked)}\n"
        f"Activating tokens (0-10): {', '.join(firing) if firing else 'none'}"
    )


def build_explanation_prompt(
    feature_id: int,
    examples: Sequence[Example],
    *,
    promoted_tokens: Sequence[Mapping[str, Any]] = (),
    suppressed_tokens: Sequence[Mapping[str, Any]] = (),
) -> tuple[str, str]:
    """(system, user) prompts asking for a label of ``feature_id`` from ``examples``."""
    if not examples:
        raise LabelerError(f"feature {feature_id} has no activating examples to explain")
    top = max(float(ex.get("max", 0.0)) for ex in examples)
    blocks = [format_example_for_explainer(i, ex, top) for i, ex in enumerate(examples, 1)]
    parts = [
        f"Feature {feature_id} of a sparse autoencoder. Below are text excerpts where it "
        f"activates. Tokens where it fires are wrapped in {HIGHLIGHT_OPEN} {HIGHLIGHT_CLOSE}; "
        "activations are scaled so the strongest is 10.",
        "",
        "\n\n".join(blocks),
    ]
    if promoted_tokens:
        parts += ["", "Through the unembedding it promotes: " + _token_list(promoted_tokens)]
    if suppressed_tokens:
        parts += ["It suppresses: " + _token_list(suppressed_tokens)]
    parts += [
        "",
        "What does this feature respond to? Answer with this JSON object only:",
        '{"label": "<a short name, at most 8 words>", '
        '"explanation": "<one or two sentences: what makes it fire, and where in the text>", '
        '"confidence": "low" | "medium" | "high"}',
    ]
    return EXPLAIN_SYSTEM, "\n".join(parts)


def _token_list(tokens: Sequence[Mapping[str, Any]], limit: int = 10) -> str:
    return ", ".join(
        json.dumps(str(t.get("token", "")), ensure_ascii=False) for t in tokens[:limit]
    )


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` (code fences and prose around it ignored)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    raise LabelerError(f"the labeler's answer holds no JSON object: {text[:200]!r}")


def _clean_text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LabelerError(f"the labeler's answer has no usable {field!r} (got {value!r:.80})")
    text = " ".join(value.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def parse_explanation(text: str) -> Explanation:
    """Validate the explainer's JSON answer."""
    obj = extract_json_object(text)
    label = _clean_text(obj.get("label"), "label", MAX_LABEL_CHARS)
    explanation_raw = obj.get("explanation") or label
    explanation = _clean_text(explanation_raw, "explanation", MAX_EXPLANATION_CHARS)
    confidence = obj.get("confidence")
    if isinstance(confidence, str) and confidence.strip().lower() in CONFIDENCE_VALUES:
        confidence = confidence.strip().lower()
    else:
        confidence = None
    return Explanation(label=label, explanation=explanation, confidence=confidence)


def build_scoring_prompt(explanation: Explanation, examples: Sequence[Example]) -> tuple[str, str]:
    """(system, user) prompts asking for a 0-10 prediction per held-out example."""
    lines = [
        f"Feature explanation: {explanation.label}: {explanation.explanation}",
        "",
        "For each excerpt below, predict the feature's strongest activation on any of its "
        "tokens, from 0 (does not fire) to 10 (fires as strongly as it ever does).",
        "",
    ]
    for index, ex in enumerate(examples, 1):
        lines.append(f"Excerpt {index}: {json.dumps(example_text(ex), ensure_ascii=False)}")
    lines += [
        "",
        "Answer with this JSON object only, one entry per excerpt in order:",
        '{"predictions": [{"excerpt": 1, "activation": <0-10>}, ...]}',
    ]
    return SCORE_SYSTEM, "\n".join(lines)


def parse_predictions(text: str, n_examples: int) -> list[float]:
    """Validate the simulator's answer: exactly one 0-10 number per excerpt."""
    obj = extract_json_object(text)
    raw = obj.get("predictions")
    if not isinstance(raw, list):
        raise LabelerError("the scoring answer has no 'predictions' list")
    values: dict[int, float] = {}
    for position, entry in enumerate(raw, 1):
        if isinstance(entry, Mapping):
            index, value = entry.get("excerpt", position), entry.get("activation")
        else:
            index, value = position, entry
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LabelerError(f"prediction for excerpt {index} is not a number: {value!r:.40}")
        if not isinstance(index, int) or not 1 <= index <= n_examples:
            raise LabelerError(f"prediction names an unknown excerpt: {index!r:.40}")
        values[index] = min(10.0, max(0.0, float(value)))
    missing = [i for i in range(1, n_examples + 1) if i not in values]
    if missing:
        raise LabelerError(f"the scoring answer has no prediction for excerpts {missing}")
    return [values[i] for i in range(1, n_examples + 1)]
