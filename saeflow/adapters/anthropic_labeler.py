"""Labeler over the Anthropic API (the ``anthropic`` SDK, API key from the caller).

Same contract as the Bedrock labeler: rate limits and overload become
``LabelerThrottled``, every other failure ``LabelerError``.
"""

from __future__ import annotations

from typing import Any

from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.ports import Completion

DEFAULT_MODEL = "claude-3-5-haiku-latest"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


class AnthropicLabeler:
    """:class:`saeflow.ports.Labeler` for the Anthropic Messages API."""

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL,
        client: Any | None = None,
        *,
        api_key: str | None = None,
    ) -> None:
        if client is None:
            import anthropic

            client = anthropic.Anthropic(api_key=api_key, max_retries=1)
        self.model_id = model_id
        self._client = client

    @property
    def name(self) -> str:
        return f"anthropic:{self.model_id}"

    def complete(self, system: str, prompt: str, *, max_tokens: int) -> Completion:
        import anthropic

        try:
            message = self._client.messages.create(
                model=self.model_id,
                max_tokens=max_tokens,
                system=system,
                messages=[{"role": "user", "content": prompt}],
            )
        except anthropic.APIStatusError as exc:
            error = LabelerThrottled if exc.status_code in RETRYABLE_STATUS else LabelerError
            raise error(
                f"Anthropic {self.model_id}: HTTP {exc.status_code}: {exc.message}"
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise LabelerThrottled(f"Anthropic {self.model_id}: {exc}") from exc
        except anthropic.AnthropicError as exc:
            raise LabelerError(f"Anthropic {self.model_id}: {exc}") from exc
        text = "".join(getattr(block, "text", "") for block in message.content)
        if not text:
            raise LabelerError(f"Anthropic {self.model_id}: empty answer ({message.stop_reason})")
        return Completion(
            text=text,
            model_id=message.model or self.model_id,
            input_tokens=int(message.usage.input_tokens or 0),
            output_tokens=int(message.usage.output_tokens or 0),
        )
