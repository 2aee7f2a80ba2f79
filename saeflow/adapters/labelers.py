"""Choose the labeler backend: what ``label.backend`` (and ``auto``) means for a caller.

The Lambda handler and the CLI know which credentials exist; they build a factory here
and hand it to ``saeflow.steps.label_feature.run(labeler_for=...)``. Backends are built
lazily and cached, so one Lambda container reuses its client across Map items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saeflow.core.contract import auto_labeler
from saeflow.core.errors import LabelerError
from saeflow.ports import Labeler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelerConfig:
    """What the caller knows: default model ids, credentials, injected clients."""

    bedrock_model_id: str | None = None
    bedrock_available: bool = False  # AWS credentials (or a Bedrock endpoint) exist
    bedrock_client: Any | None = None
    anthropic_api_key: str | None = None
    anthropic_model_id: str | None = None
    anthropic_client: Any | None = None


def resolve_backend(requested: str, config: LabelerConfig) -> str:
    """``auto`` in the one order every caller uses (:func:`saeflow.core.contract.auto_labeler`):
    anthropic with a key, else bedrock when possible, else offline."""
    if requested != "auto":
        return requested
    return auto_labeler(
        anthropic_key=bool(config.anthropic_api_key or config.anthropic_client is not None),
        bedrock=bool(config.bedrock_available and config.bedrock_model_id),
    )


def labeler_factory(config: LabelerConfig) -> Callable[[str, str | None], Labeler | None]:
    cache: dict[tuple[str, str | None], Labeler | None] = {}

    def labeler_for(backend: str, model_id: str | None = None) -> Labeler | None:
        chosen = resolve_backend(backend, config)
        key = (chosen, model_id)
        if key in cache:
            return cache[key]
        labeler: Labeler | None
        if chosen == "bedrock":
            from saeflow.adapters.bedrock_labeler import BedrockLabeler

            model = model_id or config.bedrock_model_id
            if not model:
                raise LabelerError("label.backend=bedrock but no Bedrock model id is configured")
            labeler = BedrockLabeler(model, config.bedrock_client)
        elif chosen == "anthropic":
            from saeflow.adapters.anthropic_labeler import DEFAULT_MODEL, AnthropicLabeler

            if config.anthropic_client is None and not config.anthropic_api_key:
                raise LabelerError("label.backend=anthropic but no Anthropic API key is set")
            labeler = AnthropicLabeler(
                model_id or config.anthropic_model_id or DEFAULT_MODEL,
                config.anthropic_client,
                api_key=config.anthropic_api_key,
            )
        elif chosen in ("offline", "none"):
            labeler = None
        else:
            raise LabelerError(f"unknown labeler backend {backend!r}")
        logger.info("labeler for %r: %s", backend, labeler.name if labeler else "offline heuristic")
        cache[key] = labeler
        return labeler

    return labeler_for
