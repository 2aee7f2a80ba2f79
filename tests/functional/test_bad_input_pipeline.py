"""The bad-input matrix end to end: each malformed upload runs through the real ASL,
template and handlers (the embedded mode's local stack, a stand-in worker) and must end
with a named error, error.json, exit status 2 for ``saeflow run``, and no GPU or LLM work:
no SageMaker job, no label, no state past the capacity gate."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import LocalStack, StackSettings, local_definition
from saeflow.adapters.sfn import start_execution
from saeflow.cli.outcome import EXIT_INVALID_INPUT, download_report, outcome_of
from saeflow.core.errors import is_invalid_input
from saeflow.steps.start_run import run_input_for

pytestmark = pytest.mark.workflow

WORKER = [sys.executable, str(Path(__file__).parent / "fakes" / "contract_worker.py")]
HOOK = "blocks.15.hook_resid_post"
BUCKET = "saeflow-local"
# States a rejected run may enter: nothing that starts a job or asks an LLM.
BEFORE_ANY_WORK = {
    "Validate",
    "ResolveSae",
    "RecordFailure",
    "ModelToDelete",
    "DeleteModelAfterFailure",
    "RunFailed",
}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def lines(options: dict[str, Any] | None, *prompts: str) -> bytes:
    rows = ([{"saeflow": options}] if options is not None else []) + [
        {"prompt": p} for p in prompts
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def with_options(options: dict[str, Any]) -> bytes:
    return lines(options, "the cat sat on the mat", "Paris is in France")


# (case id, key, body, extra objects to put first, expected error name)
CASES: list[tuple[str, str, bytes, dict[str, bytes], str]] = [
    ("deep .json", "prompts/deep.json", ('{"prompts": ' + deep(50_000) + "}").encode(), {}, "InvalidPromptSet"),
    ("deep .jsonl line", "prompts/deepline.jsonl", ('{"prompt": "a", "tags": ' + deep(50_000) + "}\n").encode(), {}, "InvalidPromptSet"),
    ("deep sidecar", "prompts/deepside.jsonl", lines(None, "a"), {"prompts/deepside.options.json": deep(50_000).encode()}, "InvalidPromptSet"),
    ("unsupported suffix", "prompts/table.csv", b"a,b\n", {}, "UnsupportedPromptFile"),
    ("unknown option", "prompts/unknown.jsonl", with_options({"modle": "x"}), {}, "InvalidRunOptions"),
    ("unknown label backend", "prompts/label.jsonl", with_options({"label": {"backend": "gpt"}}), {}, "InvalidRunOptions"),
    ("non-Claude label model", "prompts/labelmodel.jsonl", with_options({"label": {"model_id": "gpt-4o"}}), {}, "InvalidRunOptions"),
    ("unknown architecture", "prompts/arch.jsonl", with_options({"train": {"architecture": "gated"}}), {}, "InvalidRunOptions"),
    ("string for integer", "prompts/kstr.jsonl", with_options({"train": {"k": "32"}}), {}, "InvalidRunOptions"),
    ("steer keyword", "prompts/steerkw.jsonl", with_options({"steer": "some"}), {}, "InvalidRunOptions"),
    ("ce keyword", "prompts/ce.jsonl", with_options({"ce_loss_on_prompts": "maybe"}), {}, "InvalidRunOptions"),
    ("steer beyond the SAE", "prompts/steerwide.jsonl", with_options({"steer": [{"feature": 4608, "strengths": [1]}]}), {}, "InvalidRunOptions"),
    ("unknown hook site", "prompts/site.jsonl", with_options({"hook": "blocks.15.hook_resid"}), {}, "InvalidHook"),
    ("hook beyond the model", "prompts/layer.jsonl", with_options({"hook": "blocks.40.hook_resid_post"}), {}, "InvalidHook"),
    ("unknown SAELens release", "prompts/release.jsonl", with_options({"sae": "saelens:no-such-release/x"}), {}, "SaeNotFound"),
    ("unknown SAE in a repo", "prompts/repo.jsonl", with_options({"sae": f"saelens:nobody/nothing/{HOOK}"}), {}, "SaeNotFound"),
    ("missing s3 SAE", "prompts/s3sae.jsonl", with_options({"sae": f"s3://{BUCKET}/saes/none/here/"}), {}, "SaeNotFound"),
    ("SAE at another hook", "prompts/s3hook.jsonl", with_options({"sae": f"s3://{BUCKET}/saes/imported/l3/"}), {"saes/imported/l3/cfg.json": json.dumps({"d_sae": 64, "metadata": {"hook_name": "blocks.3.hook_resid_post"}}).encode()}, "InvalidHook"),
    ("contrast from runs/", "prompts/crun.jsonl", with_options({"contrast": "runs/other-0123456789ab/input/shard-00000.jsonl"}), {}, "ForbiddenInput"),
    ("contrast from another bucket", "prompts/cbucket.jsonl", with_options({"contrast": "s3://someone-else/prompts/c.jsonl"}), {}, "ForbiddenInput"),
    ("corpus from runs/", "prompts/corpus.jsonl", with_options({"train": {"corpus": f"s3://{BUCKET}/runs/x/input/"}}), {}, "ForbiddenInput"),
    ("corpus as a container path", "prompts/corpuspath.jsonl", with_options({"train": {"corpus": "/proc/self"}}), {}, "ForbiddenInput"),
    ("SAE from runs/", "prompts/saerun.jsonl", with_options({"sae": f"s3://{BUCKET}/runs/x/sae-candidate/"}), {}, "ForbiddenInput"),
    ("missing contrast set", "prompts/cmissing.jsonl", with_options({"contrast": "prompts/nope.jsonl"}), {}, "InvalidPromptSet"),
    ("training tokens over the limit", "prompts/spend.jsonl", with_options({"train": {"training_tokens": 2_000_000_000}}), {}, "SpendLimitExceeded"),
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start every case at once (they fail early, in parallel), then collect the outcomes."""
    settings = StackSettings(
        state_dir=tmp_path_factory.mktemp("state"),
        worker_command=WORKER,
        function_environment={"SAEFLOW_AUTO_LABELER": "offline", "HF_HUB_OFFLINE": "1"},
    )
    with LocalStack(local_definition(), settings) as stack:
        s3, sfn = stack.client("s3"), stack.client("stepfunctions")
        started = {}
        for case_id, key, body, extra, _ in CASES:
            for extra_key, extra_body in extra.items():
                s3.put_object(Bucket=BUCKET, Key=extra_key, Body=extra_body)
            put = s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            run_input = run_input_for(BUCKET, key, put.get("VersionId"), put["ETag"])
            arn = start_execution(sfn, stack.definition.state_machine_arn, run_input)
            started[case_id] = (run_input["run_id"], arn["execution_arn"])
        outcomes = {}
        out_dir = tmp_path_factory.mktemp("out")
        for case_id, (run_id, arn) in started.items():
            execution = stack.wait_for_execution(arn, timeout_s=300)
            history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
            entered = {
                e["stateEnteredEventDetails"]["name"]
                for e in history
                if "stateEnteredEventDetails" in e
            }
            folder = download_report(s3, BUCKET, run_id, out_dir)
            outcomes[case_id] = {
                "run_id": run_id,
                "execution": execution,
                "entered": entered,
                "outcome": outcome_of(run_id, folder, execution),
                "error_file": folder / "error.json",
                "labels": s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{run_id}/labels/").get(
                    "KeyCount", 0
                ),
            }
        sagemaker = stack.client("sagemaker")
        outcomes["_jobs"] = (
            sagemaker.list_training_jobs()["TrainingJobSummaries"]
            + sagemaker.list_transform_jobs()["TransformJobSummaries"]
            + sagemaker.list_models()["Models"]
        )
        yield outcomes


@pytest.mark.parametrize(
    ("case_id", "error"), [(c[0], c[4]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_bad_input_is_a_named_error_with_error_json_and_exit_2(finished_runs, case_id, error):
    run = finished_runs[case_id]
    assert run["execution"]["status"] == "FAILED"
    assert run["execution"].get("error") == error, run["execution"].get("cause")
    written = json.loads(run["error_file"].read_text())
    assert written["error"] == error and written["run_id"] == run["run_id"]
    assert "\n" not in written["message"] and "Traceback" not in written["message"]
    assert is_invalid_input(error)
    assert run["outcome"].exit_code == EXIT_INVALID_INPUT, run["outcome"].message
    # Before any GPU or LLM work: no state past the gate, no label written.
    assert run["entered"] <= BEFORE_ANY_WORK, run["entered"] - BEFORE_ANY_WORK
    assert run["labels"] == 0


def test_no_sagemaker_job_or_model_was_ever_created(finished_runs):
    assert finished_runs["_jobs"] == []
