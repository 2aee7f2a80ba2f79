"""Which labeller models a run may name: the deployment's allow-list.

The template's ``BedrockModelId`` and ``LabelModelIds`` parameters are the only models the
label function's role may invoke; a run that names another one in ``label.model_id``
would only fail later, one feature at a time, so validate refuses it at once with
:class:`LabelModelNotAllowed`.
"""

from __future__ import annotations

from collections.abc import Sequence

from saeflow.core.errors import LabelModelNotAllowed
from saeflow.core.options import LabelOptions

LLM_BACKENDS = ("auto", "bedrock", "anthropic")


def parse_model_ids(text: str | None) -> tuple[str, ...]:
    """``"a, b,,a"`` -> ``("a", "b")``: the comma-separated ids, in order, once each."""
    seen: dict[str, None] = {}
    for part in (text or "").split(","):
        if part.strip():
            seen.setdefault(part.strip(), None)
    return tuple(seen)


def check_label_model(label: LabelOptions, allowed: Sequence[str]) -> None:
    """Raise :class:`LabelModelNotAllowed` when ``label.model_id`` is outside ``allowed``.

    An empty ``allowed`` means no allow-list (tests, tools that call the step directly).
    """
    if not allowed or label.model_id is None or label.backend not in LLM_BACKENDS:
        return
    if label.model_id not in allowed:
        raise LabelModelNotAllowed(
            f"label.model_id: {label.model_id!r} is not one of this deployment's labeller "
            f"models ({', '.join(allowed)}); the template parameters BedrockModelId and "
            "LabelModelIds list them"
        )
