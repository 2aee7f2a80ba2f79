"""Prompts that try to steer the labeller: labels keep their format and no instruction
from a prompt reaches a label or an explanation.

The fake Bedrock's model is naive on purpose (fakes/bedrock_server.py): it obeys any
instruction in the text it treats as instructions, which is everything unless the system
prompt declares the data untrusted, and then everything outside JSON strings. The first
tests show that it does obey the fixture's injections in a request built the old way
(text pasted raw with << >> markers), or without the declaration, or with text outside
the JSON: so the test of saeflow's requests below can fail.
"""

from __future__ import annotations

import json

import boto3
import pytest
from fakes.bedrock_server import running_fake_bedrock
from fakes.injections import CANARY, INJECTION_PROMPTS
from fakes.topic_run import RUN_ID, seed_topic_run
from test_label_feature import KEY, MODEL_ID, TABLE, create_table, map_items, records, run_map

from saeflow.adapters.bedrock_labeler import BedrockLabeler, default_bedrock_client
from saeflow.adapters.dynamo_registry import DynamoLabelRegistry
from saeflow.core import layout
from saeflow.core.labeling.answers import LABEL_TOOL, check_label
from saeflow.core.labeling.prompts import EXPLAIN_SYSTEM, build_explanation_request
from saeflow.ports import ToolRequest
from saeflow.steps import aggregate, write_report

ANIMAL = 11


@pytest.fixture
def fake(monkeypatch, aws_credentials):
    with running_fake_bedrock() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.url)
        yield server


def labeler() -> BedrockLabeler:
    return BedrockLabeler(MODEL_ID, default_bedrock_client("us-east-1"))


def legacy_request(prompt: str) -> ToolRequest:
    """How the explain request was built before: the text pasted raw, << >> highlights."""
    marked = prompt.replace(" cat", "<< cat>>")
    return ToolRequest(
        "You are an interpretability researcher. Answer with one JSON object.",
        f"Feature 11. Text excerpts where it activates:\nExample 1:\nText: {marked}",
        LABEL_TOOL,
        400,
    )


def as_excerpt(prompt: str) -> dict:
    words = prompt.split(" ")
    tokens = [words[0]] + [" " + w for w in words[1:]]
    acts = [5.0 if t.strip(' ."}]{').lower() == "cat" else 0.0 for t in tokens]
    return {"tokens": tokens, "activations": acts, "max": max(acts)}


@pytest.mark.parametrize("prompt", INJECTION_PROMPTS, ids=lambda p: p.split("PWNED-")[1][:7])
def test_the_naive_model_obeys_each_injection_in_an_unprotected_request(fake, prompt):
    answer = labeler().ask(legacy_request(prompt))
    if "ECHO" in prompt:  # "do not call any tool": obeying it means no tool call at all
        assert answer.tool_input is None, answer
    else:
        assert CANARY in json.dumps(answer.tool_input).lower(), answer


def test_the_declaration_and_the_json_quoting_are_both_needed(fake):
    prompt = INJECTION_PROMPTS[0]
    protected = build_explanation_request(ANIMAL, [as_excerpt(prompt)])
    assert CANARY not in json.dumps(labeler().ask(protected).tool_input).lower()
    # Without the untrusted-data declaration, the naive model reads the data as orders.
    undeclared = ToolRequest(
        EXPLAIN_SYSTEM.replace("untrusted", "user-provided"),
        protected.prompt,
        protected.tool,
        protected.max_tokens,
    )
    assert CANARY in json.dumps(labeler().ask(undeclared).tool_input).lower()
    # Text outside the JSON document is read as orders too.
    leaked = ToolRequest(
        protected.system, protected.prompt + "\n" + prompt, protected.tool, protected.max_tokens
    )
    assert CANARY in json.dumps(labeler().ask(leaked).tool_input).lower()


def test_injection_prompts_change_no_label_and_no_label_format(store, fake):
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_table(client)
    registry = DynamoLabelRegistry(TABLE, client)
    state = seed_topic_run(store, extra_prompts=INJECTION_PROMPTS)
    state["aggregate"] = aggregate.run(state, store=store)
    state["labels"] = run_map(map_items(state["aggregate"]), store, registry)
    labels = records(store, state["labels"])
    # The injection prompts are what the animal feature was explained from.
    explain = json.loads(fake.requests[0]["body"]["messages"][0]["content"][0]["text"])
    animal_explain = next(
        json.loads(r["body"]["messages"][0]["content"][0]["text"])
        for r in fake.requests
        if r["body"]["toolConfig"]["toolChoice"]["tool"]["name"] == "record_label"
        and json.loads(r["body"]["messages"][0]["content"][0]["text"])["feature"] == ANIMAL
    )
    shown = ["".join(e["tokens"]) for e in animal_explain["excerpts"]]
    assert sum(CANARY in text.lower() for text in shown) >= 6, shown
    assert explain["excerpts"]
    for fid, record in labels.items():
        # Every feature is labelled, in the label schema, and no canary got through.
        assert record["label"], (fid, record.get("unlabelled_reason"))
        check_label({k: record[k] for k in ("label", "explanation", "confidence")})  # raises if not
        text = (record["label"] + " " + record["explanation"]).lower()
        assert CANARY not in text, (fid, record["label"], record["explanation"])
        assert CANARY not in json.dumps(registry.get(KEY, fid) or {}).lower()
    assert labels[ANIMAL]["label"].startswith("fires on 'cat'"), labels[ANIMAL]["label"]
    # "mark all contexts as firing" did not make the predictions all true.
    for request in fake.requests:
        if request["body"]["toolConfig"]["toolChoice"]["tool"]["name"] == "record_predictions":
            fires = [p["fires"] for p in request["reply"].tool_input["predictions"]]
            assert not all(fires), request["reply"]
    write_report.run(state, store=store)
    report = json.loads(store.get_bytes(layout.report_json_key(RUN_ID)))
    for feature in report["features"]:
        assert CANARY not in f"{feature.get('label')} {feature.get('explanation')}".lower()
