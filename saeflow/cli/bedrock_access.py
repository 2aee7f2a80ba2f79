"""The user's own AWS credentials for Bedrock in the embedded mode.

The local stack points every AWS client at moto with fake credentials. Bedrock is the one
service that must reach the real AWS (or the endpoint named in
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``), signed with the user's credentials: they are
resolved here with boto3's standard chain (environment, profile, SSO, instance role),
before the stack replaces them, and handed to the functions at every invocation as the
environment a Lambda runtime would give them.

Temporary credentials (SSO, assumed roles) keep refreshing: the environment is rebuilt from
botocore's refreshable credentials at each invocation, with ``AWS_CREDENTIAL_EXPIRATION``
set so that a client the label function keeps re-reads them when they expire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BEDROCK_ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"
# Claude is offered there; used when neither the environment nor the profile names a Region.
FALLBACK_REGION = "us-east-1"


@dataclass(frozen=True)
class BedrockAccess:
    """Where Bedrock is and who calls it: the label function's slice of the user's AWS."""

    region: str
    endpoint_url: str
    credentials: Any | None  # botocore Credentials; None: an endpoint without credentials
    credential_source: str  # "env", "shared-credentials-file", "sso", ... or "none"

    def describe(self) -> str:
        return (
            f"Bedrock in {self.region} at {self.endpoint_url} "
            f"(AWS credentials: {self.credential_source})"
        )

    def environment(self) -> dict[str, str]:
        """The variables the label function runs with (fresh credentials each call)."""
        env = {"BEDROCK_REGION": self.region, BEDROCK_ENDPOINT_VARIABLE: self.endpoint_url}
        if self.credentials is None:
            return env
        frozen = self.credentials.get_frozen_credentials()  # refreshes when near expiry
        env["AWS_ACCESS_KEY_ID"] = frozen.access_key
        env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        # Always set, even empty: the local stack's own (absent) token must not leak in.
        env["AWS_SESSION_TOKEN"] = frozen.token or ""
        expiry = getattr(self.credentials, "_expiry_time", None)
        if expiry is not None:
            env["AWS_CREDENTIAL_EXPIRATION"] = expiry.isoformat()
        return env


def resolve_bedrock_access(environ: Mapping[str, str]) -> BedrockAccess | None:
    """The user's Bedrock access, or None when there are neither credentials nor an endpoint.

    Must run before the local stack starts: it replaces the credential variables.
    """
    import boto3

    session = boto3.Session()
    credentials = session.get_credentials()
    endpoint = environ.get(BEDROCK_ENDPOINT_VARIABLE, "").strip()
    if credentials is None and not endpoint:
        return None
    # AWS_REGION first, as the other AWS SDKs read it; botocore reads AWS_DEFAULT_REGION.
    region = environ.get("AWS_REGION", "").strip() or session.region_name or FALLBACK_REGION
    if not endpoint:
        # botocore's own endpoint rules: the right host for the Region and partition.
        endpoint = session.client("bedrock-runtime", region_name=region).meta.endpoint_url
    return BedrockAccess(
        region=region,
        endpoint_url=endpoint,
        credentials=credentials,
        credential_source=getattr(credentials, "method", None) or "none",
    )
