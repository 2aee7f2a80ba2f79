"""``saeflow_sae.json``: what an SAE directory is, written and read by the same types.

- :class:`SaeManifest` sits beside an SAE saeflow trained (``saes/<model>/<hook>/<hash>/``):
  the model, hook and train settings it was trained with, and library versions.
- :class:`SaeReference` is the whole content of a run's ``sae-ref/`` directory: a pretrained
  SAELens SAE named by ``release`` (a SAELens release or a Hugging Face repo id) and
  ``sae_id``, with the model and hook the run reads it at.

:func:`read_sae_descriptor` tells them apart by ``source``.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any, Literal

from pydantic import Field

from saeflow.core.errors import SaeNotFound
from saeflow.core.schema import Int, Schema, Text


class SaeReference(Schema):
    """A pretrained SAE of SAELens's registry (or a Hugging Face repo in SAELens format)."""

    source: Literal["saelens"] = "saelens"
    release: Text = Field(min_length=1)
    """A SAELens release name, or a Hugging Face repo id (org/name)."""
    sae_id: Text = Field(min_length=1)
    """The SAE's id in the release (a folder of the repo for a repo id)."""
    model: Text
    hook: Text

    @property
    def option(self) -> str:
        """The run option that names it: ``saelens:<release>/<sae_id>``."""
        return f"saelens:{self.release}/{self.sae_id}"


class SaeManifest(Schema):
    """Written by the worker beside an SAE it trained."""

    model_config = Schema.model_config | {"extra": "allow"}  # newer writers may add fields
    source: Literal["saeflow"] = "saeflow"
    model: Text
    hook: Text
    architecture: Text | None = None
    d_in: Int | None = None
    d_sae: Int | None = None
    feature_data_version: Int | None = None
    """2: feature_data.jsonl carries first-token evidence, and feature_summary.json and
    corpus_windows.jsonl sit beside it (None: an SAE trained before them)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """The train settings (TrainSettings.to_dict())."""
    versions: dict[str, Any] = Field(default_factory=dict)


def read_sae_descriptor(text: str | bytes, where: str) -> SaeManifest | SaeReference:
    """Parse ``saeflow_sae.json``; a malformed file is :class:`SaeNotFound` naming ``where``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SaeNotFound(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SaeNotFound(f"{where} must hold a JSON object")
    kind = SaeReference if data.get("source") == "saelens" else SaeManifest
    try:
        return kind.model_validate({"source": kind.model_fields["source"].default, **data})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise SaeNotFound(f"{where} is not a valid SAE descriptor: {exc}") from exc


def split_saelens_ref(ref: str, releases: Container[str]) -> tuple[str, str]:
    """``<release>/<sae_id>`` -> (release, sae_id), the way SAELens resolves it.

    A first segment that is one of SAELens's ``releases`` is the release (the id may hold
    slashes); otherwise the release is a Hugging Face repo id, ``<org>/<repo>``, and the
    rest is the SAE's folder in it. Nothing is checked here: callers decide what is known.
    """
    first, _, rest = ref.strip().partition("/")
    if first in releases:
        return first, rest
    repo, _, sae_id = rest.partition("/")
    if not sae_id:
        return first, rest
    return f"{first}/{repo}", sae_id
