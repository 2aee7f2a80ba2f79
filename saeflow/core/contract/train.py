"""The train settings: validated once, here, for the Lambda that plans a training job and
for the worker that runs it.

- :class:`TrainOptions` is a run's ``train`` section (what a user sets).
- :class:`TrainSettings` is what a training job runs: the same fields plus ``model``,
  ``hook`` and ``device``. SageMaker passes hyperparameters as strings:
  :meth:`TrainSettings.to_hyperparameters` writes them, :meth:`from_hyperparameters` reads
  them back into the same validated type (an unknown key or a bad value raises
  :class:`InvalidRunOptions` naming the hyperparameter).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from saeflow.core.contract.names import DEFAULT_HOOK, DEFAULT_MODEL
from saeflow.core.errors import InvalidRunOptions
from saeflow.core.hooks import HookPoint
from saeflow.core.schema import Float, Int, Schema, Text

# Upper bounds that catch typos (an extra zero) rather than limit real runs; what a run
# may spend is the deployment's limit (saeflow.core.run_policy).
MAX_TOKENS = 10_000_000_000


class TrainOptions(Schema):
    """How to train an SAE when ``sae`` is ``train`` (each field is a worker hyperparameter)."""

    architecture: Literal["topk", "batchtopk", "jumprelu", "standard"] = "topk"
    """SAE architecture: topk | batchtopk | jumprelu | standard (L1)."""
    expansion_factor: Int = Field(8, ge=1, le=256)
    """SAE width as a multiple of the hook's width (d_sae = expansion_factor * d_model)."""
    k: Int = Field(32, ge=1, le=4096)
    """Active features per token for topk / batchtopk."""
    l1_coefficient: Float = Field(5.0, gt=0)
    """Sparsity penalty for standard (L1) and jumprelu (L0 penalty) SAEs."""
    lr: Float = Field(2e-3, gt=0, le=1)
    """Adam learning rate (2e-3 measured best for short runs: 1e-3 left 11% of features
    dead and CE loss recovered at 96.5% on the demo's budget; 3e-3 overshoots)."""
    training_tokens: Int = Field(200_000, ge=1_000, le=MAX_TOKENS)
    """Token budget for training (at least one batch; the deployment caps it)."""
    context_size: Int = Field(128, ge=2, le=8192)
    """Tokens per training sequence fed to the language model."""
    batch_size_tokens: Int = Field(512, ge=1, le=1_048_576)
    """Activations per SAE optimisation step."""
    eval_tokens: Int = Field(8192, le=MAX_TOKENS)
    """Held-out tokens for metrics.json (at least one context window; 8k: CE loss
    recovered moves by tenths of a point between 4k-token samples)."""
    corpus: Text = Field("default", min_length=1)
    """Training text: default (offline fortunes) | hf:<dataset> | s3://<bucket>/corpora/...
    (the worker reads it as channel:<name>) | a local folder (embedded mode)."""
    seed: Int = Field(42, ge=0)
    """Random seed (data split, shuffling, SAE initialisation)."""

    @field_validator("corpus")
    @classmethod
    def _named_corpus(cls, corpus: str) -> str:
        for prefix in ("channel:", "hf:", "s3://"):
            if corpus.startswith(prefix) and not corpus[len(prefix) :].strip("/ "):
                raise ValueError(f"needs a name after {prefix}")
        if not corpus.strip():
            raise ValueError("must not be empty")
        return corpus

    @model_validator(mode="after")
    def _budgets(self) -> TrainOptions:
        if self.training_tokens < self.batch_size_tokens:
            raise ValueError(
                f"training_tokens: must be >= batch_size_tokens ({self.batch_size_tokens}), "
                f"got {self.training_tokens}"
            )
        if self.eval_tokens < self.context_size:
            raise ValueError(
                f"eval_tokens: must be >= context_size ({self.context_size}), "
                f"got {self.eval_tokens}"
            )
        return self


def _hyperparameter(path: str) -> str:
    return f"hyperparameter {path.split('.')[0]!r}"


class TrainSettings(TrainOptions):
    """The settings of one training job (the worker's ``train`` contract)."""

    model: Text = Field(DEFAULT_MODEL, min_length=1)
    """Language model: smollm2-135m-instruct (alias default, embedded, offline) or a HF id."""
    hook: Text = DEFAULT_HOOK
    """TransformerLens hook the SAE reads, blocks.<layer>.hook_<site>."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto (cuda when available, else cpu) | cpu | cuda | mps."""

    @field_validator("hook")
    @classmethod
    def _hook_parses(cls, hook: str) -> str:
        HookPoint.parse(hook)  # raises InvalidHook, the more specific error name
        return hook

    @property
    def hook_point(self) -> HookPoint:
        """The parsed hook (layer and site)."""
        return HookPoint.parse(self.hook)

    @classmethod
    def for_run(
        cls, model: str, hook: str, train: TrainOptions, *, device: str = "auto"
    ) -> TrainSettings:
        """A run's training job: its model and hook plus its ``train`` section."""
        return cls(model=model, hook=hook, device=device, **train.model_dump())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of the settings (saeflow_sae.json, checkpoint fingerprints)."""
        return self.model_dump()

    def to_hyperparameters(self) -> dict[str, str]:
        """SageMaker's string form; floats use ``repr`` so they read back exactly."""
        return {
            key: repr(value) if isinstance(value, float) else str(value)
            for key, value in self.model_dump().items()
        }

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Any) -> TrainSettings:
        """Read SageMaker hyperparameters (strings; JSON-quoted strings accepted)."""
        if not isinstance(hyperparameters, dict):
            raise InvalidRunOptions("hyperparameters must be a JSON object")
        kinds = {
            name: spec.get("type", "string")
            for name, spec in cls.model_json_schema()["properties"].items()
        }
        unknown = sorted(set(hyperparameters) - set(kinds))
        if unknown:
            raise InvalidRunOptions(
                f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(kinds)}"
            )
        values = {key: _convert(key, raw, kinds[key]) for key, raw in hyperparameters.items()}
        return cls.parse(values, name=_hyperparameter)


def _convert(key: str, raw: Any, kind: str) -> Any:
    """One hyperparameter from its string form; SageMaker may JSON-quote strings."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise InvalidRunOptions(f"hyperparameter {key!r} must be a string, got {raw!r}")
    text = raw.strip() if isinstance(raw, str) else repr(raw)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if kind not in ("integer", "number"):
        return text
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        return text  # validation names the key and the expected kind
    return int(number) if kind == "integer" and number.is_integer() else number
