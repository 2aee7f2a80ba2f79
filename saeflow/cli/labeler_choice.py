"""Which labeller ``label.backend=auto`` means on this machine (the embedded mode).

The CLI resolves "auto" itself and passes the answer as the ``label.backend`` override
(the deployed label_feature function reads "auto" as Bedrock).

Offline unless credentials exist: the Anthropic API with ``ANTHROPIC_API_KEY``; Bedrock
when a Bedrock runtime endpoint is configured (``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``). The
local stack replaces AWS credentials with fake ones for moto, so plain AWS credentials do
not make Bedrock reachable from the embedded mode.
"""

from __future__ import annotations

from collections.abc import Mapping

LABEL_CHOICES = ("offline", "bedrock", "anthropic", "none")


def default_labeler(environ: Mapping[str, str]) -> str:
    if environ.get("ANTHROPIC_API_KEY"):
        return "anthropic"
    if environ.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        return "bedrock"
    return "offline"
