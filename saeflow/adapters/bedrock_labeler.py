"""Labeler over Claude on Amazon Bedrock, through the Converse API with a forced tool.

Moves the request and the answer only: prompts are built and answers validated in
``saeflow.core.labeling``. The system text is followed by a ``cachePoint`` (the shared
instructions and the tool are the cacheable prefix; the feature's data comes after) and
``toolChoice`` forces the request's one tool.

Timeouts and retries (:data:`TIMEOUTS`): botocore's adaptive mode retries throttling with
jittered backoff and client-side rate limiting, a few times; after that the error becomes
``LabelerThrottled`` and the state machine's Retry (``JitterStrategy: FULL``) takes over.
:func:`worst_case_request_s` bounds one request, so the Lambda timeout can be set above it
and the step can refuse to start a request it might not finish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.ports import TokenUsage, ToolAnswer, ToolRequest

logger = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "ModelNotReadyException",
        "InternalServerException",
        "ModelTimeoutException",
    }
)


@dataclass(frozen=True)
class ClientTimeouts:
    """The Bedrock client's timeouts (seconds) and attempts per request."""

    connect_s: float = 5.0
    read_s: float = 60.0
    """Haiku answers the detection request (~40 contexts) in seconds; 60 s is generous."""
    max_attempts: int = 3
    """Total attempts in botocore (adaptive mode), the first included."""
    max_backoff_s: float = 20.0
    """botocore's cap on one retry's backoff."""


TIMEOUTS = ClientTimeouts()


def worst_case_request_s(timeouts: ClientTimeouts = TIMEOUTS) -> float:
    """The longest one request can take: every attempt times out, every backoff is maximal."""
    attempts = timeouts.max_attempts
    return (
        attempts * (timeouts.connect_s + timeouts.read_s) + (attempts - 1) * timeouts.max_backoff_s
    )


def default_bedrock_client(region: str | None = None, timeouts: ClientTimeouts = TIMEOUTS) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        # total_max_attempts counts the first attempt (botocore's max_attempts does not).
        retries={"mode": "adaptive", "total_max_attempts": timeouts.max_attempts},
        connect_timeout=timeouts.connect_s,
        read_timeout=timeouts.read_s,
    )
    return boto3.client("bedrock-runtime", region_name=region, config=config)


def converse_arguments(model_id: str, request: ToolRequest, temperature: float) -> dict[str, Any]:
    """The Converse call: cached system text, the data as the user turn, a forced tool."""
    tool = request.tool
    return {
        "modelId": model_id,
        "system": [{"text": request.system}, {"cachePoint": {"type": "default"}}],
        "messages": [{"role": "user", "content": [{"text": request.prompt}]}],
        "inferenceConfig": {"maxTokens": request.max_tokens, "temperature": temperature},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": tool.name,
                        "description": tool.description,
                        "inputSchema": {"json": dict(tool.input_schema)},
                    }
                }
            ],
            "toolChoice": {"tool": {"name": tool.name}},
        },
    }


class BedrockLabeler:
    """:class:`saeflow.ports.Labeler` for a Bedrock model or inference profile id."""

    def __init__(
        self, model_id: str, bedrock_client: Any | None = None, *, temperature: float = 0.0
    ):
        if not model_id:
            raise LabelerError("BedrockLabeler needs a model id")
        self._model_id = model_id
        self.temperature = temperature
        self._client = bedrock_client if bedrock_client is not None else default_bedrock_client()

    @property
    def name(self) -> str:
        return f"bedrock:{self._model_id}"

    @property
    def model_id(self) -> str:
        return self._model_id

    def ask(self, request: ToolRequest) -> ToolAnswer:
        try:
            response = self._client.converse(
                **converse_arguments(self._model_id, request, self.temperature)
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"Bedrock {self._model_id}: {code or status}: {exc}"
            if code in RETRYABLE_CODES or status in (429, 500, 503):
                raise LabelerThrottled(message) from exc
            raise LabelerError(message) from exc
        except BotoCoreError as exc:  # connection and read timeouts: a retry can help
            raise LabelerThrottled(f"Bedrock {self._model_id}: {exc}") from exc
        return parse_converse_response(response, self._model_id, request.tool.name)


def parse_converse_response(response: dict[str, Any], model_id: str, tool_name: str) -> ToolAnswer:
    """The forced tool's input (None when the model answered otherwise) and the usage."""
    try:
        content = response["output"]["message"]["content"]
        usage = response.get("usage") or {}
    except (KeyError, TypeError) as exc:
        raise LabelerError(f"Bedrock {model_id}: unexpected Converse response shape") from exc
    tool_input = None
    texts = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        use = block.get("toolUse")
        if isinstance(use, dict) and use.get("name") == tool_name and tool_input is None:
            found = use.get("input")
            tool_input = found if isinstance(found, dict) else None
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
    return ToolAnswer(
        tool_input=tool_input,
        text="".join(texts),
        model_id=model_id,
        usage=TokenUsage(
            input_tokens=int(usage.get("inputTokens") or 0),
            output_tokens=int(usage.get("outputTokens") or 0),
            cache_read_tokens=int(usage.get("cacheReadInputTokens") or 0),
            cache_write_tokens=int(usage.get("cacheWriteInputTokens") or 0),
        ),
        stop_reason=response.get("stopReason"),
    )
