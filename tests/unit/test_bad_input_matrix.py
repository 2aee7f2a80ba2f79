"""The bad-input matrix, table-driven: every option of the schema gets wrong values of
every kind it can be wrong in (type, range, unknown keyword, unknown key), and each gives
a named error in ONE line naming the option. The cases are generated from the JSON Schema,
so a new option is covered the day it is added. Prompt-file cases (nesting and the like)
and what a run may read follow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from saeflow.core import promptset
from saeflow.core.errors import (
    ForbiddenInput,
    InvalidHook,
    InvalidPromptSet,
    InvalidRunOptions,
    SaeflowError,
    SpendLimitExceeded,
    is_invalid_input,
)
from saeflow.core.options import RunOptions, parse_override_value, resolve_options
from saeflow.core.run_policy import RunLimits, check_run

SCHEMA = RunOptions.json_schema()
NOT_A_VALUE = object()


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _bad_values(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(what is wrong, value) for one schema node."""
    node = _resolve(node)
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives:
        kinds = {_resolve(a).get("type") for a in alternatives}
        if "object" not in kinds:
            yield "an object where none is allowed", {"x": 1}
        if "string" not in kinds:
            yield "a string where none is allowed", "nonsense"
        for alternative in alternatives:  # range errors of the non-null alternative
            if _resolve(alternative).get("type") in ("integer", "number"):
                yield from _range_values(_resolve(alternative))
        return
    kind = node.get("type")
    if kind == "object":
        yield "not an object", "nonsense"
        yield "a list for an object", [1]
    elif kind == "integer":
        yield "a numeric string", "3"
        yield "a fraction", 0.5
        yield "a boolean", True
        yield "null", None
        yield from _range_values(node)
    elif kind == "number":
        yield "a numeric string", "0.5"
        yield "a boolean", False
        yield "null", None
        yield from _range_values(node)
    elif kind == "boolean":
        yield "a string", "yes"
        yield "a number", 1
    elif kind == "string":
        yield "a number", 5
        yield "a list", ["x"]
        if "enum" in node:
            yield "an unknown keyword", "no-such-choice"
        if node.get("minLength"):
            yield "empty", ""
    elif kind == "array":
        yield "not a list", "nonsense"
        if node.get("minItems"):
            yield "too few items", []


def _range_values(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    step = 1 if node.get("type") == "integer" else 0.5
    if "minimum" in node:
        yield "below the minimum", node["minimum"] - step
    if "exclusiveMinimum" in node:
        yield "at the exclusive minimum", node["exclusiveMinimum"]
    if "maximum" in node:
        yield "above the maximum", node["maximum"] + step


def _leaves(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    node = _resolve(node)
    for name, prop in node.get("properties", {}).items():
        dotted = f"{path}.{name}" if path else name
        yield dotted, prop
        inner = _resolve(prop)
        if inner.get("type") == "object":
            yield from _leaves(inner, dotted)


def _nested(path: str, value: Any) -> dict[str, Any]:
    for part in reversed(path.split(".")):
        value = {part: value}
    return value


def _cases() -> Iterator[Any]:
    for path, node in _leaves(SCHEMA, ""):
        for what, value in _bad_values(node):
            yield pytest.param(path, value, id=f"{path}: {what}")
        resolved = _resolve(node)
        if resolved.get("type") == "object":
            yield pytest.param(f"{path}.no_such_option", 1, id=f"{path}: an unknown key")
    # Strings with a form of their own (no enum in the schema says it).
    for path, value in (
        ("sae", "hub:foo"),
        ("sae", "saelens:release-only"),
        ("sae", "s3://bucket-only"),
        ("hook", "layer 20"),
        ("hook", "blocks.3.hook_resid"),
        ("model", "   "),
        ("contrast", " "),
        ("label.model_id", "gpt-4o"),
        ("steer", "some"),
        ("ce_loss_on_prompts", "maybe"),
        ("train.corpus", "hf:"),
        ("train.corpus", "s3://"),
    ):
        yield pytest.param(path, value, id=f"{path}: {value!r}")
    # steer requests are items of a list: their fields too.
    request = SCHEMA["$defs"]["SteerRequest"]
    for name, prop in request["properties"].items():
        for what, value in _bad_values(prop):
            yield pytest.param(f"steer[0].{name}", value, id=f"steer[0].{name}: {what}")


def _options_for(path: str, value: Any) -> dict[str, Any]:
    if path.startswith("steer[0]."):
        item = {"feature": 1, "strengths": [1.0], path.split(".", 1)[1]: value}
        return {"steer": [item]}
    return _nested(path, value)


CASES = list(_cases())


def test_the_matrix_covers_every_option():
    covered = {c.values[0].split("[")[0].replace(".no_such_option", "") for c in CASES}
    documented = {path for path, _ in _leaves(SCHEMA, "")}
    assert documented <= covered
    assert len(CASES) > 150


@pytest.mark.parametrize(("path", "value"), CASES)
def test_every_bad_option_value_is_a_named_one_line_error(path, value):
    with pytest.raises(SaeflowError) as info:
        RunOptions.from_dict(_options_for(path, value))
    error = info.value
    assert isinstance(error, InvalidRunOptions | InvalidHook), type(error)
    assert is_invalid_input(error.name)
    assert "\n" not in error.message
    if isinstance(error, InvalidRunOptions):
        assert path in error.message, error.message


# ------------------------------------------------------------------ nesting and --set


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("json", deep(100_000)),
        ("json", '{"prompts": ["a"], "saeflow": ' + '{"a":' * 50 + "1" + "}" * 50 + "}"),
        ("jsonl", '{"prompt": "a", "tags": ' + deep(100_000) + "}"),
        ("jsonl", '{"saeflow": ' + '{"a":' * 40 + "1" + "}" * 40 + '}\n{"prompt": "a"}'),
    ],
    ids=["json 100k deep", "json options 50 deep", "jsonl line 100k deep", "options line 40 deep"],
)
def test_deep_nesting_is_an_invalid_prompt_set(fmt, text):
    with pytest.raises(InvalidPromptSet, match="nested"):
        promptset.parse_prompt_bytes(text.encode(), fmt)


