"""Labeller backends over real HTTP: Bedrock Converse (boto3), the Anthropic SDK and
AnthropicBedrock, against the fake Bedrock runtime: the same forced tool, the cache point,
usage, throttling, timeouts."""

from __future__ import annotations

import json
import time

import anthropic
import pytest
from fakes.bedrock_server import Reply, running_fake_bedrock

from saeflow.adapters.anthropic_labeler import AnthropicLabeler
from saeflow.adapters.bedrock_labeler import (
    BedrockLabeler,
    ClientTimeouts,
    default_bedrock_client,
    worst_case_request_s,
)
from saeflow.adapters.labelers import LabelerConfig, labeler_factory, resolve_backend
from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.core.labeling.answers import LABEL_TOOL, check_label
from saeflow.core.labeling.prompts import EXPLAIN_SYSTEM, build_explanation_request

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
EXAMPLES = [
    {"tokens": ["I", " flew", " to", " Paris"], "activations": [0, 0, 0, 9.0], "max": 9.0},
    {"tokens": ["Rain", " in", " Paris"], "activations": [0, 0, 7.0], "max": 7.0},
]
REQUEST = build_explanation_request(7, EXAMPLES)


@pytest.fixture
def fake():
    with running_fake_bedrock(min_cache_tokens=50) as server:
        yield server


@pytest.fixture
def bedrock(fake, aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
    return BedrockLabeler(MODEL, default_bedrock_client("us-east-1"))


def test_converse_forces_the_tool_and_caches_the_instructions(fake, bedrock):
    answer = bedrock.ask(REQUEST)
    assert check_label(answer.tool_input).label == "fires on 'Paris'"
    assert answer.model_id == MODEL and answer.stop_reason == "tool_use"
    sent = fake.requests[-1]["body"]
    assert sent["system"] == [{"text": EXPLAIN_SYSTEM}, {"cachePoint": {"type": "default"}}]
    assert sent["toolConfig"]["toolChoice"] == {"tool": {"name": "record_label"}}
    (tool,) = sent["toolConfig"]["tools"]
    assert tool["toolSpec"]["name"] == "record_label"
    assert tool["toolSpec"]["inputSchema"]["json"] == LABEL_TOOL.input_schema
    assert sent["messages"] == [{"role": "user", "content": [{"text": REQUEST.prompt}]}]
    assert sent["inferenceConfig"] == {"maxTokens": REQUEST.max_tokens, "temperature": 0.0}
    # The first request writes the shared prefix to the cache, the next one reads it.
    first = answer.usage
    second = bedrock.ask(REQUEST).usage
    assert first.cache_write_tokens > 0 and first.cache_read_tokens == 0
    assert second.cache_read_tokens == first.cache_write_tokens and second.cache_write_tokens == 0
    assert second.input_tokens == first.input_tokens > 0 and second.output_tokens > 0


def test_an_answer_without_the_tool_is_no_tool_input(fake, bedrock):
    fake.script = [Reply(None, "I would rather chat.")]
    answer = bedrock.ask(REQUEST)
    assert answer.tool_input is None and answer.text == "I would rather chat."


def test_converse_errors_are_named_for_the_state_machine(fake, bedrock, aws_credentials):
    fake.throttle = True
    with pytest.raises(LabelerThrottled, match="ThrottlingException"):
        bedrock.ask(REQUEST)
    # botocore's adaptive mode tried three times before giving up.
    assert len(fake.requests) == 3
    fake.throttle = False
    invalid = BedrockLabeler("no-such-model", default_bedrock_client("us-east-1"))
    with pytest.raises(LabelerError, match="ValidationException") as raised:
        invalid.ask(REQUEST)
    assert not isinstance(raised.value, LabelerThrottled)  # a retry cannot fix it


def test_throttled_twice_then_answered_within_one_call(fake, bedrock):
    fake.throttle_next = 2
    answer = bedrock.ask(REQUEST)
    assert answer.tool_input is not None and len(fake.requests) == 3


def test_a_slow_answer_past_the_read_timeout_is_a_retryable_error(
    fake, aws_credentials, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
    timeouts = ClientTimeouts(connect_s=1, read_s=1, max_attempts=2, max_backoff_s=1)
    labeler = BedrockLabeler(MODEL, default_bedrock_client("us-east-1", timeouts))
    fake.delay_s = 2.5
    started = time.monotonic()
    with pytest.raises(LabelerThrottled, match="timeout"):
        labeler.ask(REQUEST)
    elapsed = time.monotonic() - started
    assert len(fake.requests) == 2  # every attempt timed out
    assert 2 <= elapsed <= worst_case_request_s(timeouts) + 1


def test_worst_case_of_the_default_client():
    # 3 attempts x (5 s + 60 s) + 2 backoffs of 20 s: the Lambda timeout (300 s) is above.
    assert worst_case_request_s() == 235


def test_anthropic_sdk_uses_the_same_tool_and_marks_the_cache(fake):
    client = anthropic.Anthropic(api_key="test-key", base_url=fake.url, max_retries=0)
    labeler = AnthropicLabeler("claude-3-5-haiku-latest", client)
    answer = labeler.ask(REQUEST)
    assert check_label(answer.tool_input).label == "fires on 'Paris'"
    assert (
        labeler.name == "anthropic:claude-3-5-haiku-latest"
        and answer.model_id == "claude-3-5-haiku-latest"
    )
    sent = fake.requests[-1]["body"]
    assert fake.requests[-1]["api"] == "messages"
    assert sent["tool_choice"] == {"type": "tool", "name": "record_label"}
    assert sent["tools"] == [
        {
            "name": "record_label",
            "description": LABEL_TOOL.description,
            "input_schema": LABEL_TOOL.input_schema,
        }
    ]
    assert sent["system"] == [
        {"type": "text", "text": EXPLAIN_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    assert labeler.ask(REQUEST).usage.cache_read_tokens > 0
    fake.throttle = True
    with pytest.raises(LabelerThrottled, match="429"):
        labeler.ask(REQUEST)


def test_anthropic_bedrock_client_goes_through_invoke_model(fake):
    client = anthropic.AnthropicBedrock(
        aws_access_key="AKIATEST",
        aws_secret_key="secret",
        aws_region="us-east-1",
        base_url=fake.url,
        max_retries=0,
    )
    labeler = AnthropicLabeler(MODEL, client, backend="bedrock-messages")
    answer = labeler.ask(REQUEST)
    assert check_label(answer.tool_input).label == "fires on 'Paris'"
    request = fake.requests[-1]
    assert request["api"] == "invoke" and request["model_id"] == MODEL
    assert request["body"]["tool_choice"] == {"type": "tool", "name": "record_label"}
    assert json.dumps(request["body"]["tools"][0]["input_schema"]) == json.dumps(
        LABEL_TOOL.input_schema
    )


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
    assert made("bedrock", "other").name == "bedrock:other" and first.model_id == "m"
