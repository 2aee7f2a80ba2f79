"""The labelling Map in the real ASL (moto's interpreter, the embedded mode's local stack)
with the label function calling the fake Bedrock runtime over real HTTP.

Bedrock down: every feature's task fails after botocore's and the Map's retries, the
Map's Catch records it unlabelled with the error, and the run still writes its report.
The Map's retry intervals are shortened here (the definition is otherwise the file's).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.bedrock_server import running_fake_bedrock
from test_pipeline import finished, prompt_file, read_json, upload

from infra.local.stack import LocalStack, StackSettings, local_definition
from saeflow.core import layout

pytestmark = pytest.mark.workflow

WORKER = [sys.executable, str(Path(__file__).parent / "fakes" / "contract_worker.py")]


def fast_retries(definition: str) -> str:
    """The same machine, with the labelling task's retry waits cut to ~1 s."""
    asl = json.loads(definition)
    task = asl["States"]["LabelFeatures"]["ItemProcessor"]["States"]["LabelFeature"]
    for rule in task["Retry"]:
        rule.update(IntervalSeconds=1, BackoffRate=1.0, MaxDelaySeconds=1, MaxAttempts=2)
    return json.dumps(asl)


@pytest.fixture
def bedrock() -> Iterator:
    with running_fake_bedrock() as fake:
        yield fake


@pytest.fixture
def stack(tmp_path: Path, bedrock) -> Iterator[LocalStack]:
    base = local_definition()
    definition = dataclasses.replace(base, definition=fast_retries(base.definition))
    settings = StackSettings(
        state_dir=tmp_path / "state",
        worker_command=WORKER,
        function_environment={"SAEFLOW_AUTO_LABELER": "bedrock"},
        function_environment_source=lambda: {
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
            "BEDROCK_REGION": "us-east-1",
        },
        enable_triggers=True,
    )
    with LocalStack(definition, settings) as running:
        yield running


OPTIONS = {"sae": "train", "label": {"backend": "auto", "max_features": 2}}


def test_bedrock_down_leaves_every_feature_unlabelled_and_the_report_written(stack, bedrock):
    bedrock.throttle = True
    run_input = upload(stack, "prompts/down.jsonl", prompt_file(OPTIONS))
    result = finished(stack, run_input["run_id"])
    assert result["status"] == "SUCCEEDED", result.get("cause")
    state = json.loads(result["output"])
    assert len(state["labels"]) == 2
    for item in state["labels"]:
        assert item["label_key"] is None and item["labelled"] is False
        assert item["error"]["Error"] == "LabelerThrottled"
    # botocore's 3 attempts per invocation, the Map's first try and 2 retries, per feature.
    assert len(bedrock.requests) == 2 * 3 * 3
    report = read_json(stack, layout.report_json_key(run_input["run_id"]))
    assert report["status"] == "succeeded"
    unlabelled = [
        f for f in report["features"] if f["id"] in {i["feature_id"] for i in state["labels"]}
    ]
    assert len(unlabelled) == 2
    for feature in unlabelled:
        assert feature["label"] is None
        assert feature["score_reason"].startswith(
            "not labelled: labelling failed after its retries (LabelerThrottled): Bedrock"
        )
    assert report["labeling"]["n_unlabelled"] == 2
    assert "2 of 2 features left unlabelled" in report["labeling"]["verdict"]


def test_with_bedrock_up_the_map_labels_through_the_same_path(stack, bedrock):
    bedrock.throttle_next = 2  # the first request is throttled twice, then answered
    run_input = upload(stack, "prompts/up.jsonl", prompt_file(OPTIONS))
    result = finished(stack, run_input["run_id"])
    assert result["status"] == "SUCCEEDED", result.get("cause")
    state = json.loads(result["output"])
    assert all(item["labelled"] for item in state["labels"])
    report = read_json(stack, layout.report_json_key(run_input["run_id"]))
    labelled = [f for f in report["features"] if f.get("label")]
    assert len(labelled) == 2
    assert all(f["label_source"].startswith("bedrock:us.anthropic.claude") for f in labelled)
    assert report["cost"]["llm_requests"] == 4  # 2 per feature; throttled attempts are free
    assert len(bedrock.requests) == 6
