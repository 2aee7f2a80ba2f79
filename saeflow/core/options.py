"""Run options: what a user may set for one run, validated, with documented defaults.

One pydantic schema (``saeflow options --schema`` prints it as JSON Schema; field docstrings
are its descriptions). Options come from four layers; later layers win (see
:func:`merge_option_layers`): defaults < sidecar ``prompts/<name>.options.json`` < the
file's options line (``{"saeflow": {...}}``) < execution ``overrides`` (``--set KEY=VALUE``).

Contract:

- ``RunOptions.from_dict(d)`` validates types and ranges and REJECTS unknown keys with
  :class:`InvalidRunOptions` naming the dotted key (``train.kk``), in one line; a malformed
  hook raises :class:`InvalidHook`. Missing keys take defaults. No coercion: ``"3"`` is not
  an integer, ``1`` is not ``true``; an integral number (``2e5``) is an integer. The model
  alias ``default`` is read as ``smollm2-135m-instruct``.
- ``RunOptions.to_dict()`` gives plain JSON that ``from_dict`` reads back unchanged.
- ``parse_set_overrides(["train.k=16", "label.backend=offline"])`` -> nested dict;
  values are parsed as JSON when they parse (``16``, ``0.5``, ``true``, ``null``, ``[1,2]``),
  else kept as strings (``offline``).
- ``expand_dotted({"train.k": 16})`` -> ``{"train": {"k": 16}}`` (execution-input overrides).
- ``training_hyperparameters(opts)`` -> the worker's ``train`` hyperparameters, all strings
  (:class:`saeflow.core.contract.TrainSettings`, the type the worker reads them back into).

The hook string is checked here with :mod:`saeflow.core.hooks`; whether the layer exists is
checked at validation for models saeflow knows (:mod:`saeflow.core.run_policy`), else by
the worker once the model is loaded.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from saeflow.core.contract import (
    ARCHITECTURES,
    DEFAULT_HOOK,
    DEFAULT_MODEL,
    MODEL_ALIASES,
    TrainOptions,
    TrainSettings,
    canonical_model,
)
from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint
from saeflow.core.promptset import MAX_JSON_DEPTH, json_depth
from saeflow.core.schema import TAG, Bool, Float, Int, Schema, Text

__all__ = [
    "ARCHITECTURES",
    "CE_ON_PROMPTS_AUTO_MAX",
    "DEFAULT_HOOK",
    "DEFAULT_MODEL",
    "DEFAULT_STEER_PROMPT",
    "LABEL_BACKENDS",
    "MODEL_ALIASES",
    "GateOptions",
    "LabelOptions",
    "RunOptions",
    "SteerRequest",
    "TrainOptions",
    "deep_merge",
    "expand_dotted",
    "merge_option_layers",
    "parse_override_value",
    "parse_set_overrides",
    "resolve_options",
    "training_hyperparameters",
]

LABEL_BACKENDS = ("auto", "bedrock", "anthropic", "offline", "none")
# The seed steering notebook's prompt; used when a steer request names no prompts.
DEFAULT_STEER_PROMPT = "Should I travel by plane or by"
# ce_loss_on_prompts=auto measures CE loss on the prompts of sets up to this size: three
# forward passes from the hook on, cheap next to the extraction for small sets.
CE_ON_PROMPTS_AUTO_MAX = 2000


class LabelOptions(Schema):
    """Who explains the features, and the budget."""

    backend: Literal["auto", "bedrock", "anthropic", "offline", "none"] = "auto"
    """auto (anthropic with an API key, else bedrock when reachable, else offline) |
    bedrock | anthropic | offline | none."""
    max_features: Int = Field(24, ge=0, le=10_000)
    """At most this many features are labelled by Claude (the deployment may cap it lower);
    the offline labeller labels every reported feature (it costs nothing)."""
    max_usd: Float = Field(1.0, ge=0)
    """Stop asking the LLM once the run's actual spend (USD, from the tokens each request
    used) would pass this; the features left are reported unlabelled, with the reason."""
    model_id: Annotated[Text, Field(min_length=1)] | None = None
    """Claude model id (Bedrock model or inference profile id, or Anthropic API model);
    null = the deployment's default. On a deployment, one of its allow-list (template
    parameter LabelModelIds) or BedrockModelId (else LabelModelNotAllowed)."""
    refresh: Bool = False
    """Relabel every feature even when the label registry holds a label that beat its
    baseline (the new labels replace the stored ones)."""

    @field_validator("model_id")
    @classmethod
    def _a_claude_model(cls, model_id: str | None) -> str | None:
        if model_id is not None and "claude" not in model_id.lower():
            # The labelling prompts, the price table and the IAM grant are Claude's.
            raise ValueError(
                f"must name a Claude model (a Bedrock model or inference profile id, or an "
                f"Anthropic API model), got {model_id!r:.80}"
            )
        return model_id


class SteerRequest(Schema):
    """Generate with and without ``strength * W_dec[feature]`` added at the hook."""

    feature: Int = Field(ge=0)
    """The SAE feature to add."""
    strengths: list[Float] = Field(min_length=1, max_length=16)
    """One steered generation per strength (per prompt)."""
    prompts: list[Annotated[Text, Field(min_length=1)]] = Field(
        default_factory=lambda: [DEFAULT_STEER_PROMPT], min_length=1, max_length=16
    )
    """Prompts to continue."""
    max_new_tokens: Int = Field(50, ge=1, le=512)
    """Tokens generated per continuation."""
    temperature: Float = Field(0.5, ge=0, le=5)
    """Sampling temperature (0 = greedy)."""
    freq_penalty: Float = Field(2.0, ge=0, le=10)
    """Frequency penalty against repeating tokens."""
    seed: Int = Field(0, ge=0)
    """Sampling seed."""

    @field_validator("prompts")
    @classmethod
    def _no_blank_prompts(cls, prompts: list[str]) -> list[str]:
        if not all(p.strip() for p in prompts):
            raise ValueError("must not be empty strings")
        return prompts


class GateOptions(Schema):
    """Quality gate for a freshly trained SAE (defaults sized for short CPU runs)."""

    min_explained_variance: Float = Field(0.5, le=1)
    """Explained variance on held-out tokens, at least."""
    max_dead_fraction: Float = Field(0.5, ge=0, le=1)
    """Fraction of features that never fire on held-out tokens, at most."""
    min_ce_loss_recovered: Float = Field(0.8, le=1)
    """CE loss recovered when the SAE replaces the activations, at least."""
    min_l0: Float = Field(1.0, ge=0)
    """Mean active features per token, at least."""
    max_l0: Float | None = None
    """Mean active features per token, at most; null = d_sae / 2."""

    @model_validator(mode="after")
    def _l0_range(self) -> GateOptions:
        if self.max_l0 is not None and self.max_l0 < self.min_l0:
            raise ValueError("max_l0: must be >= min_l0")
        return self


def _union_kind(keyword: str, *kinds: tuple[type, str]) -> Any:
    """A discriminator: the value's JSON kind picks the alternative; ``keyword`` or nothing."""

    def kind_of(value: Any) -> str | None:
        if isinstance(value, str):
            return TAG + "keyword" if value == keyword else None
        for kind, tag in kinds:
            if isinstance(value, kind):
                return tag
        return None

    return kind_of


