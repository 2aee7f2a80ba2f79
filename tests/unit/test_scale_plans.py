"""Token checks at validation, transform sizing, the reduce plan, the Glue tables' rows."""

from __future__ import annotations

import pytest

from saeflow.adapters.parquet_tables import encode_parquet, read_parquet_rows
from saeflow.adapters.token_counter import tokenizer_for
from saeflow.core.errors import PromptTooLong
from saeflow.core.scale import MAX_PAYLOAD_MB, ReducePlan, plan_transform
from saeflow.core.tables import (
    PROMPT_COLUMNS,
    TOKEN_FEATURE_COLUMNS,
    TOKEN_FEATURES_SORT,
    ShardTables,
)
from saeflow.core.token_check import TokenCheck, token_upper_bound


class Counter:
    name = "word counter"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def count(self, texts):
        self.calls.append(list(texts))
        return [len(t.split()) for t in texts]


def test_prompts_within_the_byte_bound_need_no_tokenizer():
    asked = []
    check = TokenCheck(10, counter_for=lambda: asked.append(1))
    check.check("123456789", line=1)  # 9 bytes + 1 <= 10
    assert check.finish()["within_bound"] == 1 and not asked


def test_longer_prompts_are_counted_in_batches_and_the_first_over_is_named():
    counter = Counter()
    check = TokenCheck(5, counter_for=lambda: counter, batch=2)
    check.check("a b c d e f g h", line=3)  # 8 words: over
    with pytest.raises(PromptTooLong, match="8 tokens \\(word counter\\); the limit is 5") as info:
        check.check("a b c d e f g h i j k l m n", line=4)
    assert info.value.line == 3 and len(counter.calls) == 1


def test_without_a_tokenizer_long_prompts_are_left_to_the_worker_and_counted():
    check = TokenCheck(5, counter_for=lambda: None)
    for line in range(3):
        check.check("a long prompt over the byte bound", line=line)
    assert check.finish() == {
        "limit": 5, "within_bound": 0, "counted": 0, "unchecked": 3, "counter": None
    }  # fmt: skip


def test_the_bound_holds_for_the_default_tokenizer():
    counter = tokenizer_for("default", offline=True)
    texts = ["plain words", "ünïcödé ẞ 😀😀 \t\n  ", "=" * 300, "<|im_start|>user", "日本語の文"]
    for text, n in zip(texts, counter.count(texts), strict=True):
        assert n <= token_upper_bound(text), text


def test_the_transform_is_sized_from_the_instance_type():
    gpu = plan_transform("ml.g5.xlarge", n_shards=10, max_instances=4, mean_record_bytes=200)
    assert (gpu.instance_count, gpu.max_concurrent_transforms) == (4, 2)
    assert gpu.max_payload_mb == 1 and gpu.max_batch_tokens == 16_384
    big = plan_transform("ml.p5.48xlarge", n_shards=1, max_instances=4, mean_record_bytes=60_000)
    assert big.instance_count == 1 and big.max_batch_tokens == 65_536
    assert big.max_payload_mb == MAX_PAYLOAD_MB  # 2048 x 60 KB > 100 MB: SageMaker's ceiling
    cpu = plan_transform("ml.m5.xlarge", n_shards=3, max_instances=8, mean_record_bytes=100)
    assert (cpu.instance_count, cpu.max_concurrent_transforms, cpu.max_batch_tokens) == (3, 1, 4096)
    unknown = plan_transform("ml.new.type", n_shards=1, max_instances=1, mean_record_bytes=100)
    assert unknown.max_batch_tokens == 16_384
    assert gpu.to_state()["environment"] == {
        "SAEFLOW_MAX_BATCH_TOKENS": "16384",
        "SAEFLOW_MAX_PAYLOAD_MB": "1",
    }


def test_the_reduce_plan_batches_only_when_one_merge_is_not_enough():
    assert not ReducePlan(32, 32, 10).batched and ReducePlan(32, 32, 10).n_batches == 0
    many = ReducePlan.for_shards(1000, 32, 100)
    assert many.batched and (many.batch_size, many.n_batches) == (32, 32)
    huge = ReducePlan.for_shards(10_000, 32, 100)  # 10M prompts: two levels of ~100
    assert (huge.batch_size, huge.n_batches) == (100, 100)
    assert ReducePlan.for_shards(3, 2, 1).batch_size == 2
    assert many.to_state("s3://b/runs/r/shards.json")["manifest"] == {
        "bucket": "b",
        "key": "runs/r/shards.json",
    }


COMPACT = {
    "prompt_index": 4,
    "id": "p5",
    "set": "contrast",
    "text": "The cat",
    "tokens": ["The", " cat"],
    "features": [[[3, 9.5], [1, 0.5]], [[7, 2.25]]],
    "error": None,
}
VERBOSE = {
    **{k: v for k, v in COMPACT.items() if k not in ("tokens", "features")},
    "tokens": [
        {"text": "The", "features": [{"id": 3, "activation": 9.5}, {"id": 1, "activation": 0.5}]},
        {"text": " cat", "features": [{"id": 7, "activation": 2.25}]},
    ],
}


@pytest.mark.parametrize("record", [COMPACT, VERBOSE], ids=["compact", "verbose"])
def test_tables_have_a_row_per_token_feature_and_per_prompt(record):
    tables = ShardTables()
    tables.add(record)
    tables.add({"prompt_index": 5, "id": "p6", "tokens": [], "error": {"error": "PromptTooLong"}})
    rows = read_parquet_rows(
        encode_parquet(tables.token_features, TOKEN_FEATURE_COLUMNS, TOKEN_FEATURES_SORT)
    )
    assert rows == [
        {"set": "contrast", "prompt_index": 4, "prompt_id": "p5", "token_index": 0,
         "token": "The", "feature": 1, "activation": 0.5, "rank": 1},
        {"set": "contrast", "prompt_index": 4, "prompt_id": "p5", "token_index": 0,
         "token": "The", "feature": 3, "activation": 9.5, "rank": 0},
        {"set": "contrast", "prompt_index": 4, "prompt_id": "p5", "token_index": 1,
         "token": " cat", "feature": 7, "activation": 2.25, "rank": 0},
    ]  # fmt: skip
    prompts = read_parquet_rows(encode_parquet(tables.prompts, PROMPT_COLUMNS))
    assert [(p["prompt_id"], p["n_tokens"], p["text"]) for p in prompts] == [
        ("p5", 2, "The cat"),
        ("p6", 0, ""),
    ]


def test_an_empty_shard_still_writes_a_readable_file():
    tables = ShardTables()
    assert read_parquet_rows(encode_parquet(tables.token_features, TOKEN_FEATURE_COLUMNS)) == []
