"""The map/reduce path through the real ASL and template in the embedded mode: many shards,
the SummarizeShards and MergePartials Distributed Maps (ItemReader over the manifest,
ItemBatcher), the final merge, the Glue tables' Parquet, and named errors across the map.

Small shards and batches (template parameters) make a handful of prompts take every branch;
the GPU worker is the fast contract stand-in (fakes/contract_worker.py).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from infra.local.stack import LocalStack, StackSettings, local_definition
from saeflow.adapters.s3_store import S3Store
from saeflow.core import layout
from saeflow.core.aggregation.summary import summarize
from saeflow.core.options import RunOptions
from saeflow.steps.aggregate import gather
from saeflow.steps.partials import merge_run_partials
from saeflow.steps.start_run import run_input_for

pytestmark = pytest.mark.workflow


def rounded(value, digits: int = 12):
    """Floats to ``digits`` significant digits: summation order moves the last bits only."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


WORKER = [sys.executable, str(Path(__file__).parent / "fakes" / "contract_worker.py")]
PROMPTS = [f"prompt {i} about cats and Paris number {i}" for i in range(10)]
# 10 prompts, 3 a shard: 4 shards; batches of 2: MergePartials makes 2 batch partials.
PARAMETERS = {"PromptsPerShard": "3", "ReduceBatchSize": "2", "MapConcurrency": "2"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    settings = StackSettings(
        state_dir=tmp_path / "state",
        worker_command=WORKER,
        function_environment={"SAEFLOW_AUTO_LABELER": "offline"},
    )
    with LocalStack(local_definition(parameter_overrides=PARAMETERS), settings) as running:
        yield running


def run(stack: LocalStack, prompts: list[str], options: dict | None = None) -> tuple[str, dict]:
    bucket = stack.definition.bucket_name
    lines = [{"saeflow": options or {"sae": "train", "label": {"backend": "none"}}}]
    lines += [{"prompt": p} for p in prompts]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    put = stack.client("s3").put_object(Bucket=bucket, Key="prompts/scale.jsonl", Body=body)
    run_input = run_input_for(bucket, "prompts/scale.jsonl", put.get("VersionId"), put["ETag"])
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=stack.definition.state_machine_arn,
        name=run_input["run_id"],
        input=json.dumps(run_input),
    )["executionArn"]
    return run_input["run_id"], stack.wait_for_execution(arn, timeout_s=300)


def states_entered(stack: LocalStack, execution_arn: str) -> list[str]:
    history = stack.client("stepfunctions").get_execution_history(
        executionArn=execution_arn, maxResults=1000
    )["events"]
    return [
        e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e
    ]


def test_many_shards_are_summarised_merged_in_batches_and_equal_one_pass(stack):
    run_id, result = run(stack, PROMPTS)
    assert result["status"] == "SUCCEEDED", result.get("cause")
    entered = states_entered(stack, result["executionArn"])
    assert entered.index("SummarizeShards") < entered.index("MergePartials")
    assert entered.index("MergePartials") < entered.index("Aggregate")

    store = S3Store(stack.definition.bucket_name, stack.client("s3"))
    keys = set(store.list_keys(layout.run_prefix(run_id)))
    assert {layout.shard_partial_key(run_id, i) for i in range(4)} <= keys
    batches = {k for k in keys if k.startswith(layout.batch_partials_prefix(run_id))}
    assert batches == {layout.batch_partial_key(run_id, 0), layout.batch_partial_key(run_id, 2)}

    # The stored partials, merged as the final step merges them, equal one pass over the
    # same extraction output; aggregate.json is their summary.
    run_json = store.get_json(layout.run_json_key(run_id))
    single_pass_state = {"run_id": run_id, "extract_uri": store.uri(layout.extract_prefix(run_id))}
    single = gather(store, single_pass_state, RunOptions.from_dict(run_json["options"]))
    merged = merge_run_partials(store, run_id, {"n_shards": 4, "batched": True})
    assert (
        single.accumulator.n_prompts["main"] == len(PROMPTS) == merged.accumulator.n_prompts["main"]
    )
    assert rounded(summarize(merged.accumulator, None)) == rounded(
        summarize(single.accumulator, None)
    )
    assert merged.sample.records() == single.sample.records()
    aggregate = store.get_json(layout.aggregate_key(run_id))
    assert aggregate["n_prompts"] == len(PROMPTS) and aggregate["n_shards_merged"] == 4
    assert {f["id"]: f["token_count"] for f in aggregate["features"]} == {
        fid: state.counts("main").tokens for fid, state in single.accumulator.features.items()
    }

    # Every prompt's token features are in the Parquet of the Glue tables.
    token_rows = prompt_rows = 0
    for shard in range(4):
        for table in (layout.TOKEN_FEATURES_TABLE, layout.PROMPTS_TABLE):
            data = store.get_bytes(layout.table_shard_key(table, run_id, shard))
            rows = pq.read_table(io.BytesIO(data)).num_rows
            token_rows += rows if table == layout.TOKEN_FEATURES_TABLE else 0
            prompt_rows += rows if table == layout.PROMPTS_TABLE else 0
    n_tokens = sum(len(p.split()) for p in PROMPTS)  # the fake: one feature a word
    assert (token_rows, prompt_rows) == (n_tokens, len(PROMPTS))

    # The report shows the prompt sample the merge kept (all ten fit).
    report = store.get_json(layout.report_json_key(run_id))
    assert sorted(p["id"] for p in report["prompts"]) == sorted(f"p{i}" for i in range(1, 11))


def test_a_per_record_error_in_one_shard_fails_the_run_by_its_name(stack):
    prompts = [*PROMPTS[:7], "this one is TOOLONG for the worker", *PROMPTS[7:]]
    run_id, result = run(stack, prompts)
    assert result["status"] == "FAILED"
    assert result["error"] == "PromptTooLong"
    entered = states_entered(stack, result["executionArn"])
    assert "MergePartials" in entered and entered[-1] == "RunFailed"
    store = S3Store(stack.definition.bucket_name, stack.client("s3"))
    error = store.get_json(layout.error_key(run_id))
    assert error["error"] == "PromptTooLong" and "9999 tokens" in error["message"]
