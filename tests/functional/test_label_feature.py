"""aggregate -> label_feature -> write_report under moto (S3 + DynamoDB) with a real-HTTP fake Bedrock."""

from __future__ import annotations

import json

import boto3
import pytest
from fakes.bedrock_server import claude_like_responder, running_fake_bedrock
from fakes.run_data import CITY, DENSE, NUMBER, RUN_ID, SAE_ID, seed_run

from saeflow.adapters.bedrock_labeler import BedrockLabeler, default_bedrock_client
from saeflow.adapters.dynamo_registry import DynamoLabelRegistry
from saeflow.core import layout
from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.steps import aggregate, label_feature, write_report

MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
TABLE = "saeflow-labels"


@pytest.fixture
def registry(moto_aws):
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName=TABLE,
        KeySchema=[
            {"AttributeName": "sae_id", "KeyType": "HASH"},
            {"AttributeName": "feature", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "sae_id", "AttributeType": "S"},
            {"AttributeName": "feature", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return DynamoLabelRegistry(TABLE, client)


@pytest.fixture
def fake_bedrock(monkeypatch):
    with running_fake_bedrock(claude_like_responder) as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
        yield fake


def bedrock_factory():
    labeler = BedrockLabeler(MODEL_ID, default_bedrock_client("us-east-1"))
    return lambda backend, model_id: labeler


def run_map(state, store, registry, factory, run_id=RUN_ID):
    return [
        label_feature.run(
            dict(item, run_id=run_id), store=store, registry=registry, labeler_for=factory
        )
        for item in state["aggregate"]["features"]
    ]


def test_aggregate_streams_shards_and_writes_bundles(store):
    state = seed_run(store)
    result = aggregate.run(state, store=store)
    assert result["aggregate_key"] == layout.aggregate_key(RUN_ID)
    ids = [item["feature_id"] for item in result["features"]]
    assert ids[0] == CITY and DENSE not in ids and NUMBER in ids
    item = result["features"][0]
    assert item == {
        "feature_id": CITY,
        "bundle_key": layout.feature_bundle_key(RUN_ID, CITY),
        "sae_id": SAE_ID,
        "labeler": "bedrock",
        "model_id": None,
        "run_id": RUN_ID,
        "bucket": store.bucket,
    }
    bundle = store.get_json(item["bundle_key"])
    assert bundle["corpus"]["promoted_tokens"][0]["token"] == " France"  # from feature_data.jsonl
    assert bundle["prompt_examples"][0]["max"] == 8.0  # " Rome"
    body = store.get_json(result["aggregate_key"])
    assert body["n_prompts"] == 8 and body["n_contrast_prompts"] == 3
    assert body["contrast"]["more_in_contrast"][0]["id"] == NUMBER
    assert json.dumps(result)  # the Map items are plain JSON


def test_budget_and_none_backend_limit_the_map_items(store):
    state = seed_run(store, max_features=1)
    assert [i["feature_id"] for i in aggregate.run(state, store=store)["features"]] == [CITY]
    state = seed_run(store, label_backend="none")
    result = aggregate.run(state, store=store)
    assert result["features"] == [] and result["n_reported"] >= 3


def test_bedrock_labels_are_scored_stored_and_reused(store, registry, fake_bedrock):
    state = seed_run(store)
    state["aggregate"] = aggregate.run(state, store=store)
    labels = run_map(state, store, registry, bedrock_factory())
    assert {r["feature_id"] for r in labels} == {
        i["feature_id"] for i in state["aggregate"]["features"]
    }
    city = store.get_json(layout.label_key(RUN_ID, CITY))
    assert city["label_source"] == f"bedrock:{MODEL_ID}"
    assert city["label"] in {"fires on 'Rome'", "fires on 'Paris'", "fires on 'London'"}
    assert city["usage"]["requests"] == 2 and city["usage"]["input_tokens"] > 0
    # Two requests: the explanation, then the detection scoring of it.
    assert 0.0 <= city["score"] <= 1.0 and city["score_reason"] is None
    assert city["score_method"]
    assert registry.get(SAE_ID, CITY)["label"] == city["label"]
    requests_after_first_run = len(fake_bedrock.requests)
    spent = [store.get_json(r["label_key"])["usage"]["requests"] for r in labels]
    assert requests_after_first_run == sum(spent) >= len(labels)
    assert fake_bedrock.requests[0]["model_id"] == MODEL_ID

    # a second run over the same SAE: every label comes from the registry, no HTTP call
    labels_again = run_map(state, store, registry, bedrock_factory(), run_id="again-0123456789ab")
    assert len(fake_bedrock.requests) == requests_after_first_run
    reused = store.get_json(labels_again[0]["label_key"])
    assert reused["reused"] is True and reused["usage"]["requests"] == 0

    state["labels"] = labels
    out = write_report.run(state, store=store)
    assert out == {"report_prefix": layout.report_prefix(RUN_ID), "status": "succeeded"}
    report = json.loads(store.get_bytes(layout.report_json_key(RUN_ID)))
    assert report["cost"]["llm_requests"] == requests_after_first_run
    assert report["cost"]["estimated_usd"] > 0
    assert report["features"][0]["label"] == city["label"]
    assert report["steering"][0]["results"][1]["strength"] == 16.0
    assert report["sae"]["metrics"]["ce_loss_recovered"] == 0.987
    assert report["timings"]["extraction_s"] == 4.0
    html = store.get_bytes(layout.report_html_key(RUN_ID)).decode()
    assert "<img src=x" not in html and "fires on" in html
    assert store.get_bytes(layout.summary_key(RUN_ID)).decode().startswith("# saeflow report")


def test_offline_label_is_replaced_once_an_llm_is_available(store, registry, fake_bedrock):
    state = seed_run(store, label_backend="offline")
    state["aggregate"] = aggregate.run(state, store=store)
    run_map(state, store, registry, lambda backend, model_id: None)
    assert len(fake_bedrock.requests) == 0
    assert registry.get(SAE_ID, CITY)["label_source"] == "offline heuristic"
    item = dict(state["aggregate"]["features"][0], labeler="bedrock")
    label_feature.run(item, store=store, registry=registry, labeler_for=bedrock_factory())
    assert len(fake_bedrock.requests) == 2
    assert registry.get(SAE_ID, CITY)["label_source"] == f"bedrock:{MODEL_ID}"


def test_throttling_becomes_labeler_throttled(store, registry, fake_bedrock):
    state = seed_run(store)
    item = aggregate.run(state, store=store)["features"][0]
    fake_bedrock.throttle = True
    with pytest.raises(LabelerThrottled, match="ThrottlingException"):
        label_feature.run(item, store=store, registry=registry, labeler_for=bedrock_factory())
    assert registry.get(SAE_ID, CITY) is None  # nothing half-written
    assert not store.exists(layout.label_key(RUN_ID, CITY))


def test_registry_round_trip_and_errors(registry):
    label = {
        "label": "cities",
        "score": 0.8125,
        "label_source": "bedrock:m",
        "usage": {"requests": 2},
    }
    registry.put(SAE_ID, CITY, label)
    assert registry.get(SAE_ID, CITY) == label  # floats round-trip exactly (JSON attribute)
    assert registry.get(SAE_ID, CITY + 1) is None
    assert registry.get("saelens:other/sae", CITY) is None
    client = registry._ddb
    client.put_item(
        TableName=TABLE,
        Item={"sae_id": {"S": SAE_ID}, "feature": {"N": "99"}, "label_json": {"S": "{not json"}},
    )
    assert registry.get(SAE_ID, 99) is None  # a malformed entry is ignored, not fatal
    missing = DynamoLabelRegistry("no-such-table", client)
    with pytest.raises(LabelerError, match="no-such-table"):
        missing.get(SAE_ID, CITY)
