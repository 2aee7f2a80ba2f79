"""aggregate -> label_feature (every Map item) -> write_report under moto (S3 + DynamoDB),
with the real boto3 client against the fake Bedrock runtime over real HTTP.

The happy path, the registry (reuse with 0 requests, conditional writes, refresh),
throttling that never asks twice for what it has, malformed answers, and the spending
cap reached part-way. The Map's Catch with Bedrock down runs in test_label_pipeline.py;
injection prompts in test_label_injection.py."""

from __future__ import annotations

import json

import boto3
import pytest
from fakes.bedrock_server import Reply, running_fake_bedrock
from fakes.run_data import CITY, DENSE, NUMBER, seed_run
from fakes.topic_run import RUN_ID, TOPICS, WEIGHTS_SHA256, seed_topic_run

from saeflow.adapters.bedrock_labeler import BedrockLabeler, default_bedrock_client
from saeflow.adapters.dynamo_registry import DynamoLabelRegistry
from saeflow.core import layout
from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.core.labeling.prompts import PROMPT_VERSION
from saeflow.core.labeling.registry import registry_key
from saeflow.ports import RegistryKey
from saeflow.steps import aggregate, label_feature, write_report

MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
TABLE = "saeflow-labels"
KEY = RegistryKey(WEIGHTS_SHA256, MODEL_ID, PROMPT_VERSION)


