"""The Hugging Face token from AWS Secrets Manager (template parameter
HuggingFaceTokenSecretArn): for gated models and SAEs, in the worker and in resolve_sae.

The secret holds the token as plain text, or as JSON with one of the keys ``HF_TOKEN``,
``hf_token`` or ``token``. The client is injectable (tests pass a moto-backed one).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from saeflow.core.contract import ENV_HF_TOKEN_SECRET_ARN
from saeflow.core.errors import SaeflowError

logger = logging.getLogger(__name__)

_JSON_KEYS = ("HF_TOKEN", "hf_token", "token")


class HuggingFaceTokenUnavailable(SaeflowError):
    """The configured Hugging Face token secret cannot be read or holds no token."""


def read_hf_token(secret_arn: str, secrets_client: Any | None = None) -> str:
    """The token stored in ``secret_arn``."""
    if secrets_client is None:
        import boto3  # only when the caller gave no client

        secrets_client = boto3.client("secretsmanager")
    try:
        value = secrets_client.get_secret_value(SecretId=secret_arn).get("SecretString") or ""
    except Exception as exc:  # botocore errors of many kinds: name the secret once
        raise HuggingFaceTokenUnavailable(
            f"cannot read the Hugging Face token secret {secret_arn}: {exc}"
        ) from exc
    token = value.strip()
    if token.startswith("{"):
        try:
            document = json.loads(token)
        except ValueError:
            document = {}
        token = next((str(document[k]).strip() for k in _JSON_KEYS if document.get(k)), "")
    if not token:
        raise HuggingFaceTokenUnavailable(f"the secret {secret_arn} holds no Hugging Face token")
    return token


def hf_token_from_environment(
    environ: Mapping[str, str], secrets_client: Any | None = None
) -> str | None:
    """``HF_TOKEN`` when set, else the secret named by ``SAEFLOW_HF_TOKEN_SECRET_ARN`` (an
    empty value means none is configured), else None."""
    if environ.get("HF_TOKEN"):
        return environ["HF_TOKEN"]
    secret_arn = (environ.get(ENV_HF_TOKEN_SECRET_ARN) or "").strip()
    return read_hf_token(secret_arn, secrets_client) if secret_arn else None


def export_hf_token(
    environ: MutableMapping[str, str], secrets_client: Any | None = None
) -> str | None:
    """For the worker: the token (:func:`hf_token_from_environment`), exported as
    ``HF_TOKEN`` into ``environ`` and the process environment, so every hub download of the
    process (TransformerLens, SAELens) uses it. A secret that cannot be read is logged and
    the job goes on without a token: public models load, gated ones fail naming the model."""
    try:
        token = hf_token_from_environment(environ, secrets_client)
    except HuggingFaceTokenUnavailable as exc:
        logger.warning("%s; continuing without a Hugging Face token", exc)
        return None
    if token:
        environ["HF_TOKEN"] = os.environ["HF_TOKEN"] = token
    return token
