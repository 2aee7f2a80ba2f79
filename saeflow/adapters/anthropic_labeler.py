"""Labeler over the Anthropic Messages API: ``anthropic.Anthropic`` (API key) or
``anthropic.AnthropicBedrock`` (the same API on Bedrock, AWS credentials).

Same contract as the Converse labeler: the same tool, forced with ``tool_choice``, the
system text marked for the prompt cache; rate limits, overload and timeouts become
``LabelerThrottled``, every other failure ``LabelerError``.
"""

from __future__ import annotations

from typing import Any

from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.ports import TokenUsage, ToolAnswer, ToolRequest

DEFAULT_MODEL = "claude-3-5-haiku-latest"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})
# The SDK's own retries (exponential backoff with jitter), then the state machine's.
MAX_RETRIES = 2
READ_TIMEOUT_S = 60.0


def messages_arguments(model_id: str, request: ToolRequest) -> dict[str, Any]:
    """The Messages call: cached system text, the data as the user turn, a forced tool."""
    tool = request.tool
    return {
        "model": model_id,
        "max_tokens": request.max_tokens,
        "system": [
            {"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [{"role": "user", "content": request.prompt}],
        "tools": [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": dict(tool.input_schema),
            }
        ],
        "tool_choice": {"type": "tool", "name": tool.name},
    }


def anthropic_client(api_key: str | None = None) -> Any:
    import anthropic
    import httpx

    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=5.0)
    return anthropic.Anthropic(api_key=api_key, max_retries=MAX_RETRIES, timeout=timeout)


class AnthropicLabeler:
    """:class:`saeflow.ports.Labeler` for the Anthropic Messages API (direct or on Bedrock)."""

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL,
        client: Any | None = None,
        *,
        api_key: str | None = None,
        backend: str = "anthropic",
    ) -> None:
        self._model_id = model_id
        self._client = client if client is not None else anthropic_client(api_key)
        self._backend = backend

    @property
    def name(self) -> str:
        return f"{self._backend}:{self._model_id}"

    @property
    def model_id(self) -> str:
        return self._model_id

    def ask(self, request: ToolRequest) -> ToolAnswer:
        import anthropic

        try:
            message = self._client.messages.create(**messages_arguments(self._model_id, request))
        except anthropic.APIStatusError as exc:
            error = LabelerThrottled if exc.status_code in RETRYABLE_STATUS else LabelerError
            raise error(
                f"Anthropic {self._model_id}: HTTP {exc.status_code}: {exc.message}"
            ) from exc
        except anthropic.APIConnectionError as exc:  # includes timeouts
            raise LabelerThrottled(f"Anthropic {self._model_id}: {exc}") from exc
        except anthropic.AnthropicError as exc:
            raise LabelerError(f"Anthropic {self._model_id}: {exc}") from exc
        return parse_message(message, self._model_id, request.tool.name)


def parse_message(message: Any, model_id: str, tool_name: str) -> ToolAnswer:
    tool_input = None
    texts = []
    for block in message.content:
        kind = getattr(block, "type", None)
        if kind == "tool_use" and getattr(block, "name", None) == tool_name and tool_input is None:
            found = getattr(block, "input", None)
            tool_input = found if isinstance(found, dict) else None
        elif kind == "text":
            texts.append(getattr(block, "text", ""))
    usage = message.usage
    return ToolAnswer(
        tool_input=tool_input,
        text="".join(texts),
        model_id=getattr(message, "model", None) or model_id,
        usage=TokenUsage(
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            cache_read_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
            cache_write_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
        ),
        stop_reason=getattr(message, "stop_reason", None),
    )