def create_table(client) -> None:
    client.create_table(
        TableName=TABLE,
        KeySchema=[
            {"AttributeName": "sae_key", "KeyType": "HASH"},
            {"AttributeName": "feature", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "sae_key", "AttributeType": "S"},
            {"AttributeName": "feature", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


@pytest.fixture
def registry(moto_aws):
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_table(client)
    return DynamoLabelRegistry(TABLE, client)


@pytest.fixture
def fake_bedrock(monkeypatch):
    with running_fake_bedrock() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
        yield fake


def bedrock_factory():
    labeler = BedrockLabeler(MODEL_ID, default_bedrock_client("us-east-1"))
    return lambda backend, model_id: labeler


def map_items(aggregated: dict, **extra) -> list[dict]:
    """What the LabelFeatures Map's ItemSelector hands each iteration."""
    return [{**item, **aggregated["label_settings"], **extra} for item in aggregated["features"]]


def run_map(items, store, registry, *, run_id=RUN_ID, factory=None, **extra):
    """The Map: every item through the step, as the state machine hands it."""
    factory = factory or bedrock_factory()
    return [
        label_feature.run(
            dict(item, run_id=run_id, **extra),
            store=store,
            registry=registry,
            labeler_for=factory,
            ledger=registry,
        )
        for item in items
    ]


def records(store, results):
    return {r["feature_id"]: store.get_json(r["label_key"]) for r in results}


@pytest.fixture
def labelled_run(store, registry, fake_bedrock):
    state = seed_topic_run(store)
    state["aggregate"] = aggregate.run(state, store=store)
    state["labels"] = run_map(map_items(state["aggregate"]), store, registry)
    return state


def test_aggregate_streams_shards_and_writes_bundles(store):
    state = seed_run(store)
    result = aggregate.run(state, store=store)
    run_id = state["run"]["run_id"]
    assert result["aggregate_key"] == layout.aggregate_key(run_id)
    ids = [item["feature_id"] for item in result["features"]]
    assert ids[0] == CITY and DENSE not in ids and NUMBER in ids
    item = result["features"][0]
    assert item == {"feature_id": CITY, "bundle_key": layout.feature_bundle_key(run_id, CITY)}
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


def test_map_items_are_small_and_the_run_settings_go_to_every_item(store):
    state = seed_topic_run(store, label={"max_usd": 0.5, "refresh": True, "max_features": 5})
    aggregated = aggregate.run(state, store=store)
    items = aggregated["features"]
    assert len(items) == 5 and {i["feature_id"] for i in items} <= set(TOPICS)
    assert items[0] == {
        "feature_id": items[0]["feature_id"],
        "bundle_key": layout.feature_bundle_key(RUN_ID, items[0]["feature_id"]),
    }
    assert aggregated["label_settings"] == {
        "weights_sha256": WEIGHTS_SHA256,
        "labeler": "bedrock",
        "model_id": None,
        "max_usd": 0.5,
        "refresh": True,
    }
    body = store.get_json(layout.aggregate_key(RUN_ID))
    assert "label.max_usd=0.5 on actual spend" in body["label_selection"]
    # After a training the hash comes from register_sae's piece.
    trained = {**state, "sae": {**state["sae"], "weights_sha256": None}}
    trained["registered"] = {"weights_sha256": "cd" * 32}
    assert aggregate.run(trained, store=store)["label_settings"]["weights_sha256"] == "cd" * 32


def test_labels_in_two_requests_each_stored_with_score_run_and_time(
    labelled_run, store, registry, fake_bedrock
):
    items = map_items(labelled_run["aggregate"])
    labels = records(store, labelled_run["labels"])
    assert len(labels) == len(items) == len(TOPICS)
    assert len(fake_bedrock.requests) == 2 * len(items)  # one explain, one detection each
    for fid, record in labels.items():
        assert record["label_source"] == f"bedrock:{MODEL_ID}"
        assert record["label"].startswith("fires on '")
        assert record["label"].split("'")[1] in TOPICS[fid]
        assert record["usage"]["requests"] == 2 and record["usage"]["usd"] > 0
        assert record["usage"]["input_tokens"] <= 4000
        assert record["detection"]["balanced_accuracy"] is not None
        assert record["baseline"]["feature_id"] != fid
        assert record["run_id"] == RUN_ID and record["prompt_version"] == PROMPT_VERSION
        stored = registry.get(KEY, fid)
        assert stored["label"] == record["label"] and stored["run_id"] == RUN_ID
        assert (
            stored["labelled_at"].endswith("+00:00") and stored["weights_sha256"] == WEIGHTS_SHA256
        )
        assert (
            stored["detection"] == record["detection"] and stored["baseline"] == record["baseline"]
        )
    # The run's counter holds what the requests cost.
    spent = registry.spent(RUN_ID)
    assert spent["requests"] == 2 * len(items)
    total = sum(r["usage"]["usd"] for r in labels.values())
    assert abs(spent["spent_micro_usd"] / 1e6 - total) < 1e-4

    out = write_report.run(labelled_run, store=store)
    assert out["status"] == "succeeded"
    report = json.loads(store.get_bytes(layout.report_json_key(RUN_ID)))
    assert report["cost"]["llm_requests"] == 2 * len(items)
    assert report["labeling"]["n_scored"] == len(items) and report["labeling"]["n_unlabelled"] == 0
    assert (
        report["labeling"]["mean_balanced_accuracy"]
        > report["labeling"]["baseline_mean_balanced_accuracy"]
    )
    shown = {f["id"]: f["label"] for f in report["features"]}
    assert all(shown[fid] == labels[fid]["label"] for fid in labels)


def test_a_rerun_reuses_labels_that_beat_their_baseline_with_no_request(
    labelled_run, store, registry, fake_bedrock
):
    first = records(store, labelled_run["labels"])
    assert all(r["score"] > r["baseline"]["balanced_accuracy"] for r in first.values())
    # One stored label did no better than its shuffled baseline: it is labelled again.
    weak = next(iter(first))
    stored = registry.get(KEY, weak)
    stored["baseline"] = {**stored["baseline"], "balanced_accuracy": stored["score"]}
    assert registry.put_first(KEY, weak, stored, replacing=RUN_ID) is None
    before = len(fake_bedrock.requests)
    again = run_map(
        map_items(labelled_run["aggregate"]), store, registry, run_id="again-0123456789ab"
    )
    second = records(store, again)
    assert len(fake_bedrock.requests) - before == 2
    for fid, record in second.items():
        if fid == weak:
            assert record["reused"] is False and record["usage"]["requests"] == 2
            assert registry.get(KEY, fid)["run_id"] == "again-0123456789ab"
        else:
            assert record["reused"] is True and record["usage"]["requests"] == 0
            assert record["label"] == first[fid]["label"] and record["run_id"] == RUN_ID
            assert record["reused_why"] == "stored label that beat its baseline"


def test_refresh_relabels_and_replaces_the_stored_labels(
    labelled_run, store, registry, fake_bedrock
):
    items = map_items(labelled_run["aggregate"])
    before = len(fake_bedrock.requests)
    again = run_map(items, store, registry, run_id="fresh-0123456789ab", refresh=True)
    assert len(fake_bedrock.requests) - before == 2 * len(items)
    assert all(not r["reused"] for r in records(store, again).values())
    assert {registry.get(KEY, i["feature_id"])["run_id"] for i in items} == {"fresh-0123456789ab"}


class StaleRegistry:
    """A run that read the registry before another run wrote to it."""

    def __init__(self, inner):
        self.inner = inner

    def get(self, key, feature):
        return None

    def put_first(self, *args, **kwargs):
        return self.inner.put_first(*args, **kwargs)

    def reserve(self, *args):
        return self.inner.reserve(*args)

    def settle(self, *args):
        return self.inner.settle(*args)


def test_concurrent_runs_agree_on_the_first_writers_label(
    labelled_run, store, registry, fake_bedrock
):
    item = map_items(labelled_run["aggregate"])[0]
    fid = item["feature_id"]
    winner = registry.get(KEY, fid)
    fake_bedrock.script = [
        Reply({"label": "a different label", "explanation": "Other.", "confidence": "low"})
    ]
    (result,) = run_map([item], store, StaleRegistry(registry), run_id="late-0123456789ab")
    record = store.get_json(result["label_key"])
    # The late run paid for its requests but takes the stored label, and says why.
    assert record["label"] == winner["label"] and record["run_id"] == RUN_ID
    assert record["reused"] is True and record["reused_why"] == "another run stored its label first"
    assert record["usage"]["requests"] == 2
    assert registry.get(KEY, fid) == winner  # the first writer's label stands


def test_throttled_detection_is_retried_without_asking_for_the_label_again(
    store, registry, fake_bedrock
):
    state = seed_topic_run(store, label={"max_features": 1})
    (item,) = map_items(aggregate.run(state, store=store))
    # Every attempt botocore makes at the detection request is throttled (3 of them).
    fake_bedrock.throttle_tool, fake_bedrock.throttle_next = "record_predictions", 3
    with pytest.raises(LabelerThrottled, match="ThrottlingException"):
        run_map([item], store, registry)
    assert not store.exists(layout.label_key(RUN_ID, item["feature_id"]))
    progress = store.get_json(layout.label_progress_key(RUN_ID, item["feature_id"]))
    assert progress["explanation"]["label"].startswith("fires on")
    # The state machine's Retry: the step resumes from its progress.
    (result,) = run_map([item], store, registry)
    tools = [r["body"]["toolConfig"]["toolChoice"]["tool"]["name"] for r in fake_bedrock.requests]
    assert tools == ["record_label"] + ["record_predictions"] * 4
    record = store.get_json(result["label_key"])
    assert record["label"] == progress["explanation"]["label"] and record["score"] is not None
    assert record["usage"]["requests"] == 2  # the throttled attempts cost nothing
    # A retried item that finished already returns its record without a request.
    assert run_map([item], store, registry) == [result]
    assert len(fake_bedrock.requests) == 5


def test_malformed_answers_are_repaired_once_then_the_feature_is_unlabelled(
    store, registry, fake_bedrock
):
    state = seed_topic_run(store, label={"max_features": 2})
    state["aggregate"] = aggregate.run(state, store=store)
    first, second = map_items(state["aggregate"])
    bad = Reply({"label": "x" * 200, "explanation": "y", "confidence": "high"})
    fake_bedrock.script = [bad, Reply(None, "no tool today")]
    state["labels"] = run_map([first], store, registry)
    record = store.get_json(state["labels"][0]["label_key"])
    assert record["label"] is None and record["usage"]["requests"] == 2
    assert record["unlabelled_reason"].startswith("no valid explain answer in 2 attempts")
    assert "did not call the record_label tool" in record["unlabelled_reason"]
    repair = fake_bedrock.requests[1]["body"]["messages"][0]["content"][0]["text"]
    assert "was rejected" in repair and "at most 80 characters" in repair
    assert registry.get(KEY, first["feature_id"]) is None  # nothing stored
    # One malformed answer is repaired: the feature is labelled.
    fake_bedrock.script = [bad]
    state["labels"] += run_map([second], store, registry)
    assert store.get_json(state["labels"][1]["label_key"])["label"].startswith("fires on")
    write_report.run(state, store=store)
    report = json.loads(store.get_bytes(layout.report_json_key(RUN_ID)))
    shown = next(f for f in report["features"] if f["id"] == first["feature_id"])
    assert shown["label"] is None and "no valid explain answer" in shown["score_reason"]
    assert report["labeling"]["n_unlabelled"] == 1


def test_the_spending_cap_stops_labelling_part_way_on_actual_spend(store, registry, fake_bedrock):
    state = seed_topic_run(store, label={"max_usd": 0.009})
    state["aggregate"] = aggregate.run(state, store=store)
    state["labels"] = run_map(map_items(state["aggregate"]), store, registry, max_usd=0.009)
    labels = records(store, state["labels"])
    done = [r for r in labels.values() if r["label"]]
    stopped = [r for r in labels.values() if not r["label"]]
    assert done and stopped, [r["label"] for r in labels.values()]
    assert all("label.max_usd=0.009 reached" in r["unlabelled_reason"] for r in stopped)
    spent = registry.spent(RUN_ID)["spent_micro_usd"] / 1e6
    assert spent <= 0.009
    assert spent == pytest.approx(sum(r["usage"]["usd"] for r in labels.values()), abs=1e-5)
    write_report.run(state, store=store)
    report = json.loads(store.get_bytes(layout.report_json_key(RUN_ID)))
    assert "left unlabelled (label.max_usd=0.009 reached" in report["labeling"]["verdict"]


def test_without_a_weights_hash_nothing_is_reused_or_stored(store, registry, fake_bedrock):
    state = seed_topic_run(store, label={"max_features": 1})
    (item,) = map_items(aggregate.run(state, store=store))
    item = dict(item, weights_sha256=None)
    run_map([item], store, registry)
    assert registry.get(KEY, item["feature_id"]) is None
    key = registry_key(WEIGHTS_SHA256, None)
    assert key.model_id == "offline-heuristic"


def test_offline_labels_live_under_their_own_key(store, registry, fake_bedrock):
    state = seed_topic_run(store, label={"backend": "offline", "max_features": 2})
    items = map_items(aggregate.run(state, store=store))
    run_map(items, store, registry, factory=lambda backend, model_id: None)
    assert len(fake_bedrock.requests) == 0
    offline = registry_key(WEIGHTS_SHA256, None)
    stored = registry.get(offline, items[0]["feature_id"])
    assert stored["label"].startswith("[heuristic]") and stored["model_id"] == "offline-heuristic"
    # Claude labels are another key: an offline label never stands for one.
    assert registry.get(KEY, items[0]["feature_id"]) is None
    run_map([dict(items[0], labeler="bedrock")], store, registry, run_id="later-0123456789ab")
    assert len(fake_bedrock.requests) == 2
    assert registry.get(KEY, items[0]["feature_id"])["label_source"] == f"bedrock:{MODEL_ID}"


def test_registry_round_trip_and_errors(registry):
    label = {"label": "cities", "score": 0.8125, "run_id": "r1", "model_id": MODEL_ID}
    assert registry.put_first(KEY, 7, label) is None
    assert registry.get(KEY, 7) == label  # floats round-trip exactly (JSON attribute)
    assert registry.get(KEY, 8) is None
    assert registry.get(RegistryKey("cd" * 32, MODEL_ID, PROMPT_VERSION), 7) is None
    # First writer wins; a replacement must name the run it replaces.
    assert registry.put_first(KEY, 7, {**label, "label": "late"}) == label
    assert registry.put_first(KEY, 7, {**label, "run_id": "r2"}, replacing="r0") == label
    assert registry.put_first(KEY, 7, {**label, "run_id": "r2"}, replacing="r1") is None
    assert registry.get(KEY, 7)["run_id"] == "r2"
    # The spend counter: a reservation only within the cap, settled to the actual cost.
    assert registry.reserve("run-x", 600, 1000) and not registry.reserve("run-x", 600, 1000)
    registry.settle("run-x", -200, {"requests": 1, "input_tokens": 10, "output_tokens": 2})
    assert registry.spent("run-x") == {
        "spent_micro_usd": 400,
        "requests": 1,
        "input_tokens": 10,
        "output_tokens": 2,
    }
    assert registry.reserve("run-x", 600, 1000)
    client = registry._ddb
    client.put_item(
        TableName=TABLE,
        Item={"sae_key": {"S": KEY.partition}, "feature": {"N": "99"}, "label_json": {"S": "{x"}},
    )
    assert registry.get(KEY, 99) is None  # a malformed entry is ignored, not fatal
    missing = DynamoLabelRegistry("no-such-table", client)
    with pytest.raises(LabelerError, match="no-such-table") as raised:
        missing.get(KEY, 7)
    assert not isinstance(raised.value, LabelerThrottled)
