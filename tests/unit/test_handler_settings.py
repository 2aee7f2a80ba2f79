"""The handlers' own small logic: settings from the environment, deployment caps,
what `auto` means. (Invocations under moto are in tests/functional/test_handlers.py.)"""

from __future__ import annotations

import importlib

from saeflow.core.options import RunOptions


def app(name: str):
    return importlib.import_module(f"functions.{name}.app")


def test_validate_settings_follow_the_template_parameters():
    settings = app("validate").settings_from_env(
        {
            "MAX_PROMPTS": "200",
            "MAX_FILE_MB": "2",
            "MAX_PROMPT_TOKENS": "64",
            "MAX_TRANSFORM_INSTANCES": "7",
            "PROMPTS_PER_SHARD": "50",
            "LABEL_MODEL_IDS": "us.anthropic.claude-haiku-4-5-20251001-v1:0,",
            "TRANSFORM_INSTANCE_TYPE": "ml.g6e.xlarge",
            "REDUCE_BATCH_SIZE": "16",
            "MAP_CONCURRENCY": "40",
        }
    )
    assert settings.label_model_ids == ("us.anthropic.claude-haiku-4-5-20251001-v1:0",)
    assert (settings.transform_instance_type, settings.reduce_batch_size) == ("ml.g6e.xlarge", 16)
    assert settings.map_concurrency == 40
    assert settings.limits.max_prompts == 200
    assert settings.limits.max_file_bytes == 2 * 1024 * 1024
    assert settings.limits.max_prompt_tokens == 64
    assert (settings.run_limits.max_transform_instances, settings.shard_size) == (7, 50)


def test_validate_defaults_are_the_documented_ones():
    settings = app("validate").settings_from_env({})
    assert settings.limits.max_prompts == 10_000
    assert settings.limits.max_file_bytes == 50 * 1024 * 1024
    assert settings.limits.max_prompt_tokens == 512
    assert settings.label_model_ids == ()  # no allow-list: tools that call the step directly


def test_resolve_sae_passes_the_token_limit_to_the_worker():
    assert (
        app("resolve_sae").settings_from_env({"MAX_PROMPT_TOKENS": "128"}).max_prompt_tokens == 128
    )


def test_label_caps_lower_a_run_budget_but_never_raise_it():
    aggregate = app("aggregate")
    caps = aggregate.caps_from_env({"LABEL_MAX_FEATURES": "10", "LABEL_MAX_USD": "0.5"})
    options = RunOptions.from_dict({"label": {"max_features": 40, "max_usd": 0.2}}).to_dict()
    event = {"run": {"run_id": "r", "options": options}, "sae": {}}
    capped = aggregate.with_caps(event, caps)["run"]["options"]["label"]
    assert (capped["max_features"], capped["max_usd"]) == (10, 0.2)
    assert event["run"]["options"]["label"]["max_features"] == 40  # the input is not changed
    RunOptions.from_dict(aggregate.with_caps(event, caps)["run"]["options"])  # still valid


def test_without_caps_the_run_budget_stands():
    aggregate = app("aggregate")
    caps = aggregate.caps_from_env({})
    options = RunOptions.from_dict({}).to_dict()
    event = {"run": {"options": options}}
    assert aggregate.with_caps(event, caps)["run"]["options"] == options


def test_auto_labeler_is_resolved_only_where_the_embedded_mode_says_so():
    label = app("label_feature")
    item = {"feature_id": 1, "labeler": "auto"}
    assert label.with_auto_resolved(item, {}) == item  # on AWS: auto stays auto (Bedrock)
    assert (
        label.with_auto_resolved(item, {"SAEFLOW_AUTO_LABELER": "offline"})["labeler"] == "offline"
    )
    chosen = {"feature_id": 1, "labeler": "bedrock"}
    assert label.with_auto_resolved(chosen, {"SAEFLOW_AUTO_LABELER": "offline"}) == chosen


def test_on_aws_auto_means_bedrock_with_the_template_model():
    from saeflow.adapters.labelers import resolve_backend

    config = app("label_feature").labeler_config_from_env(
        {"BEDROCK_MODEL_ID": "anthropic.x"}, object()
    )
    assert resolve_backend("auto", config) == "bedrock"
    assert config.bedrock_model_id == "anthropic.x" and config.anthropic_api_key is None


def test_record_failure_finds_the_bucket_before_validate_ran(monkeypatch):
    record = app("record_failure")
    assert record.run_bucket({"bucket": "b1", "run": {"bucket": "b2"}}) == "b1"
    assert record.run_bucket({"run": {"bucket": "b2"}}) == "b2"
    monkeypatch.setenv("BUCKET_NAME", "b3")
    assert record.run_bucket({}) == "b3"


def test_write_report_provenance_names_image_and_model():
    settings = app("write_report").settings_from_env(
        {"WORKER_IMAGE_URI": "123.dkr.ecr/x:1", "BEDROCK_MODEL_ID": "m"}
    )
    assert settings.versions == {"worker_image": "123.dkr.ecr/x:1", "bedrock_model_id": "m"}


def test_validate_counts_tokens_with_the_default_tokenizer_offline_and_online():
    tokenizers = app("validate").tokenizers_from_env({"HF_HUB_OFFLINE": "1"})
    counter = tokenizers("default")
    assert counter is not None and counter.count(["The cat sat."]) == [4]
    # Online too: the default model's tokenizer ships with saeflow (no hub request).
    assert app("validate").tokenizers_from_env({})("smollm2-135m-instruct") is not None
