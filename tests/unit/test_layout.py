import re

import pytest

from saeflow.core import layout


def test_run_id_is_stable_and_shaped():
    rid = layout.run_id("bkt", "prompts/My Prompts_v2.jsonl", "v1", '"abc"')
    assert rid == layout.run_id("bkt", "prompts/My Prompts_v2.jsonl", "v1", "other-etag")
    assert re.fullmatch(r"My-Prompts-v2-[0-9a-f]{12}", rid)
    assert layout.is_run_id(rid)


def test_run_id_changes_with_the_upload():
    base = layout.run_id("bkt", "prompts/a.jsonl", "v1", "e")
    assert layout.run_id("bkt", "prompts/a.jsonl", "v2", "e") != base
    assert layout.run_id("other", "prompts/a.jsonl", "v1", "e") != base
    assert layout.run_id("bkt", "prompts/b.jsonl", "v1", "e") != base


def test_run_id_uses_etag_without_a_version():
    quoted = layout.run_id("bkt", "prompts/a.txt", None, '"0123"')
    assert quoted == layout.run_id("bkt", "prompts/a.txt", "null", "0123")
    assert quoted == layout.run_id("bkt", "prompts/a.txt", "", "0123")
    assert quoted != layout.run_id("bkt", "prompts/a.txt", None, "4567")


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("prompts/a.jsonl", "a"),
        ("prompts/sub/x y.txt", "x-y"),
        ("prompts/___.json", "run"),
        ("prompts/" + "n" * 80 + ".jsonl", "n" * 40),
        ("prompts/ünï-cödé.jsonl", "n-c-d"),
    ],
)
def test_prompt_set_name(key, name):
    assert layout.prompt_set_name(key) == name
    assert len(layout.run_id("b", key, "v", None)) <= 53


def test_model_slug_and_sae_keys():
    assert layout.model_slug("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB--SmolLM2-135M"
    h = layout.sae_hash("m/x", "blocks.1.hook_resid_post", {"k": 4})
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert (
        layout.sae_id("m/x", "blocks.1.hook_resid_post", h)
        == f"saes/m--x/blocks.1.hook_resid_post/{h}"
    )
    assert layout.sae_prefix("m/x", "blocks.1.hook_resid_post", h).endswith(f"{h}/")


def test_sae_hash_is_canonical():
    a = layout.sae_hash("m", "h", {"k": 4, "lr": 0.1})
    assert a == layout.sae_hash("m", "h", {"lr": 0.1, "k": 4})
    assert a != layout.sae_hash("m", "h", {"k": 5, "lr": 0.1})
    assert a != layout.sae_hash("m", "h2", {"k": 4, "lr": 0.1})
    assert a != layout.sae_hash("m2", "h", {"k": 4, "lr": 0.1})


def test_sagemaker_names():
    rid = layout.run_id("b", "prompts/" + "z" * 60 + ".jsonl", "v", None)
    names = layout.sagemaker_names(rid)
    assert set(names) == {"training_job", "model", "transform_job", "steer_job"}
    for name in names.values():
        assert len(name) <= 63
        assert re.fullmatch(r"[a-zA-Z0-9-]+", name)
        assert name.startswith(f"sf-{layout.run_hash(rid)}-")
    assert len(set(names.values())) == 4
    assert layout.execution_name(rid) == rid


def test_run_keys():
    rid = "a-0123456789ab"
    assert layout.run_json_key(rid) == "runs/a-0123456789ab/run.json"
    assert layout.input_shard_key(rid, 3) == "runs/a-0123456789ab/input/shard-00003.jsonl"
    assert layout.extract_output_key(rid, 3) == "runs/a-0123456789ab/extract/shard-00003.jsonl.out"
    assert layout.steer_input_key(rid) == "runs/a-0123456789ab/steer/input.jsonl"
    assert layout.steer_output_key(rid) == "runs/a-0123456789ab/steer/out/input.jsonl.out"
    assert layout.train_output_prefix(rid) == "runs/a-0123456789ab/train/"
    assert (
        layout.train_model_artifact_key(rid, "j")
        == "runs/a-0123456789ab/train/j/output/model.tar.gz"
    )
    assert layout.sae_ref_key(rid) == "runs/a-0123456789ab/sae-ref/saeflow_sae.json"
    assert layout.sae_candidate_prefix(rid) == "runs/a-0123456789ab/sae-candidate/"
    assert layout.aggregate_key(rid) == "runs/a-0123456789ab/aggregate.json"
    assert layout.feature_bundle_key(rid, 12) == "runs/a-0123456789ab/features/12.json"
    assert layout.label_key(rid, 12) == "runs/a-0123456789ab/labels/12.json"


def test_report_keys():
    rid = "a-0123456789ab"
    assert layout.report_html_key(rid) == "reports/a-0123456789ab/index.html"
    assert layout.report_json_key(rid) == "reports/a-0123456789ab/report.json"
    assert layout.summary_key(rid) == "reports/a-0123456789ab/summary.md"
    assert layout.error_key(rid) == "reports/a-0123456789ab/error.json"


def test_sidecar():
    assert layout.sidecar_key("prompts/a.jsonl") == "prompts/a.options.json"
    assert layout.sidecar_key("prompts/d/a.txt") == "prompts/d/a.options.json"
    assert layout.is_sidecar("prompts/a.options.json")
    assert not layout.is_sidecar("prompts/a.json")


def test_s3_uris():
    assert layout.s3_uri("b", "k/x") == "s3://b/k/x"
    assert layout.parse_s3_uri("s3://b/k/x/") == ("b", "k/x/")
    with pytest.raises(ValueError):
        layout.parse_s3_uri("https://b/k")
    with pytest.raises(ValueError):
        layout.parse_s3_uri("s3:///k")