SteerField = Annotated[
    Annotated[list[SteerRequest], Tag(TAG + "list")]
    | Annotated[Literal["auto"], Tag(TAG + "keyword")],
    Discriminator(
        _union_kind("auto", (list, TAG + "list")),
        custom_error_type="steer_kind",
        custom_error_message='must be a list of requests or "auto"',
    ),
]
CeField = Annotated[
    Annotated[Bool, Tag(TAG + "bool")] | Annotated[Literal["auto"], Tag(TAG + "keyword")],
    Discriminator(
        _union_kind("auto", (bool, TAG + "bool")),
        custom_error_type="ce_kind",
        custom_error_message='must be true, false or "auto"',
    ),
]


class RunOptions(Schema):
    """Every option of one run (the options line ``{"saeflow": {...}}`` or a sidecar)."""

    model: Text = Field(DEFAULT_MODEL, min_length=1)
    """smollm2-135m-instruct (alias default: the embedded model) or a Hugging Face model id."""
    hook: Text = DEFAULT_HOOK
    """TransformerLens hook, blocks.<layer>.hook_<site>."""
    sae: Text = "train"
    """train | saelens:<release>/<sae_id> (release: a SAELens release or a Hugging Face
    repo id) | s3://<this bucket>/saes/... (an SAELens-format directory)."""
    train: TrainOptions = Field(default_factory=TrainOptions)
    """How to train the SAE when sae is train."""
    top_k_features: Int = Field(24, ge=1, le=1000)
    """Features ranked, shown and (up to label.max_features) labelled."""
    features_per_token: Int = Field(8, ge=1, le=64)
    """Top features kept per token by the extraction."""
    label: LabelOptions = Field(default_factory=LabelOptions)
    """Who labels the features, and the budget."""
    steer: SteerField = Field(default_factory=list)
    """Steering requests, or "auto": steer the most specific features of the run (chosen
    after aggregation) at two strengths on two of its prompts."""
    contrast: Annotated[Text, Field(min_length=1)] | None = None
    """A second prompt set to compare against: a key under prompts/ (or
    s3://<this bucket>/prompts/...)."""
    gate: GateOptions = Field(default_factory=GateOptions)
    """Quality gate for a freshly trained SAE."""
    report_max_prompts: Int = Field(200, ge=1, le=10_000)
    """Prompts shown token by token in the report."""
    ce_loss_on_prompts: CeField = "auto"
    """Measure the SAE's CE loss recovered on the prompts themselves (three forward passes
    from the hook on): true, false, or "auto" (when the set has at most 2000 prompts).
    Explained variance on the prompts is always measured."""

    @field_validator("model", "contrast")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("hook")
    @classmethod
    def _hook_parses(cls, hook: str) -> str:
        HookPoint.parse(hook)  # raises InvalidHook, the more specific error name
        return hook

    @field_validator("sae")
    @classmethod
    def _sae_form(cls, sae: str) -> str:
        if not _valid_sae(sae):
            raise ValueError(
                "must be train, saelens:<release>/<sae_id> or s3://<bucket>/<prefix>, "
                f"got {sae!r:.60}"
            )
        return sae

    @field_validator("steer")
    @classmethod
    def _few_requests(cls, steer: list[SteerRequest] | str) -> list[SteerRequest] | str:
        if isinstance(steer, list) and len(steer) > 16:
            raise ValueError("at most 16 requests")
        return steer

    @property
    def hook_point(self) -> HookPoint:
        return HookPoint.parse(self.hook)

    @property
    def steer_auto(self) -> bool:
        return self.steer == "auto"

    @property
    def steer_requests(self) -> list[SteerRequest]:
        """The explicit steering requests (none when steering is "auto")."""
        return [] if isinstance(self.steer, str) else list(self.steer)

    def wants_ce_on_prompts(self, n_prompts: int) -> bool:
        if isinstance(self.ce_loss_on_prompts, bool):
            return self.ce_loss_on_prompts
        return n_prompts <= CE_ON_PROMPTS_AUTO_MAX

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunOptions:
        """Validate ``data`` (unknown keys rejected) and fill defaults."""
        if data is not None and not isinstance(data, dict):
            raise InvalidRunOptions(f"run options must be a JSON object, got {_describe(data)}")
        data = dict(data or {})
        if isinstance(data.get("model"), str):
            data["model"] = canonical_model(data["model"]) or data["model"]
        return cls.parse(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (round-trips through :meth:`from_dict`)."""
        return self.model_dump()

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of the options (what ``saeflow options --schema`` prints)."""
        schema = cls.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "saeflow run options"
        return schema


def _valid_sae(sae: str) -> bool:
    if sae == "train":
        return True
    if sae.startswith("saelens:"):
        release, _, sae_id = sae[len("saelens:") :].partition("/")
        return bool(release.strip()) and bool(sae_id.strip())
    if sae.startswith("s3://"):
        bucket, _, prefix = sae[len("s3://") :].partition("/")
        return bool(bucket) and bool(prefix.strip("/"))
    return False


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- layers and overrides ------------------------------------------------------------


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: objects merge key by key, anything else (lists too) replaces."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def expand_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.k": 16, "label": {...}}`` -> nested dict (dotted keys become objects)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        if not all(parts):
            raise InvalidRunOptions(f"invalid option name {key!r}")
        update: Any = value.copy() if isinstance(value, dict) else value
        if isinstance(update, dict):
            update = expand_dotted(update)
        for part in reversed(parts):
            update = {part: update}
        nested = deep_merge(nested, update)
    return nested


