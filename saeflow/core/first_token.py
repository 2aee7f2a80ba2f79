"""First-token features: SAE features that fire on the first real token of a text, whatever it is.

Position 0 (BOS) is left out of every statistic. The first *real* token (position 1 of a
corpus window after BOS; the first token of an extraction record) is different too: its
residual stream sees only BOS and itself (norm ~250 at layer 15 of the default model,
against ~175 later), and some features fire there 2-15x harder than content features
fire anywhere, on whatever word happens to be first. They say nothing about the text,
and they top every frequency ranking.

A feature is a first-token feature when, on enough texts (windows or prompts):

- it fires at the first real token of at least ``min_fire_rate`` of them: it does not
  care which word is there (corpus windows are cut mid-document, so their first token is
  an arbitrary word), and
- the first token is where it lives: at least ``min_mass_share`` of its activation mass
  sits there, or it fires there at least ``min_intensity_ratio`` times harder on average
  than anywhere else (position features that also fire weakly on every early token).

Measured on the default model's demo SAE (315 corpus windows): 14 of 4,608 features; the
two strongest fire on 99-100% of first tokens at 46-84 against 14-15 elsewhere.

This module is the ONE place that decides. The worker applies it to held-out corpus
windows and records the verdict in the SAE's feature data; the aggregator applies it to
the prompt set when the SAE carries no verdict (a pretrained SAE), and reads it otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FirstTokenRule:
    """Thresholds of the verdict (measured on the default model; see the README)."""

    min_texts: int = 16
    """Fewer texts than this: no verdict (never a first-token feature)."""
    min_fire_rate: float = 0.2
    """Share of texts whose first real token the feature fires on."""
    min_mass_share: float = 0.5
    """Share of the feature's activation mass that sits on first real tokens."""
    min_intensity_ratio: float = 3.0
    """Mean activation on first real tokens / mean activation elsewhere."""

    def __post_init__(self) -> None:
        if self.min_texts < 1:
            raise ValueError("min_texts must be >= 1")
        if not 0.0 < self.min_fire_rate <= 1.0 or not 0.0 < self.min_mass_share <= 1.0:
            raise ValueError("min_fire_rate and min_mass_share must be in (0, 1]")

    def describe(self) -> str:
        return (
            f"fires on the first real token of >= {self.min_fire_rate:.0%} of texts, and has "
            f">= {self.min_mass_share:.0%} of its activation mass there or fires there "
            f">= {self.min_intensity_ratio:g}x harder than elsewhere (at least "
            f"{self.min_texts} texts seen)"
        )


DEFAULT_RULE = FirstTokenRule()


@dataclass(frozen=True)
class FirstTokenEvidence:
    """What one feature did on a sample of texts; adds up across shards (every field is
    required: a caller that forgets one fails loudly)."""

    n_texts: int
    """Texts seen (each has one first real token)."""
    first_fires: int
    """Texts whose first real token the feature fired on."""
    first_mass: float
    """Sum of its activations on first real tokens."""
    total_mass: float
    """Sum of its activations on every counted token, first ones included."""
    content_fires: int
    """Tokens other than first real tokens that it fired on."""

    @classmethod
    def empty(cls) -> FirstTokenEvidence:
        return cls(0, 0, 0.0, 0.0, 0)

    @property
    def fire_rate(self) -> float:
        return self.first_fires / self.n_texts if self.n_texts else 0.0

    @property
    def mass_share(self) -> float:
        return self.first_mass / self.total_mass if self.total_mass > 0 else 0.0

    @property
    def intensity_ratio(self) -> float:
        """Mean activation on first real tokens / mean activation elsewhere (inf: only there)."""
        if not self.first_fires:
            return 0.0
        if not self.content_fires:
            return float("inf")
        first_mean = self.first_mass / self.first_fires
        rest_mean = (self.total_mass - self.first_mass) / self.content_fires
        return first_mean / rest_mean if rest_mean > 0 else float("inf")

    def __add__(self, other: FirstTokenEvidence) -> FirstTokenEvidence:
        return FirstTokenEvidence(
            self.n_texts + other.n_texts,
            self.first_fires + other.first_fires,
            self.first_mass + other.first_mass,
            self.total_mass + other.total_mass,
            self.content_fires + other.content_fires,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_texts": self.n_texts,
            "first_fires": self.first_fires,
            "fire_rate": round(self.fire_rate, 4),
            "mass_share": round(self.mass_share, 4),
            "intensity_ratio": None
            if self.intensity_ratio == float("inf")
            else round(self.intensity_ratio, 3),
        }


def is_first_token_feature(
    evidence: FirstTokenEvidence, rule: FirstTokenRule = DEFAULT_RULE
) -> bool:
    """The verdict: does this feature fire on the first real token whatever the word?"""
    if evidence.n_texts < rule.min_texts:
        return False
    if evidence.fire_rate < rule.min_fire_rate:
        return False
    return (
        evidence.mass_share >= rule.min_mass_share
        or evidence.intensity_ratio >= rule.min_intensity_ratio
    )


def verdict_from_record(record: Mapping[str, Any] | None) -> bool | None:
    """The verdict stored in feature data (``{"first_token": {"is_first_token": ...}}``), if any."""
    if not record:
        return None
    stored = record.get("first_token")
    if isinstance(stored, Mapping) and isinstance(stored.get("is_first_token"), bool):
        return bool(stored["is_first_token"])
    return None
