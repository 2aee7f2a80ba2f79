"""Run options: what a user may set for one run, validated, with documented defaults.

Options come from four layers; later layers win (see :func:`merge_option_layers`):
defaults < sidecar ``prompts/<name>.options.json`` < the file's options line
(``{"saeflow": {...}}``) < execution ``overrides`` (``--set KEY=VALUE``).

Contract:

- ``RunOptions.from_dict(d)`` validates types and ranges and REJECTS unknown keys with
  :class:`InvalidRunOptions` naming the dotted key (``train.kk``); a malformed hook raises
  :class:`InvalidHook`. Missing keys take defaults.
  The model alias ``default`` is read as ``smollm2-135m-instruct``.
- ``RunOptions.to_dict()`` gives plain JSON that ``from_dict`` reads back unchanged.
- ``parse_set_overrides(["train.k=16", "label.backend=offline"])`` -> nested dict;
  values are parsed as JSON when they parse (``16``, ``0.5``, ``true``, ``null``, ``[1,2]``),
  else kept as strings (``offline``).
- ``expand_dotted({"train.k": 16})`` -> ``{"train": {"k": 16}}`` (execution-input overrides).
- ``training_hyperparameters(opts)`` -> the worker's ``train`` hyperparameters, all strings.

The hook string is checked here with :mod:`saeflow.core.hooks`; whether the layer exists
is checked by the worker once the model is known.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint

DEFAULT_MODEL = "smollm2-135m-instruct"
MODEL_ALIASES = {"default": DEFAULT_MODEL}
DEFAULT_HOOK = "blocks.15.hook_resid_post"
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
LABEL_BACKENDS = ("auto", "bedrock", "anthropic", "offline", "none")
# The seed steering notebook's prompt; used when a steer request names no prompts.
DEFAULT_STEER_PROMPT = "Should I travel by plane or by"
# ce_loss_on_prompts=auto measures CE loss on the prompts of sets up to this size: three
# forward passes from the hook on, cheap next to the extraction for small sets.
CE_ON_PROMPTS_AUTO_MAX = 2000


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise InvalidRunOptions(f"{name}: {message}")


@dataclass(frozen=True)
class TrainOptions:
    """How to train an SAE when ``sae == "train"`` (each maps to a worker hyperparameter)."""

    architecture: str = "topk"
    """SAE architecture: topk | batchtopk | jumprelu | standard (L1)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor * d_model (the SAE width)."""
    k: int = 32
    """Active features per token for topk / batchtopk."""
    l1_coefficient: float = 5.0
    """Sparsity penalty for standard / jumprelu."""
    lr: float = 2e-3
    """Adam learning rate (2e-3 measured best for short runs: 1e-3 left 11% of features
    dead and CE loss recovered at 96.5% on the demo's budget; 3e-3 overshoots)."""
    training_tokens: int = 200_000
    """Token budget for training."""
    context_size: int = 128
    """Tokens per training sequence."""
    batch_size_tokens: int = 512
    """Tokens per optimiser step."""
    eval_tokens: int = 8192
    """Held-out tokens for metrics.json (8k: CE loss recovered moves by tenths of a point
    between 4k-token samples)."""
    corpus: str = "default"
    """default | channel:<name> | hf:<dataset> | a local path."""
    seed: int = 42
    """Random seed."""

    def __post_init__(self) -> None:
        _check(
            self.architecture in ARCHITECTURES,
            "architecture",
            f"must be one of {', '.join(ARCHITECTURES)}",
        )
        _check(1 <= self.expansion_factor <= 256, "expansion_factor", "must be in 1..256")
        _check(1 <= self.k <= 4096, "k", "must be in 1..4096")
        _check(self.l1_coefficient >= 0, "l1_coefficient", "must be >= 0")
        _check(0 < self.lr < 1, "lr", "must be in (0, 1)")
        _check(self.training_tokens >= 1_000, "training_tokens", "must be >= 1000")
        _check(2 <= self.context_size <= 32_768, "context_size", "must be in 2..32768")
        _check(self.batch_size_tokens >= 1, "batch_size_tokens", "must be >= 1")
        _check(self.eval_tokens >= 1, "eval_tokens", "must be >= 1")
        _check(bool(self.corpus.strip()), "corpus", "must not be empty")
        _check(self.seed >= 0, "seed", "must be >= 0")


@dataclass(frozen=True)
class LabelOptions:
    """Who explains the features, and the budget."""

    backend: str = "auto"
    """auto (bedrock/anthropic when credentials exist, else offline) | bedrock | anthropic | offline | none."""
    max_features: int = 24
    """At most this many features are labelled."""
    max_usd: float = 1.0
    """Stop asking the LLM once the run's actual spend (USD, from the tokens each request
    used) would pass this; the features left are reported unlabelled, with the reason."""
    model_id: str | None = None
    """LLM model id; None = the deployment's default. On a deployment, one of its
    allow-list (template parameter LabelModelIds) or BedrockModelId."""
    refresh: bool = False
    """Relabel every feature even when the label registry holds a label that beat its
    baseline (the new labels replace the stored ones)."""

    def __post_init__(self) -> None:
        _check(
            self.backend in LABEL_BACKENDS, "backend", f"must be one of {', '.join(LABEL_BACKENDS)}"
        )
        _check(0 <= self.max_features <= 10_000, "max_features", "must be in 0..10000")
        _check(self.max_usd >= 0, "max_usd", "must be >= 0")
        _check(
            self.model_id is None or bool(self.model_id.strip()), "model_id", "must not be empty"
        )


@dataclass(frozen=True)
class SteerRequest:
    """Generate with and without ``strength * W_dec[feature]`` added at the hook."""

    feature: int
    """The SAE feature to add."""
    strengths: list[float]
    """One steered generation per strength (per prompt)."""
    prompts: list[str] = field(default_factory=lambda: [DEFAULT_STEER_PROMPT])
    """Prompts to continue."""
    max_new_tokens: int = 50
    temperature: float = 0.5
    freq_penalty: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.feature >= 0, "feature", "must be >= 0")
        _check(1 <= len(self.strengths) <= 16, "strengths", "must hold 1..16 numbers")
        _check(all(math.isfinite(s) for s in self.strengths), "strengths", "must be finite")
        _check(1 <= len(self.prompts) <= 16, "prompts", "must hold 1..16 prompts")
        _check(all(p.strip() for p in self.prompts), "prompts", "must not be empty strings")
        _check(1 <= self.max_new_tokens <= 512, "max_new_tokens", "must be in 1..512")
        _check(0 <= self.temperature <= 5, "temperature", "must be in 0..5")
        _check(0 <= self.freq_penalty <= 10, "freq_penalty", "must be in 0..10")
        _check(self.seed >= 0, "seed", "must be >= 0")


