"""Steering requests as worker records, and the automatic choice behind ``steer: "auto"``.

``steer: "auto"`` steers the run's most specific features, so that a first report shows
what those features do to generation without the user naming any. The strengths are in
units of each feature's own activation scale (its strongest activation on the reference
corpus, else on the prompts), so one rule fits features that fire at 5 and at 50.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saeflow.core.options import SteerRequest


@dataclass(frozen=True)
class AutoSteerSettings:
    """How ``steer: "auto"`` chooses."""

    n_features: int = 3
    n_prompts: int = 2
    strength_multiples: tuple[float, ...] = (1.5, 3.0)
    """Strengths = these multiples of the feature's max activation."""
    min_prompt_chars: int = 12


def steer_records(requests: Sequence[SteerRequest]) -> list[dict[str, Any]]:
    """One worker steer record per request x prompt x strength."""
    return [
        {
            "steer": {
                "feature": request.feature,
                "strength": strength,
                "prompt": prompt,
                "max_new_tokens": request.max_new_tokens,
                "temperature": request.temperature,
                "freq_penalty": request.freq_penalty,
                "seed": request.seed,
            }
        }
        for request in requests
        for prompt in request.prompts
        for strength in request.strengths
    ]


def auto_steer_requests(
    ranked: Sequence[Mapping[str, Any]],
    prompts: Sequence[str],
    settings: AutoSteerSettings | None = None,
) -> list[SteerRequest]:
    """Requests for the first ``n_features`` of ``ranked`` on ``n_prompts`` of ``prompts``.

    ``ranked``: feature stats in rank order, each with ``id`` and a scale
    (``corpus_max_activation`` or ``max_activation``). ``prompts``: candidate texts; the
    shortest that are still sentences are used, the same for every feature so the
    generations compare across features.
    """
    settings = settings or AutoSteerSettings()
    texts = sorted(
        {p.strip() for p in prompts if len(p.strip()) >= settings.min_prompt_chars},
        key=lambda p: (len(p), p),
    )[: settings.n_prompts]
    if not texts:
        texts = [p.strip() for p in prompts if p.strip()][: settings.n_prompts]
    if not texts:
        return []
    requests = []
    for stats in ranked[: settings.n_features]:
        scale = float(stats.get("corpus_max_activation") or stats.get("max_activation") or 0.0)
        if scale <= 0:
            continue
        requests.append(
            SteerRequest.parse(
                {
                    "feature": int(stats["id"]),
                    "strengths": [round(m * scale, 2) for m in settings.strength_multiples],
                    "prompts": texts,
                }
            )
        )
    return requests
