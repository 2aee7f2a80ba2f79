"""The user's AWS credentials for Bedrock, resolved before the local stack hides them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from saeflow.cli.bedrock_access import resolve_bedrock_access

_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@pytest.fixture
def clean_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No credentials anywhere: no variables, empty config files, no instance metadata."""
    for name in _CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield monkeypatch


def test_no_credentials_and_no_endpoint_means_no_bedrock(clean_aws: pytest.MonkeyPatch) -> None:
    assert resolve_bedrock_access(os.environ) is None


def test_environment_credentials_reach_the_real_regional_endpoint(
    clean_aws: pytest.MonkeyPatch,
) -> None:
    clean_aws.setenv("AWS_ACCESS_KEY_ID", "AKIAUSERKEY")
    clean_aws.setenv("AWS_SECRET_ACCESS_KEY", "user-secret")
    clean_aws.setenv("AWS_REGION", "eu-west-3")
    access = resolve_bedrock_access(os.environ)
    assert access is not None
    env = access.environment()
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAUSERKEY"
    assert env["AWS_SECRET_ACCESS_KEY"] == "user-secret"
    assert env["AWS_SESSION_TOKEN"] == ""  # never the local stack's
    assert env["BEDROCK_REGION"] == "eu-west-3"
    assert (
        env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    )
    assert "env" in access.describe()


def test_a_named_profile_is_read_before_the_stack_drops_aws_profile(
    clean_aws: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "credentials").write_text(
        "[research]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\n"
        "aws_session_token = profile-token\n"
    )
    (tmp_path / "config").write_text("[profile research]\nregion = ap-northeast-1\n")
    clean_aws.setenv("AWS_PROFILE", "research")
    access = resolve_bedrock_access(os.environ)
    assert access is not None
    clean_aws.delenv("AWS_PROFILE")  # what the local stack does next
    env = access.environment()
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SESSION_TOKEN"]) == ("AKIAPROFILE", "profile-token")
    assert env["BEDROCK_REGION"] == "ap-northeast-1"


def test_an_endpoint_without_credentials_is_enough(clean_aws: pytest.MonkeyPatch) -> None:
    clean_aws.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "http://127.0.0.1:9")
    access = resolve_bedrock_access(os.environ)
    assert access is not None and access.credentials is None
    env = access.environment()
    assert env == {
        "BEDROCK_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": "http://127.0.0.1:9",
    }
