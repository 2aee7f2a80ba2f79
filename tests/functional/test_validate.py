import json

import pytest

from saeflow.core import layout
from saeflow.core.errors import (
    InvalidHook,
    InvalidPromptSet,
    InvalidRunOptions,
    LabelModelNotAllowed,
    PromptSetTooLarge,
    PromptTooLong,
    UnsupportedPromptFile,
)
from saeflow.core.promptset import PromptLimits
from saeflow.core.run_policy import RunLimits
from saeflow.steps import validate
from saeflow.steps.validate import ValidateSettings


def jsonl(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def upload(store, key: str, data: bytes) -> dict:
    """Put a prompt set and return the execution input start_run would build."""
    response = store.client.put_object(Bucket=store.bucket, Key=key, Body=data)
    version, etag = response.get("VersionId"), response["ETag"].strip('"')
    return {
        "run_id": layout.run_id(store.bucket, key, version, etag),
        "bucket": store.bucket,
        "key": key,
        "version_id": version,
        "etag": etag,
        "overrides": {},
    }


def read_jsonl(store, key: str) -> list[dict]:
    return [json.loads(line) for line in store.iter_lines(key)]


def test_good_jsonl_run_piece_and_files(store):
    event = upload(
        store,
        "prompts/demo.jsonl",
        jsonl(
            {"saeflow": {"train": {"k": 16}}}, {"prompt": "Hello", "id": "h"}, {"prompt": "World"}
        ),
    )
    piece = validate.run(event, store=store, settings=ValidateSettings())
    rid = event["run_id"]
    assert piece == {
        "run_id": rid,
        "bucket": store.bucket,
        "key": "prompts/demo.jsonl",
        "options": piece["options"],
        "n_prompts": 2,
        "n_contrast_prompts": 0,
        "input_uri": f"s3://{store.bucket}/runs/{rid}/input/",
        "extract_uri": f"s3://{store.bucket}/runs/{rid}/extract/",
        "steer_input_uri": None,
        "steer_output_uri": f"s3://{store.bucket}/runs/{rid}/steer/out/",
        "n_shards": 1,
        "transform_instance_count": 1,
        "transform": {
            "instance_type": "ml.g5.xlarge",
            "instance_count": 1,
            "max_concurrent_transforms": 2,
            "max_payload_mb": 1,
            "environment": {
                "SAEFLOW_MAX_BATCH_TOKENS": "16384",
                "SAEFLOW_MAX_PAYLOAD_MB": "1",
            },
        },
        "reduce": {
            "n_shards": 1,
            "batch_size": 32,
            "batched": False,
            "n_batches": 0,
            "concurrency": 100,
            "manifest": {"bucket": store.bucket, "key": f"runs/{rid}/shards.json"},
        },
        "token_check": {
            "limit": 512,
            "within_bound": 2,
            "counted": 0,
            "unchecked": 0,
            "counter": None,
        },
        "names": layout.sagemaker_names(rid),
        "has_steering": False,
    }
    assert store.get_json(layout.shard_manifest_key(rid)) == [{"shard": 0}]
    assert piece["options"]["train"]["k"] == 16
    assert read_jsonl(store, layout.input_shard_key(rid, 0)) == [
        {"prompt_index": 0, "id": "h", "set": "main", "text": "Hello"},
        {"prompt_index": 1, "id": "p2", "set": "main", "text": "World"},
    ]
    run_json = store.get_json(layout.run_json_key(rid))
    assert run_json["status"] == "running"
    assert run_json["options"] == piece["options"]
    assert run_json["source"]["version_id"] == event["version_id"]
    assert not store.exists(layout.steer_input_key(rid))


def test_precedence_overrides_line_sidecar(store):
    store.put_json("prompts/p.options.json", {"train": {"k": 8, "seed": 5}, "top_k_features": 3})
    event = upload(
        store, "prompts/p.jsonl", jsonl({"saeflow": {"train": {"k": 12}}}, {"prompt": "x"})
    )
    event["overrides"] = {"train.k": 20, "label.backend": "offline"}
    options = validate.run(event, store=store, settings=ValidateSettings())["options"]
    assert options["train"]["k"] == 20
    assert options["train"]["seed"] == 5
    assert options["top_k_features"] == 3
    assert options["label"]["backend"] == "offline"


def test_sharding_and_instance_count(store):
    event = upload(store, "prompts/big.txt", b"".join(f"prompt {i}\n".encode() for i in range(25)))
    settings = ValidateSettings(shard_size=10, run_limits=RunLimits(max_transform_instances=2))
    piece = validate.run(event, store=store, settings=settings)
    assert piece["n_shards"] == 3
    assert piece["transform_instance_count"] == 2
    shards = sorted(store.list_keys(layout.input_prefix(event["run_id"])))
    assert shards == [layout.input_shard_key(event["run_id"], i) for i in range(3)]
    records = [r for key in shards for r in read_jsonl(store, key)]
    assert [r["prompt_index"] for r in records] == list(range(25))
    assert len(read_jsonl(store, shards[-1])) == 5


def test_contrast_set_follows_main_prompts(store):
    store.put_bytes("prompts/c.txt", b"other one\nother two\n")
    event = upload(store, "prompts/m.json", json.dumps({"prompts": ["main one"]}).encode())
    event["overrides"] = {"contrast": "prompts/c.txt"}
    piece = validate.run(event, store=store, settings=ValidateSettings())
    assert (piece["n_prompts"], piece["n_contrast_prompts"]) == (1, 2)
    records = read_jsonl(store, layout.input_shard_key(event["run_id"], 0))
    assert [(r["set"], r["prompt_index"], r["text"]) for r in records] == [
        ("main", 0, "main one"),
        ("contrast", 0, "other one"),
        ("contrast", 1, "other two"),
    ]


def test_contrast_errors_say_so(store):
    store.put_bytes("prompts/bad.jsonl", b'{"prompt": "a"}\n{"nope": 1}\n')
    event = upload(store, "prompts/m.txt", b"x\n")
    event["overrides"] = {"contrast": "prompts/bad.jsonl"}
    with pytest.raises(InvalidPromptSet) as info:
        validate.run(event, store=store, settings=ValidateSettings())
    assert info.value.line == 2
    assert info.value.message.startswith("contrast set prompts/bad.jsonl:")
    event["overrides"] = {"contrast": "prompts/missing.jsonl"}
    with pytest.raises(InvalidPromptSet, match="does not exist"):
        validate.run(event, store=store, settings=ValidateSettings())


def test_steer_input(store):
    steer = [{"feature": 3, "strengths": [10, -10], "prompts": ["A", "B"], "seed": 2}]
    event = upload(store, "prompts/s.jsonl", jsonl({"saeflow": {"steer": steer}}, {"prompt": "x"}))
    piece = validate.run(event, store=store, settings=ValidateSettings())
    assert piece["has_steering"] is True
    key = layout.steer_input_key(event["run_id"])
    assert piece["steer_input_uri"] == store.uri(key)
    records = read_jsonl(store, key)
    assert len(records) == 4
    assert records[0] == {
        "steer": {
            "feature": 3,
            "strength": 10.0,
            "prompt": "A",
            "max_new_tokens": 50,
            "temperature": 0.5,
            "freq_penalty": 2.0,
            "seed": 2,
        }
    }


def test_url_encoded_event_key(store):
    event = upload(store, "prompts/my set.txt", b"x\n")
    event["key"] = "prompts/my+set.txt"
    assert validate.run(event, store=store, settings=ValidateSettings())["n_prompts"] == 1


@pytest.mark.parametrize(
    ("key", "data", "error", "line"),
    [
        ("prompts/x.csv", b"a,b\n", UnsupportedPromptFile, None),
        ("prompts/x.jsonl", b'{"prompt": "a"}\n{"prompt": \n', InvalidPromptSet, 2),
        ("prompts/x.txt", b"ok\n\xc3\x28\n", InvalidPromptSet, 2),
        ("prompts/x.txt", b"\n\n", InvalidPromptSet, None),
        ("prompts/x.txt", b"a\nb\nc\n", PromptSetTooLarge, 3),
        ("prompts/x.txt", b"a\n" + b"z" * 100 + b"\n", PromptTooLong, 2),
        (
            "prompts/x.jsonl",
            jsonl({"saeflow": {"trian": {}}}, {"prompt": "a"}),
            InvalidRunOptions,
            1,
        ),
        (
            "prompts/x.jsonl",
            jsonl({"saeflow": {"hook": "layer20"}}, {"prompt": "a"}),
            InvalidHook,
            1,
        ),
    ],
)
def test_bad_input_gives_named_errors(store, key, data, error, line):
    event = upload(store, key, data)
    settings = ValidateSettings(limits=PromptLimits(max_prompts=2, max_prompt_tokens=2))
    with pytest.raises(error) as info:
        validate.run(event, store=store, settings=settings)
    assert info.value.line == line
    assert not store.exists(layout.run_json_key(event["run_id"]))


def test_file_size_limit(store):
    event = upload(store, "prompts/x.txt", b"a\n" * 600)
    settings = ValidateSettings(limits=PromptLimits(max_file_bytes=1000))
    with pytest.raises(PromptSetTooLarge):
        validate.run(event, store=store, settings=settings)


def test_bad_sidecar(store):
    store.put_bytes("prompts/p.options.json", b"{not json")
    event = upload(store, "prompts/p.txt", b"x\n")
    with pytest.raises(InvalidPromptSet, match=r"p\.options\.json"):
        validate.run(event, store=store, settings=ValidateSettings())


def test_bad_overrides(store):
    event = upload(store, "prompts/p.txt", b"x\n")
    event["overrides"] = {"train.kk": 1}
    with pytest.raises(InvalidRunOptions, match=r"train\.kk"):
        validate.run(event, store=store, settings=ValidateSettings())


def test_reads_the_version_that_started_the_run(store):
    event = upload(store, "prompts/v.txt", b"first upload\n")
    upload(store, "prompts/v.txt", b"second upload\nwith two prompts\n")
    piece = validate.run(event, store=store, settings=ValidateSettings())
    assert piece["n_prompts"] == 1
    records = read_jsonl(store, layout.input_shard_key(event["run_id"], 0))
    assert records[0]["text"] == "first upload"


ALLOWED = ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic.claude-sonnet-4-5-v1:0")


def test_a_label_model_outside_the_allow_list_is_refused_before_any_work(store):
    settings = ValidateSettings(label_model_ids=ALLOWED)
    options = {"saeflow": {"label": {"model_id": "anthropic.claude-opus-4-1-v1:0"}}}
    event = upload(store, "prompts/expensive.jsonl", jsonl(options, {"prompt": "Hello"}))
    with pytest.raises(LabelModelNotAllowed, match="claude-opus-4-1") as raised:
        validate.run(event, store=store, settings=settings)
    assert raised.value.line == 1  # the options line asked for it
    assert not store.exists(layout.run_json_key(event["run_id"]))
    # A model of the list, or the deployment's default, starts the run.
    event["overrides"] = {"label.model_id": ALLOWED[1]}
    assert (
        validate.run(event, store=store, settings=settings)["options"]["label"]["model_id"]
        == (ALLOWED[1])
    )
    fine = upload(store, "prompts/default.jsonl", jsonl({"prompt": "Hello"}))
    assert validate.run(fine, store=store, settings=settings)["n_prompts"] == 1


# ------------------------------------------------------------------ streaming and tokens (issue 10)


def default_tokenizers(model: str):
    from saeflow.adapters.token_counter import tokenizer_for

    return tokenizer_for(model, offline=True)


def test_long_prompts_are_counted_with_the_models_tokenizer_before_any_gpu_work(store):
    fits = "cat " * 200  # 800 bytes: over the byte bound of 512 tokens, but ~200 tokens
    event = upload(store, "prompts/long.jsonl", jsonl({"prompt": "short"}, {"prompt": fits}))
    piece = validate.run(
        event, store=store, settings=ValidateSettings(), tokenizers=default_tokenizers
    )
    assert piece["token_check"] == {
        "limit": 512,
        "within_bound": 1,
        "counted": 1,
        "unchecked": 0,
        "counter": "tokenizer of smollm2-135m-instruct",
    }
    too_long = "cat " * 700  # 2800 bytes: within the old byte limit (16 KB), ~700 tokens
    event = upload(store, "prompts/long.jsonl", jsonl({"prompt": fits}, {"prompt": too_long}))
    with pytest.raises(PromptTooLong, match=r"prompt has 70\d tokens .* the limit is 512") as info:
        validate.run(event, store=store, settings=ValidateSettings(), tokenizers=default_tokenizers)
    assert info.value.line == 2


def test_without_a_tokenizer_long_prompts_are_left_to_the_worker(store):
    event = upload(store, "prompts/long.txt", ("cat " * 700 + "\n").encode())
    piece = validate.run(event, store=store, settings=ValidateSettings(), tokenizers=lambda m: None)
    assert piece["token_check"]["unchecked"] == 1


def test_a_contrast_prompt_too_long_names_the_contrast_set(store):
    store.put_bytes("prompts/c.txt", b"fine\n" + ("cat " * 700).encode() + b"\n")
    event = upload(store, "prompts/m.txt", b"x\n")
    event["overrides"] = {"contrast": "prompts/c.txt"}
    with pytest.raises(PromptTooLong) as info:
        validate.run(event, store=store, settings=ValidateSettings(), tokenizers=default_tokenizers)
    assert info.value.line == 2
    assert info.value.message.startswith("contrast set prompts/c.txt: prompt has 701 tokens")


def test_a_big_json_document_is_sharded_as_it_streams(store):
    prompts = [{"prompt": f"prompt {i}", "id": f"q{i}"} for i in range(2500)]
    body = json.dumps({"prompts": prompts, "saeflow": {"top_k_features": 7}}).encode()
    event = upload(store, "prompts/big.json", body)
    piece = validate.run(event, store=store, settings=ValidateSettings())
    assert (piece["n_prompts"], piece["n_shards"]) == (2500, 3)
    assert piece["options"]["top_k_features"] == 7  # options after the prompts still count
    assert store.get_json(layout.shard_manifest_key(event["run_id"])) == [
        {"shard": 0},
        {"shard": 1},
        {"shard": 2},
    ]
    last = read_jsonl(store, layout.input_shard_key(event["run_id"], 2))
    assert len(last) == 500 and last[-1] == {
        "prompt_index": 2499,
        "id": "q2499",
        "set": "main",
        "text": "prompt 2499",
    }


def test_a_duplicate_id_far_apart_is_found(store):
    lines = [{"prompt": f"p {i}", "id": f"id-{i}"} for i in range(3000)]
    lines.append({"prompt": "again", "id": "id-17"})
    event = upload(store, "prompts/dup.jsonl", jsonl(*lines))
    with pytest.raises(InvalidPromptSet, match="duplicate id 'id-17'") as info:
        validate.run(event, store=store, settings=ValidateSettings())
    assert info.value.line == 3001
