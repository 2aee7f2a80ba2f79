"""TrainConfig: the settings of one SAE training job, parsed from SageMaker hyperparameters.

SageMaker hands every hyperparameter over as a string (``hyperparameters.json``), so
:meth:`TrainConfig.from_hyperparameters` converts and validates each one; an unknown key or
an out-of-range value raises :class:`InvalidRunOptions` (or :class:`InvalidHook` for the
hook) naming the key, before any model work. This module imports no torch.

Each field's docstring is its help text (:func:`field_help` returns them), as in sparsify.
"""

from __future__ import annotations

import ast
import inspect
import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any

from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint
from saeflow.core.options import TrainOptions

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_HOOK = "blocks.15.hook_resid_post"
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
DEVICES = ("auto", "cpu", "cuda", "mps")

# One source of truth for defaults: a run's options (saeflow.core.options) and a training
# job's hyperparameters must never drift apart.
_RUN_DEFAULTS = TrainOptions()

# Upper bounds that catch typos (an extra zero) rather than limit real runs.
_MAX_TOKENS = 10_000_000_000
_MAX_EXPANSION = 256


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one SAE training run (the ``train`` worker contract)."""

    model: str = DEFAULT_MODEL_ID
    """Language model: ``smollm2-135m-instruct`` (alias ``default``, embedded, offline) or a HF id."""

    hook: str = DEFAULT_HOOK
    """TransformerLens hook the SAE reads, ``blocks.<layer>.hook_<site>``."""

    architecture: str = _RUN_DEFAULTS.architecture
    """SAE architecture: topk | batchtopk | jumprelu | standard (L1)."""

    expansion_factor: int = _RUN_DEFAULTS.expansion_factor
    """SAE width as a multiple of the hook's width (d_sae = expansion_factor * d_in)."""

    k: int = _RUN_DEFAULTS.k
    """Active features per token for topk / batchtopk."""

    l1_coefficient: float = _RUN_DEFAULTS.l1_coefficient
    """Sparsity penalty coefficient for standard (L1) and jumprelu (L0 penalty) SAEs."""

    lr: float = _RUN_DEFAULTS.lr
    """Adam learning rate."""

    training_tokens: int = _RUN_DEFAULTS.training_tokens
    """Token budget for training (activations, position 0 and special tokens excluded)."""

    context_size: int = _RUN_DEFAULTS.context_size
    """Tokens per context window fed to the language model."""

    batch_size_tokens: int = _RUN_DEFAULTS.batch_size_tokens
    """Activations per SAE optimisation step."""

    eval_tokens: int = _RUN_DEFAULTS.eval_tokens
    """Held-out tokens for metrics.json and feature data (taken from a split disjoint from training)."""

    corpus: str = _RUN_DEFAULTS.corpus
    """Training text: ``default`` (offline fortunes), ``channel:<name>``, ``hf:<dataset>`` or a local folder."""

    seed: int = _RUN_DEFAULTS.seed
    """Random seed (data split, shuffling, SAE initialisation)."""

    device: str = "auto"
    """auto (cuda when available, else cpu) | cpu | cuda | mps."""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def hook_point(self) -> HookPoint:
        """The parsed hook (layer and site)."""
        return HookPoint.parse(self.hook)

    @classmethod
    def from_hyperparameters(cls, hyperparameters: dict[str, Any]) -> TrainConfig:
        """Build from SageMaker hyperparameters (string values; JSON-quoted strings accepted)."""
        if not isinstance(hyperparameters, dict):
            raise InvalidRunOptions("hyperparameters must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(hyperparameters) - set(known))
        if unknown:
            raise InvalidRunOptions(
                f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for key, raw in hyperparameters.items():
            values[key] = _convert(key, raw, _field_type(cls, key))
        return cls(**values)

    def to_hyperparameters(self) -> dict[str, str]:
        """The inverse of :meth:`from_hyperparameters` (all values as strings)."""
        return {key: str(value) for key, value in asdict(self).items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of the settings (for saeflow_sae.json)."""
        return asdict(self)


def field_help() -> dict[str, str]:
    """Help text of every TrainConfig field (its docstring), for CLIs and error messages."""
    source = inspect.getsource(TrainConfig)
    tree = ast.parse(source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    helps: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            helps[node.target.id] = following.value.value.strip()
    return helps


def _field_type(cls: type, key: str) -> type:
    annotation = {f.name: f.type for f in fields(cls)}[key]
    return {"int": int, "float": float, "str": str}[str(annotation)]


def _convert(key: str, raw: Any, kind: type) -> Any:
    """Convert one hyperparameter; SageMaker may JSON-quote strings (``'"topk"'``)."""
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
    elif isinstance(raw, bool):
        raise InvalidRunOptions(f"hyperparameter {key!r} must be {kind.__name__}, got a boolean")
    elif isinstance(raw, int | float):
        text = repr(raw)
    else:
        raise InvalidRunOptions(
            f"hyperparameter {key!r} must be a string, got {type(raw).__name__}"
        )
    if kind is str:
        return text
    try:
        if kind is int:
            number = float(text.replace("_", ""))
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        return float(text)
    except ValueError as exc:
        raise InvalidRunOptions(
            f"hyperparameter {key!r} must be {'an integer' if kind is int else 'a number'}, "
            f"got {raw!r}"
        ) from exc


def _require(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise InvalidRunOptions(f"hyperparameter {key!r} {message}, got {value!r}")


def _validate(config: TrainConfig) -> None:
    for f in fields(config):
        value = getattr(config, f.name)
        expected = {"int": int, "float": float, "str": str}[str(f.type)]
        ok = isinstance(value, expected) and not isinstance(value, bool)
        if expected is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(ok, f.name, f"must be {expected.__name__}", value)
    _require(bool(config.model.strip()), "model", "must not be empty", config.model)
    config.hook_point  # noqa: B018 - parsing raises InvalidHook on a bad hook
    _require(
        config.architecture in ARCHITECTURES,
        "architecture",
        f"must be one of {', '.join(ARCHITECTURES)}",
        config.architecture,
    )
    _require(
        1 <= config.expansion_factor <= _MAX_EXPANSION,
        "expansion_factor",
        f"must be in 1..{_MAX_EXPANSION}",
        config.expansion_factor,
    )
    _require(config.k >= 1, "k", "must be >= 1", config.k)
    _require(config.l1_coefficient > 0, "l1_coefficient", "must be > 0", config.l1_coefficient)
    _require(0 < config.lr <= 1, "lr", "must be in (0, 1]", config.lr)
    _require(
        1 <= config.context_size <= 8192,
        "context_size",
        "must be in 1..8192",
        config.context_size,
    )
    _require(
        1 <= config.batch_size_tokens <= 1_048_576,
        "batch_size_tokens",
        "must be in 1..1048576",
        config.batch_size_tokens,
    )
    _require(
        config.batch_size_tokens <= config.training_tokens <= _MAX_TOKENS,
        "training_tokens",
        f"must be >= batch_size_tokens ({config.batch_size_tokens}) and <= {_MAX_TOKENS}",
        config.training_tokens,
    )
    _require(
        config.context_size <= config.eval_tokens <= _MAX_TOKENS,
        "eval_tokens",
        f"must be >= context_size ({config.context_size}) and <= {_MAX_TOKENS}",
        config.eval_tokens,
    )
    corpus = config.corpus.strip()
    _require(bool(corpus), "corpus", "must not be empty", config.corpus)
    for prefix in ("channel:", "hf:"):
        if corpus.startswith(prefix):
            _require(
                bool(corpus[len(prefix) :].strip()),
                "corpus",
                f"needs a name after {prefix}",
                corpus,
            )
    _require(config.seed >= 0, "seed", "must be >= 0", config.seed)
    _require(
        config.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}", config.device
    )