def test_a_deep_sidecar_is_an_invalid_prompt_set():
    with pytest.raises(InvalidPromptSet, match="nested"):
        promptset.parse_options_document(deep(100_000).encode(), "prompts/x.options.json")


@pytest.mark.parametrize("text", [deep(100_000), '{"a":' * 40 + "1" + "}" * 40])
def test_a_deep_set_value_is_invalid_run_options(text):
    with pytest.raises(InvalidRunOptions, match="nested"):
        parse_override_value(text)


def test_deep_overrides_in_the_execution_input_are_invalid_run_options():
    overrides = {"label": json.loads('{"a":' * 40 + "1" + "}" * 40)}
    with pytest.raises(InvalidRunOptions, match="nested"):
        resolve_options(None, None, overrides)


# ------------------------------------------------------------------ what a run may read


BUCKET = "saeflow-test"


@pytest.mark.parametrize(
    ("options", "error", "needle"),
    [
        (
            {"contrast": "runs/other-0123456789ab/input/shard-00000.jsonl"},
            ForbiddenInput,
            "contrast",
        ),
        ({"contrast": "s3://other-bucket/prompts/c.jsonl"}, ForbiddenInput, "contrast"),
        ({"contrast": "prompts/../runs/x.jsonl"}, ForbiddenInput, "contrast"),
        ({"contrast": "reports/r/report.json"}, ForbiddenInput, "contrast"),
        ({"train": {"corpus": f"s3://{BUCKET}/runs/x/input/"}}, ForbiddenInput, "train.corpus"),
        ({"train": {"corpus": "s3://other-bucket/corpora/web/"}}, ForbiddenInput, "train.corpus"),
        ({"train": {"corpus": "/proc/self"}}, ForbiddenInput, "train.corpus"),
        ({"train": {"corpus": "channel:secrets"}}, ForbiddenInput, "train.corpus"),
        ({"sae": f"s3://{BUCKET}/runs/x/sae-candidate/"}, ForbiddenInput, "sae"),
        ({"sae": "s3://other-bucket/saes/x/"}, ForbiddenInput, "sae"),
        ({"train": {"training_tokens": 10**9}}, SpendLimitExceeded, "MaxTrainingTokens"),
        ({"train": {"eval_tokens": 10**9}}, SpendLimitExceeded, "train.eval_tokens"),
        ({"hook": "blocks.30.hook_resid_post"}, InvalidHook, "30 layers"),
        ({"hook": "blocks.99.hook_mlp_out"}, InvalidHook, "30 layers"),
        ({"train": {"k": 4096, "expansion_factor": 1}}, InvalidRunOptions, "exceeds the SAE width"),
        ({"steer": [{"feature": 4608, "strengths": [1]}]}, InvalidRunOptions, "does not exist"),
        ({"label": {"model_id": "gpt-4o"}}, InvalidRunOptions, "Claude"),
    ],
)
def test_what_a_run_may_read_and_spend(options, error, needle):
    with pytest.raises(error, match=needle) as info:
        check_run(RunOptions.from_dict(options), bucket=BUCKET, limits=RunLimits())
    assert is_invalid_input(info.value.name)


@pytest.mark.parametrize(
    "options",
    [
        {"contrast": "prompts/c.jsonl"},
        {"contrast": f"s3://{BUCKET}/prompts/sub/c.txt"},
        {"train": {"corpus": f"s3://{BUCKET}/corpora/web/"}},
        {"train": {"corpus": "hf:roneneldan/TinyStories"}},
        {"sae": f"s3://{BUCKET}/saes/imported/tiny/"},
        {"sae": "saelens:release/id", "hook": "blocks.3.hook_resid_post"},
        {"model": "Qwen/Qwen2.5-0.5B", "hook": "blocks.40.hook_resid_post"},
        {"train": {"training_tokens": 10**8}},
        {"steer": [{"feature": 4607, "strengths": [1]}]},
    ],
)
def test_allowed_runs_pass(options):
    check_run(RunOptions.from_dict(options), bucket=BUCKET, limits=RunLimits())
