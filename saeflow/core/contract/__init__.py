"""Everything that crosses the boundary between the Lambda steps and the GPU worker.

One type per thing, read and written by the same code on both sides:

- train settings: :class:`TrainOptions` (a run's ``train`` section) and :class:`TrainSettings`
  (a training job: the same fields plus model, hook and device; SageMaker string
  hyperparameters both ways);
- SAE directories: ``saeflow_sae.json`` as :class:`SaeManifest` (trained by saeflow) or
  :class:`SaeReference` (a pretrained SAELens SAE), read by :func:`read_sae_descriptor`;
- the serve container's environment: :class:`ServeSettings`;
- names and defaults (:mod:`saeflow.core.contract.names`).

Pure: pydantic only, no boto3, no torch, no environment.
"""

from saeflow.core.contract.names import (
    ARCHITECTURES,
    CORPUS_CHANNEL,
    DEFAULT_HOOK,
    DEFAULT_MODEL,
    DEVICES,
    ENV_HF_TOKEN_SECRET_ARN,
    ENV_HOOK,
    ENV_MAX_PROMPT_TOKENS,
    ENV_MODEL,
    ENV_TOP_K,
    KNOWN_MODELS,
    MODEL_ALIASES,
    SAE_CONFIG_FILE,
    SAE_DESCRIPTOR_FILE,
    ModelShape,
    auto_labeler,
    canonical_model,
)
from saeflow.core.contract.sae_files import (
    SaeManifest,
    SaeReference,
    read_sae_descriptor,
    split_saelens_ref,
)
from saeflow.core.contract.serve import ServeSettings
from saeflow.core.contract.train import MAX_TOKENS, TrainOptions, TrainSettings

__all__ = [
    "ARCHITECTURES",
    "CORPUS_CHANNEL",
    "DEFAULT_HOOK",
    "DEFAULT_MODEL",
    "DEVICES",
    "ENV_HF_TOKEN_SECRET_ARN",
    "ENV_HOOK",
    "ENV_MAX_PROMPT_TOKENS",
    "ENV_MODEL",
    "ENV_TOP_K",
    "KNOWN_MODELS",
    "MAX_TOKENS",
    "MODEL_ALIASES",
    "SAE_CONFIG_FILE",
    "SAE_DESCRIPTOR_FILE",
    "ModelShape",
    "SaeManifest",
    "SaeReference",
    "ServeSettings",
    "TrainOptions",
    "TrainSettings",
    "auto_labeler",
    "canonical_model",
    "read_sae_descriptor",
    "split_saelens_ref",
]