@dataclass(frozen=True)
class GateOptions:
    """Quality gate for a freshly trained SAE (defaults sized for short CPU runs)."""

    min_explained_variance: float = 0.5
    max_dead_fraction: float = 0.5
    min_ce_loss_recovered: float = 0.8
    min_l0: float = 1.0
    max_l0: float | None = None
    """None = d_sae / 2."""

    def __post_init__(self) -> None:
        _check(self.min_explained_variance <= 1, "min_explained_variance", "must be <= 1")
        _check(0 <= self.max_dead_fraction <= 1, "max_dead_fraction", "must be in 0..1")
        _check(self.min_ce_loss_recovered <= 1, "min_ce_loss_recovered", "must be <= 1")
        _check(self.min_l0 >= 0, "min_l0", "must be >= 0")
        _check(self.max_l0 is None or self.max_l0 >= self.min_l0, "max_l0", "must be >= min_l0")


@dataclass(frozen=True)
class RunOptions:
    """Every option of one run."""

    model: str = DEFAULT_MODEL
    """smollm2-135m-instruct (alias default: the embedded model) or a HF model id."""
    hook: str = DEFAULT_HOOK
    """TransformerLens hook, blocks.<layer>.hook_<site>."""
    sae: str = "train"
    """train | saelens:<release>/<sae_id> | s3://bucket/prefix/ (an SAELens-format directory)."""
    train: TrainOptions = field(default_factory=TrainOptions)
    top_k_features: int = 24
    """Features ranked, shown and (up to label.max_features) labelled."""
    features_per_token: int = 8
    """Top features kept per token by the extraction."""
    label: LabelOptions = field(default_factory=LabelOptions)
    steer: list[SteerRequest] | str = field(default_factory=list)
    """Steering requests, or "auto": steer the most specific features of the run (chosen
    after aggregation) at two strengths on two of its prompts."""
    contrast: str | None = None
    """A second prompt set (a key in the bucket, or s3://...) to compare against."""
    gate: GateOptions = field(default_factory=GateOptions)
    report_max_prompts: int = 200
    """Prompts shown token by token in the report."""
    ce_loss_on_prompts: bool | str = "auto"
    """Measure the SAE's CE loss recovered on the prompts themselves (three forward passes
    from the hook on): true, false, or "auto" (when the set has at most
    CE_ON_PROMPTS_AUTO_MAX prompts). Explained variance on the prompts is always measured."""

    def __post_init__(self) -> None:
        _check(bool(self.model.strip()), "model", "must not be empty")
        HookPoint.parse(self.hook)  # raises InvalidHook, the more specific error name
        _check(
            _valid_sae(self.sae),
            "sae",
            "must be train, saelens:<release>/<sae_id> or s3://bucket/prefix",
        )
        _check(1 <= self.top_k_features <= 1000, "top_k_features", "must be in 1..1000")
        _check(1 <= self.features_per_token <= 64, "features_per_token", "must be in 1..64")
        if isinstance(self.steer, str):
            _check(self.steer == "auto", "steer", 'must be a list of requests or "auto"')
        else:
            _check(len(self.steer) <= 16, "steer", "at most 16 requests")
        if isinstance(self.ce_loss_on_prompts, str):
            _check(
                self.ce_loss_on_prompts == "auto",
                "ce_loss_on_prompts",
                'must be true, false or "auto"',
            )
        _check(
            self.contrast is None or bool(self.contrast.strip()), "contrast", "must not be empty"
        )
        _check(1 <= self.report_max_prompts <= 10_000, "report_max_prompts", "must be in 1..10000")

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
        data = dict(data or {})
        if isinstance(data.get("model"), str):
            data["model"] = MODEL_ALIASES.get(data["model"].strip(), data["model"].strip())
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)


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


