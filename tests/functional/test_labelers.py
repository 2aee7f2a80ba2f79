"""Labeler backends over real HTTP: Bedrock Converse (boto3) and the Anthropic SDK."""

from __future__ import annotations

import anthropic
import pytest
from fakes.bedrock_server import claude_like_responder, running_fake_bedrock

from saeflow.adapters.anthropic_labeler import AnthropicLabeler
from saeflow.adapters.bedrock_labeler import BedrockLabeler, default_bedrock_client
from saeflow.adapters.labelers import LabelerConfig, labeler_factory, resolve_backend
from saeflow.core.errors import LabelerError, LabelerThrottled

PROMPT = "Text: I flew to<< Paris>>\nText: Rain in<< Paris>>"


@pytest.fixture
def fake():
    with running_fake_bedrock(claude_like_responder) as server:
        yield server


def test_bedrock_converse_round_trip_and_errors(fake, aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
    labeler = BedrockLabeler(
        "anthropic.claude-3-haiku-20240307-v1:0", default_bedrock_client("us-east-1")
    )
    completion = labeler.complete("You explain features.", PROMPT, max_tokens=100)
    assert "fires on 'Paris'" in completion.text
    assert completion.input_tokens > 0 and completion.output_tokens > 0
    sent = fake.requests[-1]["body"]
    assert sent["system"] == [{"text": "You explain features."}]
    assert sent["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.0}
    fake.throttle = True
    with pytest.raises(LabelerThrottled):
        labeler.complete("s", PROMPT, max_tokens=10)
    fake.throttle = False
    invalid = BedrockLabeler("no-such-model", default_bedrock_client("us-east-1"))
    with pytest.raises(LabelerError, match="ValidationException") as raised:
        invalid.complete("s", PROMPT, max_tokens=10)
    assert not isinstance(raised.value, LabelerThrottled)  # a retry cannot fix it


def test_anthropic_sdk_round_trip_and_rate_limit(fake):
    client = anthropic.Anthropic(api_key="test-key", base_url=fake.url, max_retries=0)
    labeler = AnthropicLabeler("claude-3-5-haiku-latest", client)
    completion = labeler.complete("You explain features.", PROMPT, max_tokens=100)
    assert (
        "fires on 'Paris'" in completion.text and completion.model_id == "claude-3-5-haiku-latest"
    )
    assert fake.requests[-1]["api"] == "messages"
    assert labeler.name == "anthropic:claude-3-5-haiku-latest"
    fake.throttle = True
    with pytest.raises(LabelerThrottled, match="429"):
        labeler.complete("s", PROMPT, max_tokens=10)


def test_auto_backend_resolution_and_factory():
    assert (
        resolve_backend("auto", LabelerConfig(bedrock_available=True, bedrock_model_id="m"))
        == "bedrock"
    )
    assert resolve_backend("auto", LabelerConfig(anthropic_api_key="k")) == "anthropic"
    assert resolve_backend("auto", LabelerConfig()) == "offline"
    assert resolve_backend("anthropic", LabelerConfig()) == "anthropic"
    # One order for the Lambda and the CLI: an Anthropic key wins over Bedrock.
    both = LabelerConfig(bedrock_available=True, bedrock_model_id="m", anthropic_api_key="k")
    assert resolve_backend("auto", both) == "anthropic"
    from saeflow.cli.labeler_choice import default_labeler

    assert default_labeler({"ANTHROPIC_API_KEY": "k"}, bedrock_reachable=True) == "anthropic"
    factory = labeler_factory(LabelerConfig())
    assert factory("auto", None) is None
    with pytest.raises(LabelerError, match="no Bedrock model id"):
        factory("bedrock", None)
    with pytest.raises(LabelerError, match="API key"):
        factory("anthropic", None)
    made = labeler_factory(
        LabelerConfig(bedrock_available=True, bedrock_model_id="m", bedrock_client=object())
    )
    first = made("auto", None)
    assert first is made("bedrock", None) and first.name == "bedrock:m"
    assert made("bedrock", "other").name == "bedrock:other"
