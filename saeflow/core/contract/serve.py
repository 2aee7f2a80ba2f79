"""The serve (batch transform) container's settings, carried as the model's Environment."""

from __future__ import annotations

from pydantic import Field

from saeflow.core.contract.names import (
    ENV_CE_LOSS,
    ENV_HOOK,
    ENV_MAX_PROMPT_TOKENS,
    ENV_MODEL,
    ENV_TOP_K,
)
from saeflow.core.schema import Int, Schema, Text


class ServeSettings(Schema):
    """What the worker loads and how many features it keeps per token."""

    model: Text
    hook: Text
    features_per_token: Int = Field(8, ge=1, le=64)
    max_prompt_tokens: Int = Field(512, ge=1)
    ce_loss: bool = False
    """Also return each prompt's CE-loss sums with the SAE spliced in (three more forward
    passes from the hook on)."""

    def to_environment(self) -> dict[str, str]:
        return {
            ENV_MODEL: self.model,
            ENV_HOOK: self.hook,
            ENV_TOP_K: str(self.features_per_token),
            ENV_MAX_PROMPT_TOKENS: str(self.max_prompt_tokens),
            ENV_CE_LOSS: "1" if self.ce_loss else "0",
        }
