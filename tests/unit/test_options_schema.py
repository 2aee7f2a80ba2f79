"""The run options' JSON Schema: printed by ``saeflow options --schema``, kept in
docs/options.schema.json, described field by field, and in agreement with the validator."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from saeflow.cli.main import main, options_schema_text
from saeflow.core.errors import InvalidHook, InvalidRunOptions
from saeflow.core.options import RunOptions

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "options.schema.json"


def schema() -> dict[str, Any]:
    return json.loads(options_schema_text())


def test_the_schema_file_is_up_to_date():
    assert SCHEMA_FILE.read_text() == options_schema_text(), (
        "docs/options.schema.json is stale: saeflow options --schema > docs/options.schema.json"
    )


def test_the_cli_prints_the_schema():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["options", "--schema"]) == 0
    assert json.loads(out.getvalue()) == schema()


def test_the_cli_prints_the_defaults():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["options"]) == 0
    assert RunOptions.from_dict(json.loads(out.getvalue())) == RunOptions()


def _properties(node: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(node.get("properties", {}).items())


def test_every_option_has_a_description():
    document = schema()
    models = [("RunOptions", document), *document["$defs"].items()]
    missing = [
        f"{model}.{name}"
        for model, node in models
        for name, prop in _properties(node)
        if not prop.get("description")
    ]
    assert missing == []
    assert all(node.get("additionalProperties") is False for _, node in models)


GOOD = [
    {},
    {"model": "Qwen/Qwen2.5-0.5B", "hook": "blocks.3.hook_mlp_out", "steer": "auto"},
    {"train": {"architecture": "jumprelu", "l1_coefficient": 2, "training_tokens": 2e5}},
    {"steer": [{"feature": 7, "strengths": [40, -40], "prompts": ["Hi"]}], "contrast": "x"},
    {"label": {"backend": "none", "max_usd": 0, "model_id": None}, "ce_loss_on_prompts": True},
]
BAD = [
    {"modle": "x"},
    {"train": {"k": 0}},
    {"train": {"k": "3"}},
    {"train": {"lr": 2}},
    {"label": {"backend": "gpt"}},
    {"steer": "some"},
    {"steer": [{"feature": 1, "strengths": []}]},
    {"ce_loss_on_prompts": "maybe"},
    {"top_k_features": 0.5},
    {"report_max_prompts": None},
    {"gate": {"max_dead_fraction": 2}},
]


@pytest.mark.parametrize("options", GOOD)
def test_schema_and_validator_accept_the_same_good_options(options):
    jsonschema.validate(options, schema())
    RunOptions.from_dict(options)


@pytest.mark.parametrize("options", BAD)
def test_schema_and_validator_reject_the_same_bad_options(options):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(options, schema())
    with pytest.raises((InvalidRunOptions, InvalidHook)):
        RunOptions.from_dict(options)