# --- generic, typed construction from JSON ----------------------------------------


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the value to store."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:
            # A union of JSON kinds (a list or a keyword, true/false or a keyword): the
            # value's own kind picks the alternative; __post_init__ checks the keyword.
            kinds = {bool: bool, str: str, list: list}
            for alternative in inner:
                kind = kinds.get(typing.get_origin(alternative) or alternative)
                if kind is not None and isinstance(value, kind):
                    return _coerce(alternative, value, name)
            expected = " or ".join(
                (typing.get_origin(a) or a).__name__.replace("str", "a keyword") for a in inner
            )
            raise InvalidRunOptions(f"{name}: must be {expected}, got {value!r:.60}")
        return _coerce(inner[0], value, name)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise InvalidRunOptions(f"{name}: must be a list, got {_describe(value)}")
        return [_coerce(item_tp, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InvalidRunOptions(f"{name}: must be an object, got {_describe(value)}")
        return _build(tp, value, name + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidRunOptions(f"{name}: must be true or false, got {value!r}")
        return value
    if tp is int:
        # JSON has one number type: accept 2e5 for an integer option, reject 0.5.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRunOptions(f"{name}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidRunOptions(f"{name}: must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InvalidRunOptions(f"{name}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported option type {tp!r}")  # a bug in this module, not user input


def _build(cls: Any, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidRunOptions(
            f"unknown option {prefix}{unknown[0]!s}; known options{' of ' + prefix.rstrip('.') if prefix else ''}: "
            + ", ".join(fields)
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InvalidRunOptions(f"{prefix}{name}: required")
    try:
        return cls(**kwargs)
    except InvalidRunOptions as exc:
        if prefix and not exc.message.startswith(prefix):
            raise InvalidRunOptions(prefix + exc.message) from exc
        raise


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
        return json.loads(text)
    except ValueError:
        return text


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
        merged = deep_merge(merged, expand_dotted(layer))
    return merged


def resolve_options(
    sidecar: dict[str, Any] | None = None,
    options_line: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunOptions:
    """:func:`merge_option_layers` then :meth:`RunOptions.from_dict`."""
    return RunOptions.from_dict(merge_option_layers(sidecar, options_line, overrides))


def _hp(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def training_hyperparameters(options: RunOptions, *, device: str = "auto") -> dict[str, str]:
    """The worker ``train`` hyperparameters (SageMaker passes strings only).

    Keys: model, hook, every TrainOptions field, device. Floats use ``repr`` so they
    read back exactly with ``float()``; ints use ``str``.
    """
    params = {"model": options.model, "hook": options.hook}
    params.update({k: _hp(v) for k, v in dataclasses.asdict(options.train).items()})
    params["device"] = device
    return params
