"""The contrast between the main prompt set and a contrast set, feature by feature.

The unit is the prompt: a feature "fires in a prompt" when it fires on at least one of its
content tokens. For each feature the 2x2 table (fires / does not, main / contrast) gets
Fisher's exact test, two-sided: exact at any sample size (prompt sets are often 20-100
prompts, where approximations are poor), and it needs only prompt counts, which add up
across shards. The effect size is the difference in the share of prompts it fires in
(main minus contrast), with the log2 odds ratio (0.5 added to every cell) beside it.

Order within a side: significant features first, by effect size weighted by how specific
the feature is to that side's prompts against the reference corpus (so that differences
in topic come before differences in punctuation or sentence form, which are listed too),
then the rest by q-value.

Multiple testing: thousands of features are compared, so p-values are corrected by
Benjamini-Hochberg (q-values, false discovery rate). A feature firing in too few prompts
cannot reach p <= alpha whatever the split (Tarone's criterion): it is not tested, which
keeps the correction from being diluted by tests that could never succeed. First-token
features are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from saeflow.core.stats import benjamini_hochberg, fisher_exact, fisher_min_p

TEST_NAME = "Fisher's exact test (two-sided) on prompt-level firing"
CORRECTION_NAME = "Benjamini-Hochberg over the testable features (Tarone's criterion)"


@dataclass(frozen=True)
class ContrastSettings:
    alpha: float = 0.05
    rows_per_side: int = 15


@dataclass(frozen=True)
class PromptCounts:
    """One feature: prompts it fires in, per set, and its specificity (against the corpus)
    on each set's prompts, when known."""

    feature_id: int
    main: int
    contrast: int
    main_specificity: float | None = None
    contrast_specificity: float | None = None


def contrast_table(
    counts: Iterable[PromptCounts],
    n_main: int,
    n_contrast: int,
    settings: ContrastSettings | None = None,
) -> dict[str, Any]:
    """Every testable feature tested; the significant ones listed per side."""
    settings = settings or ContrastSettings()
    rows = []
    untestable = 0
    min_p_cache: dict[int, float] = {}
    for entry in counts:
        total = entry.main + entry.contrast
        if total not in min_p_cache:
            min_p_cache[total] = fisher_min_p(n_main, n_contrast, total)
        if min_p_cache[total] > settings.alpha:
            untestable += 1
            continue
        rows.append(_row(entry, n_main, n_contrast))
    q_values = benjamini_hochberg([r["p_value"] for r in rows])
    for row, q in zip(rows, q_values, strict=True):
        row["q_value"] = q
        row["significant"] = q <= settings.alpha
    sides = {"more_in_main": [], "more_in_contrast": []}
    for row in rows:
        if row["effect_size"] > 0:
            sides["more_in_main"].append(row)
        elif row["effect_size"] < 0:
            sides["more_in_contrast"].append(row)
    for side, side_rows in sides.items():
        side_rows.sort(key=_order_key)
        sides[side] = side_rows[: settings.rows_per_side]
    n_significant = {
        side: sum(
            1
            for r in rows
            if r["significant"] and (r["effect_size"] > 0) == (side == "more_in_main")
        )
        for side in sides
    }
    return {
        "test": TEST_NAME,
        "correction": CORRECTION_NAME,
        "alpha": settings.alpha,
        "effect_size": "difference in the share of prompts the feature fires in (main - contrast)",
        "n_prompts": {"main": n_main, "contrast": n_contrast},
        "n_tested": len(rows),
        "n_untestable": untestable,
        "n_significant": n_significant,
        **sides,
    }


def _order_key(row: Mapping[str, Any]) -> tuple:
    weight = max(0.25, row.get("side_specificity") or 0.0)
    return (not row["significant"], -abs(row["effect_size"]) * weight, row["q_value"], row["id"])


def _row(entry: PromptCounts, n_main: int, n_contrast: int) -> dict[str, Any]:
    a, c = entry.main, entry.contrast
    b, d = n_main - a, n_contrast - c
    share_main = a / n_main if n_main else 0.0
    share_contrast = c / n_contrast if n_contrast else 0.0
    log2_odds = math.log2(((a + 0.5) * (d + 0.5)) / ((b + 0.5) * (c + 0.5)))
    return {
        "id": entry.feature_id,
        "main_prompts": a,
        "contrast_prompts": c,
        "main_prompt_share": share_main,
        "contrast_prompt_share": share_contrast,
        "effect_size": share_main - share_contrast,
        "log2_odds_ratio": log2_odds,
        "p_value": fisher_exact(a, b, c, d),
        "side_specificity": entry.main_specificity
        if a / max(n_main, 1) >= c / max(n_contrast, 1)
        else entry.contrast_specificity,
    }


def annotate(rows: Iterable[dict[str, Any]], stats: Mapping[int, Mapping[str, Any]]) -> None:
    """Add each row's token-level frequencies and mean activations (for the report)."""
    for row in rows:
        feature = stats.get(int(row["id"])) or {}
        row["main_frequency"] = feature.get("frequency")
        row["main_mean_activation"] = feature.get("mean_activation")
        other = feature.get("contrast") or {}
        row["contrast_frequency"] = other.get("frequency")
        row["contrast_mean_activation"] = other.get("mean_activation")
