"""The Hugging Face token from Secrets Manager (moto): the template passes
SAEFLOW_HF_TOKEN_SECRET_ARN to every job; the worker reads the secret and exports HF_TOKEN
(so TransformerLens and SAELens downloads use it); resolve_sae uses it to check SAEs."""

from __future__ import annotations

import json

import boto3
import pytest

from gpu_worker.__main__ import _worker_settings, build_parser
from saeflow.adapters.hf_token import (
    HuggingFaceTokenUnavailable,
    export_hf_token,
    hf_token_from_environment,
    read_hf_token,
)

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def no_hf_token(monkeypatch):
    """HF_TOKEN absent during each test and restored after (export_hf_token sets it)."""
    monkeypatch.setenv("HF_TOKEN", "placeholder")
    monkeypatch.delenv("HF_TOKEN")


@pytest.fixture
def secrets(moto_aws):
    return boto3.client("secretsmanager", region_name=REGION)


def secret(client, name: str, value: str) -> str:
    return client.create_secret(Name=name, SecretString=value)["ARN"]


@pytest.mark.parametrize(
    "stored",
    ["hf_plain_token", json.dumps({"HF_TOKEN": "hf_plain_token"}), '{"token": "hf_plain_token"}'],
)
def test_the_secret_holds_the_token_as_text_or_json(secrets, stored):
    arn = secret(secrets, "hf", stored)
    assert read_hf_token(arn, secrets) == "hf_plain_token"


def test_no_secret_configured_means_no_token(secrets):
    assert hf_token_from_environment({"SAEFLOW_HF_TOKEN_SECRET_ARN": ""}, secrets) is None
    assert hf_token_from_environment({}, secrets) is None
    # An explicit HF_TOKEN wins over the secret.
    arn = secret(secrets, "hf", "from-secret")
    env = {"HF_TOKEN": "explicit", "SAEFLOW_HF_TOKEN_SECRET_ARN": arn}
    assert hf_token_from_environment(env, secrets) == "explicit"


def test_an_unreadable_or_empty_secret_is_a_named_error(secrets):
    with pytest.raises(HuggingFaceTokenUnavailable, match="cannot read"):
        read_hf_token("arn:aws:secretsmanager:us-east-1:123456789012:secret:missing", secrets)
    with pytest.raises(HuggingFaceTokenUnavailable, match="no Hugging Face token"):
        read_hf_token(secret(secrets, "empty", json.dumps({"other": "x"})), secrets)


def test_the_worker_exports_the_token_for_every_download(secrets):
    arn = secret(secrets, "hf", "hf_from_secrets_manager")
    environ = {"SAEFLOW_HF_TOKEN_SECRET_ARN": arn}
    assert export_hf_token(environ, secrets) == "hf_from_secrets_manager"
    assert environ["HF_TOKEN"] == "hf_from_secrets_manager"
    import os

    assert os.environ["HF_TOKEN"] == "hf_from_secrets_manager"


def test_the_serve_worker_reads_the_secret_named_by_the_job_environment(
    moto_aws, secrets, monkeypatch
):
    """The real reader of ``python -m gpu_worker serve`` (boto3's default client, moto)."""
    arn = secret(secrets, "hf", json.dumps({"HF_TOKEN": "hf_serve_token"}))
    args = build_parser().parse_args(["serve"])
    settings = _worker_settings(args, {"SAEFLOW_HF_TOKEN_SECRET_ARN": arn}, "/opt/ml/model")
    assert settings.hf_token == "hf_serve_token"


def test_a_secret_the_worker_cannot_read_leaves_it_without_a_token(moto_aws, caplog):
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:gone"
    assert export_hf_token({"SAEFLOW_HF_TOKEN_SECRET_ARN": missing}) is None
    assert "continuing without a Hugging Face token" in caplog.text
