"""Which labeller ``label.backend=auto`` means on this machine (the embedded mode).

The CLI resolves "auto" itself and passes the answer as the ``label.backend`` override
(the deployed label_feature function reads "auto" as Bedrock).

Offline unless credentials exist: the Anthropic API with ``ANTHROPIC_API_KEY``; else
Bedrock when the user has AWS credentials or names a Bedrock runtime endpoint
(``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``), found by :mod:`saeflow.cli.bedrock_access` before
the local stack replaces the credentials.
"""

from __future__ import annotations

from collections.abc import Mapping

from saeflow.core.contract import auto_labeler

LABEL_CHOICES = ("offline", "bedrock", "anthropic", "none")


def default_labeler(environ: Mapping[str, str], *, bedrock_reachable: bool) -> str:
    """The same order as the label function's (:func:`saeflow.core.contract.auto_labeler`)."""
    return auto_labeler(
        anthropic_key=bool(environ.get("ANTHROPIC_API_KEY")), bedrock=bedrock_reachable
    )
