"""What one run may spend and read: checked at validation, before any GPU or LLM work.

- Spend: :class:`RunLimits` are the validate step's caps (template parameters
  ``MaxTrainingTokens``, ``MaxTransformInstances``). A run asking for more training tokens
  than allowed is :class:`SpendLimitExceeded`. Transform instances are not a run's to
  choose: they cap the transform's instance count (:func:`saeflow.core.scale.
  plan_transform`). ``MaxTrainingSeconds`` is the training job's stopping condition
  (``ResolveSaeSettings``) and ``MaxConcurrentRuns`` makes a run wait, never fail
  (``CapacitySettings``).
- Isolation: a run reads prompt sets only under ``prompts/``, corpora only under
  ``corpora/`` and SAEs only under ``saes/``, all in its own bucket
  (:class:`ForbiddenInput`), so no upload can point a job at another run's files.
- Models saeflow knows (the embedded default): the hook's layer and the SAE width are
  checked here rather than in a GPU job; so is a pretrained SAE's ``cfg.json`` once
  resolve_sae has read it (:func:`check_sae_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saeflow.core import layout
from saeflow.core.contract import KNOWN_MODELS, canonical_model
from saeflow.core.errors import ForbiddenInput, InvalidHook, InvalidRunOptions, SpendLimitExceeded
from saeflow.core.options import RunOptions

CORPORA_PREFIX = "corpora/"


@dataclass(frozen=True)
class RunLimits:
    """The deployment's spend limits (template parameters; defaults match the template)."""

    max_training_tokens: int = 100_000_000
    max_transform_instances: int = 4


def check_run(options: RunOptions, *, bucket: str, limits: RunLimits) -> None:
    """Every check of this module; raises the first named error found."""
    check_spend(options, limits)
    check_readable(options, bucket)
    check_known_model(options)


def check_spend(options: RunOptions, limits: RunLimits) -> None:
    if options.sae != "train":
        return
    for name in ("training_tokens", "eval_tokens"):
        value = getattr(options.train, name)
        if value > limits.max_training_tokens:
            raise SpendLimitExceeded(
                f"train.{name}: {value} exceeds this deployment's limit of "
                f"{limits.max_training_tokens} tokens (template parameter MaxTrainingTokens)"
            )


def check_readable(options: RunOptions, bucket: str) -> None:
    """Every object the run names lies under the prefix its kind may come from."""
    if options.contrast is not None:
        _check_key("contrast", options.contrast, bucket, layout.PROMPTS_PREFIX, "a prompt set")
    if options.sae.startswith("s3://"):
        _check_key("sae", options.sae, bucket, layout.SAES_PREFIX, "an SAE directory")
    corpus = options.train.corpus
    if options.sae == "train" and corpus != "default" and not corpus.startswith("hf:"):
        if not corpus.startswith("s3://"):
            raise ForbiddenInput(
                f"train.corpus: {corpus!r:.80} is not readable by a run: give default, "
                f"hf:<dataset> or s3://{bucket}/{CORPORA_PREFIX}<folder>/"
            )
        _check_key("train.corpus", corpus, bucket, CORPORA_PREFIX, "a training corpus")


def _check_key(option: str, ref: str, bucket: str, prefix: str, what: str) -> None:
    if ref.startswith("s3://"):
        ref_bucket, key = layout.parse_s3_uri(ref)
    else:
        ref_bucket, key = bucket, ref
    parts = key.split("/")
    if ref_bucket != bucket or not key.startswith(prefix) or ".." in parts or "" in parts[:-1]:
        raise ForbiddenInput(
            f"{option}: {ref!r:.100} is not readable by a run: {what} must be under "
            f"s3://{bucket}/{prefix}"
        )


def check_known_model(options: RunOptions) -> None:
    """Hook layer and SAE width for a model whose shape is known without loading it."""
    shape = KNOWN_MODELS.get(canonical_model(options.model))
    if shape is None:
        return
    options.hook_point.check_layers(shape.n_layers)  # InvalidHook
    if options.sae != "train":
        return
    d_sae = options.train.expansion_factor * shape.d_model
    if options.train.k > d_sae:
        raise InvalidRunOptions(f"train.k: {options.train.k} exceeds the SAE width {d_sae}")
    check_steer_features(options, d_sae)


def check_steer_features(options: RunOptions, d_sae: int) -> None:
    """Steering requests name features the SAE has (``d_sae`` of them)."""
    for i, request in enumerate(options.steer_requests):
        if request.feature >= d_sae:
            raise InvalidRunOptions(
                f"steer[{i}].feature: {request.feature} does not exist; the SAE has "
                f"{d_sae} features (0..{d_sae - 1})"
            )


def check_sae_config(options: RunOptions, config: Mapping[str, Any]) -> None:
    """A pretrained SAE's ``cfg.json`` against the run: the hook it reads and its width."""
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    hook = metadata.get("hook_name") or config.get("hook_name")
    if isinstance(hook, str) and hook and hook != options.hook:
        raise InvalidHook(f"the SAE was trained on {hook}, not on {options.hook}: set hook={hook}")
    d_sae = config.get("d_sae")
    if isinstance(d_sae, int) and not isinstance(d_sae, bool):
        check_steer_features(options, d_sae)
