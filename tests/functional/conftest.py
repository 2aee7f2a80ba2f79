"""Shared fixtures for functional tests: AWS services emulated by moto (mock_aws)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from saeflow.adapters.s3_store import S3Store

REGION = "us-east-1"
BUCKET = "saeflow-test"


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake credentials and region so nothing can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def moto_aws(aws_credentials):
    """All AWS calls inside go to moto; Step Functions really executes definitions."""
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield


@pytest.fixture
def s3_client(moto_aws):
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture
def store(s3_client) -> S3Store:
    """An ObjectStore over a fresh, versioned moto bucket."""
    return S3Store(BUCKET, s3_client)
