"""TrainConfig: the settings of one SAE training job, parsed from SageMaker hyperparameters.

It is :class:`saeflow.core.contract.TrainSettings`, the same type the Lambda side plans
the job with, so a run the validate step accepts is a job the worker accepts: one set of
ranges, validated once. :meth:`TrainConfig.from_hyperparameters` converts the strings
SageMaker hands over (``hyperparameters.json``) and raises :class:`InvalidRunOptions` (or
:class:`InvalidHook`) naming the key, before any model work. This module imports no torch.

Each field's docstring is its help text (:func:`field_help`), as in sparsify.
"""

from __future__ import annotations

from saeflow.core.contract import DEFAULT_HOOK, DEFAULT_MODEL, DEVICES, TrainSettings

TrainConfig = TrainSettings
DEFAULT_MODEL_ID = DEFAULT_MODEL

__all__ = ["DEFAULT_HOOK", "DEFAULT_MODEL_ID", "DEVICES", "TrainConfig", "field_help"]


def field_help() -> dict[str, str]:
    """Help text of every TrainConfig field (its docstring), for CLIs and error messages."""
    return {
        name: " ".join((info.description or "").split())
        for name, info in TrainConfig.model_fields.items()
    }
