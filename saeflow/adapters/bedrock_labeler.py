"""Labeler over Claude on Amazon Bedrock, through the Converse API.

Moves text only: prompts are built and answers validated in ``saeflow.core.labeling``.
Throttling-like errors become ``LabelerThrottled`` (the state machine's Retry backs
off and tries again); anything else becomes ``LabelerError``. The default client
retries little on its own, so that the workflow's Retry, not a hidden loop inside
one Lambda invocation, does the waiting.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.ports import Completion

logger = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "ModelNotReadyException",
        "InternalServerException",
    }
)


def default_bedrock_client(region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 2}, read_timeout=120)
    return boto3.client("bedrock-runtime", region_name=region, config=config)


class BedrockLabeler:
    """:class:`saeflow.ports.Labeler` for a Bedrock model id (e.g. ``anthropic.claude-...``)."""

    def __init__(
        self, model_id: str, bedrock_client: Any | None = None, *, temperature: float = 0.0
    ):
        if not model_id:
            raise LabelerError("BedrockLabeler needs a model id")
        self.model_id = model_id
        self.temperature = temperature
        self._client = bedrock_client if bedrock_client is not None else default_bedrock_client()

    @property
    def name(self) -> str:
        return f"bedrock:{self.model_id}"

    def complete(self, system: str, prompt: str, *, max_tokens: int) -> Completion:
        try:
            response = self._client.converse(
                modelId=self.model_id,
                system=[{"text": system}],
                messages=[{"role": "user", "content": [{"text": prompt}]}],
                inferenceConfig={"maxTokens": max_tokens, "temperature": self.temperature},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"Bedrock {self.model_id}: {code or status}: {exc}"
            if code in RETRYABLE_CODES or status in (429, 503):
                raise LabelerThrottled(message) from exc
            raise LabelerError(message) from exc
        except BotoCoreError as exc:  # connection and timeout errors: a retry can help
            raise LabelerThrottled(f"Bedrock {self.model_id}: {exc}") from exc
        return parse_converse_response(response, self.model_id)


def parse_converse_response(response: dict[str, Any], model_id: str) -> Completion:
    try:
        content = response["output"]["message"]["content"]
        text = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        usage = response.get("usage") or {}
    except (KeyError, TypeError) as exc:
        raise LabelerError(f"Bedrock {model_id}: unexpected Converse response shape") from exc
    if not text:
        raise LabelerError(
            f"Bedrock {model_id}: empty answer (stopReason {response.get('stopReason')})"
        )
    return Completion(
        text=text,
        model_id=model_id,
        input_tokens=int(usage.get("inputTokens") or 0),
        output_tokens=int(usage.get("outputTokens") or 0),
    )
