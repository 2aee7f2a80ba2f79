"""Names and defaults both sides of the Lambda / worker boundary use.

The embedded default model's shape lives here too, so a run can be checked (hook layer,
SAE width) before any GPU work when it uses that model.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "smollm2-135m-instruct"
MODEL_ALIASES = {"default": DEFAULT_MODEL}
DEFAULT_HOOK = "blocks.15.hook_resid_post"
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
DEVICES = ("auto", "cpu", "cuda", "mps")

# Files of an SAE directory (SAELens format plus saeflow's own).
SAE_DESCRIPTOR_FILE = "saeflow_sae.json"
SAE_CONFIG_FILE = "cfg.json"

# The serve container's environment (batch transform model Environment).
ENV_MODEL = "SAEFLOW_MODEL"
ENV_HOOK = "SAEFLOW_HOOK"
ENV_TOP_K = "SAEFLOW_TOP_K"
ENV_MAX_PROMPT_TOKENS = "SAEFLOW_MAX_PROMPT_TOKENS"
ENV_CE_LOSS = "SAEFLOW_CE_LOSS"
# Training and transform jobs: a Secrets Manager secret holding a Hugging Face token.
ENV_HF_TOKEN_SECRET_ARN = "SAEFLOW_HF_TOKEN_SECRET_ARN"

# The training channel an s3:// corpus is mounted as (hyperparameter corpus=channel:corpus).
CORPUS_CHANNEL = "corpus"


@dataclass(frozen=True)
class ModelShape:
    """What validation may know about a model without loading it."""

    n_layers: int
    d_model: int


KNOWN_MODELS: dict[str, ModelShape] = {DEFAULT_MODEL: ModelShape(n_layers=30, d_model=576)}


def canonical_model(model: str) -> str:
    """Resolve the alias ``default``; other ids are returned stripped."""
    text = model.strip()
    return MODEL_ALIASES.get(text.lower(), text)


def auto_labeler(*, anthropic_key: bool, bedrock: bool) -> str:
    """What ``label.backend=auto`` means, for every caller (Lambda and CLI alike).

    An Anthropic API key is set only on purpose, so it wins; then Bedrock when reachable
    (always on AWS: the role is the credential); else the offline heuristic.
    """
    if anthropic_key:
        return "anthropic"
    if bedrock:
        return "bedrock"
    return "offline"
