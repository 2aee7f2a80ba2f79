"""The labeller's two answers as schemas: the tools the model must call, and their checks.

Each answer is a pydantic model. Its JSON schema is the input schema of the tool the
request forces (Bedrock Converse ``toolConfig`` or the Anthropic ``tools``), and the same
model validates what comes back, so what reaches the registry and the report always has
the documented shape. A failed check raises :class:`InvalidAnswer` with a short reason
(never the model's text), which the repair request quotes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from saeflow.core.errors import LabelerError
from saeflow.ports import ToolSpec

MAX_LABEL_CHARS = 80
MAX_EXPLANATION_CHARS = 600
_SAFE = re.compile(r"[^A-Za-z0-9_]")


class InvalidAnswer(LabelerError):
    """The model's tool input does not match the tool's schema (one repair is asked)."""


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


def _one_line(value: str) -> str:
    return " ".join(value.split())


class LabelAnswer(BaseModel):
    """What the feature responds to."""

    model_config = ConfigDict(extra="forbid", strict=True)

    label: str = Field(
        min_length=1,
        max_length=MAX_LABEL_CHARS,
        description="A short name for what the feature responds to, at most 8 words.",
    )
    explanation: str = Field(
        min_length=1,
        max_length=MAX_EXPLANATION_CHARS,
        description="One or two sentences: what makes the feature fire, and where in the text.",
    )
    confidence: Literal["low", "medium", "high"] = Field(
        description="How clearly the examples show one pattern."
    )

    @field_validator("label", "explanation")
    @classmethod
    def _text(cls, value: str) -> str:
        cleaned = _one_line(value)
        if not cleaned:
            raise ValueError("must not be blank")
        return cleaned


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    context: int = Field(ge=1, description="The context's number in the data.")
    fires: bool = Field(description="True if the feature fires on any token of the context.")


class DetectionAnswer(BaseModel):
    """One prediction per context."""

    model_config = ConfigDict(extra="forbid", strict=True)

    predictions: list[Prediction] = Field(
        description="One entry per context, in the order of the data."
    )


def _inline_refs(schema: Any, defs: Mapping[str, Any]) -> Any:
    """The schema with every ``$ref`` replaced by its definition and titles dropped."""
    if isinstance(schema, list):
        return [_inline_refs(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inline_refs(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    return {
        key: _inline_refs(value, defs)
        for key, value in schema.items()
        if key not in ("$defs", "title")
    }


def tool_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A self-contained JSON schema of ``model`` (no ``$defs``: every service reads it)."""
    schema = model.model_json_schema()
    return _inline_refs(schema, schema.get("$defs", {}))


LABEL_TOOL = ToolSpec(
    name="record_label",
    description="Record the label of the sparse autoencoder feature described by the data.",
    input_schema=tool_schema(LabelAnswer),
)
DETECTION_TOOL = ToolSpec(
    name="record_predictions",
    description="Record, for every context of the data, whether the feature fires in it.",
    input_schema=tool_schema(DetectionAnswer),
)


def _reason(exc: ValidationError) -> str:
    """The checks that failed, without the values (they are the model's text)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:4]:
        # A location may be a key the model invented: keep it short and plain.
        where = ".".join(_SAFE.sub("", str(p))[:24] for p in error.get("loc", ())) or "answer"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def check_label(tool_input: Mapping[str, Any] | None) -> Explanation:
    """The label answer, validated against :data:`LABEL_TOOL`'s schema."""
    if tool_input is None:
        raise InvalidAnswer(f"the model did not call the {LABEL_TOOL.name} tool")
    try:
        answer = LabelAnswer.model_validate(dict(tool_input))
    except ValidationError as exc:
        raise InvalidAnswer(f"the label answer does not match its schema: {_reason(exc)}") from exc
    return Explanation(answer.label, answer.explanation, answer.confidence)


def check_detection(tool_input: Mapping[str, Any] | None, n_contexts: int) -> list[bool]:
    """Exactly one prediction per context 1..n_contexts, validated against the schema."""
    if tool_input is None:
        raise InvalidAnswer(f"the model did not call the {DETECTION_TOOL.name} tool")
    try:
        answer = DetectionAnswer.model_validate(dict(tool_input))
    except ValidationError as exc:
        raise InvalidAnswer(f"the predictions do not match their schema: {_reason(exc)}") from exc
    values: dict[int, bool] = {}
    for prediction in answer.predictions:
        if prediction.context > n_contexts:
            raise InvalidAnswer(f"a prediction names context {prediction.context} of {n_contexts}")
        if prediction.context in values and values[prediction.context] != prediction.fires:
            raise InvalidAnswer(f"context {prediction.context} has two different predictions")
        values[prediction.context] = prediction.fires
    missing = [i for i in range(1, n_contexts + 1) if i not in values]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise InvalidAnswer(f"no prediction for contexts {shown}")
    return [values[i] for i in range(1, n_contexts + 1)]