def parse_override_value(text: str) -> Any:
    """JSON when it parses (16, 0.5, true, null, [1, 2], {...}), else the string itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    except RecursionError as exc:
        raise InvalidRunOptions(f"option value nested too deeply: {text:.40}...") from exc
    _check_depth(value, "option value")
    return value


def _check_depth(value: Any, what: str) -> None:
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidRunOptions(f"{what} nested deeper than {MAX_JSON_DEPTH} levels")


def parse_set_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.k=16", "label.backend=offline"]`` -> ``{"train": {"k": 16}, "label": {...}}``."""
    flat: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRunOptions(f"--set expects KEY=VALUE, got {item!r}")
        flat[key.strip()] = parse_override_value(text)
    return expand_dotted(flat)


def merge_option_layers(
    sidecar: dict[str, Any] | None = None,
    options_line: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge raw option dicts: overrides > file options line > sidecar (> defaults later).

    Each layer may use dotted keys (``{"train.k": 16}``). Returns the merged nested dict;
    pass it to :meth:`RunOptions.from_dict`.
    """
    merged: dict[str, Any] = {}
    for layer in (sidecar, options_line, overrides):
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise InvalidRunOptions(f"run options must be a JSON object, got {_describe(layer)}")
        _check_depth(layer, "run options")
        merged = deep_merge(merged, expand_dotted(layer))
    return merged


def resolve_options(
    sidecar: dict[str, Any] | None = None,
    options_line: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunOptions:
    """:func:`merge_option_layers` then :meth:`RunOptions.from_dict`."""
    return RunOptions.from_dict(merge_option_layers(sidecar, options_line, overrides))


def training_hyperparameters(options: RunOptions, *, device: str = "auto") -> dict[str, str]:
    """The worker ``train`` hyperparameters (SageMaker passes strings only).

    Keys: model, hook, every TrainOptions field, device: :class:`TrainSettings`, the type
    the worker reads them back into.
    """
    settings = TrainSettings.for_run(options.model, options.hook, options.train, device=device)
    return settings.to_hyperparameters()
