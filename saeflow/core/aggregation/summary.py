"""From accumulated statistics to what the report and the labellers need.

:func:`summarize` turns a :class:`FeatureAccumulator` (one pass, or merged shards) and the
SAE's corpus reference into the body of ``aggregate.json``: per-feature statistics with
their first-token verdict and specificity, the two ranked views, the contrast with its
statistics, the SAE's quality on the prompts, and the features to report and label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.aggregation.accumulator import (
    CONTRAST_SET,
    MAIN_SET,
    FeatureAccumulator,
    FeatureState,
    QualitySums,
    SetCounts,
)
from saeflow.core.aggregation.contrast import (
    ContrastSettings,
    PromptCounts,
    annotate,
    contrast_table,
)
from saeflow.core.aggregation.ranking import (
    ACTIVITY,
    SPECIFICITY,
    RankingSettings,
    rank_by_activity,
    rank_by_specificity,
    score_specificity,
)
from saeflow.core.aggregation.reference import CorpusReference
from saeflow.core.errors import ExtractionFailed
from saeflow.core.first_token import (
    DEFAULT_RULE,
    FirstTokenEvidence,
    FirstTokenRule,
    is_first_token_feature,
)

SPECIFICITY_DESCRIPTION = (
    "specificity: log2((firings on the prompts' content tokens + 1) / (firings the corpus "
    "predicts at the same positions + 1)), times a strength weight (mean activation on the "
    "prompts / on the corpus, in [{floor:g}, {cap:g}]); listed when at least {min_spec:g} "
    "(twice as frequent as expected) and the feature fires in at least {min_prompts} prompts; "
    "first-token features and each prompt's first token are left out"
)
ACTIVITY_DESCRIPTION = (
    "activity: frequency x mean activation over the prompts' content tokens; features firing "
    "on more than {max_freq:.0%} of tokens and first-token features are left out"
)


@dataclass(frozen=True)
class SummarySettings:
    ranking: RankingSettings = field(default_factory=RankingSettings)
    contrast: ContrastSettings = field(default_factory=ContrastSettings)
    first_token_rule: FirstTokenRule = DEFAULT_RULE
    top_tokens_per_feature: int = 10
    contrast_rows_reported: int = 5
    """Significant contrast features per side that also get a card (and a label)."""


def set_stats(counts: SetCounts | None, n_tokens: int, n_prompts: int) -> dict[str, Any]:
    counts = counts or SetCounts()
    return {
        "token_count": counts.tokens,
        "prompt_count": counts.prompts,
        "frequency": counts.tokens / n_tokens if n_tokens else 0.0,
        "prompt_frequency": counts.prompts / n_prompts if n_prompts else 0.0,
        "mean_activation": counts.activation_sum / counts.tokens if counts.tokens else 0.0,
        "max_activation": counts.max_activation,
    }


def top_tokens(state: FeatureState, limit: int) -> list[dict[str, Any]]:
    """Strongest tokens first (mean activation when firing), ties by count."""
    ranked = sorted(state.tally.items(), key=lambda kv: (-kv[1][1] / kv[1][0], -kv[1][0], kv[0]))
    return [
        {"token": text, "count": int(count), "mean_activation": act_sum / count}
        for text, (count, act_sum) in ranked[:limit]
    ]


def log2_histogram(state: FeatureState) -> dict[str, Any] | None:
    hist = state.log2_hist
    if not hist:
        return None
    low, high = min(hist), max(hist)
    return {
        "edges": [2.0 ** (e - 1) for e in range(low, high + 2)],
        "counts": [hist.get(e, 0) for e in range(low, high + 1)],
        "scale": "log2",
        "source": "prompt set",
    }


def first_token_verdict(
    acc: FeatureAccumulator,
    feature_id: int,
    reference: CorpusReference | None,
    rule: FirstTokenRule,
) -> tuple[bool, str | None, FirstTokenEvidence]:
    """(verdict, where it came from, the prompt set's evidence)."""
    state = acc.features[feature_id]
    evidence = FirstTokenEvidence(
        n_texts=acc.n_first,
        first_fires=state.first_fires,
        first_mass=state.first_mass,
        total_mass=state.total_mass,
        content_fires=sum(c.tokens for c in state.by_set.values()),
    )
    if reference is not None and reference.first_token_rule is not None:
        # The corpus verdict, when the SAE has one, is the only one: on prompts the first
        # token is always a sentence start, which many content features like.
        return (
            (True, "corpus", evidence)
            if feature_id in reference.first_token
            else (
                False,
                None,
                evidence,
            )
        )
    if is_first_token_feature(evidence, rule):
        return True, "prompts", evidence
    return False, None, evidence


def feature_stats(
    acc: FeatureAccumulator,
    feature_id: int,
    reference: CorpusReference | None,
    settings: SummarySettings,
) -> dict[str, Any]:
    state = acc.features[feature_id]
    main = set_stats(state.by_set.get(MAIN_SET), acc.n_tokens[MAIN_SET], acc.n_prompts[MAIN_SET])
    verdict, source, evidence = first_token_verdict(
        acc, feature_id, reference, settings.first_token_rule
    )
    stats: dict[str, Any] = {
        "id": feature_id,
        **main,
        "importance": (state.by_set[MAIN_SET].activation_sum / acc.n_tokens[MAIN_SET])
        if MAIN_SET in state.by_set and acc.n_tokens[MAIN_SET]
        else 0.0,
        "dense": main["frequency"] > settings.ranking.max_token_frequency,
        "first_token": verdict,
        "first_token_source": source,
        "first_token_evidence": evidence.to_dict(),
        "top_tokens": top_tokens(state, settings.top_tokens_per_feature),
        "histogram": log2_histogram(state),
    }
    if acc.n_prompts[CONTRAST_SET]:
        stats["contrast"] = set_stats(
            state.by_set.get(CONTRAST_SET), acc.n_tokens[CONTRAST_SET], acc.n_prompts[CONTRAST_SET]
        )
    return stats


def prompt_quality(quality: QualitySums) -> dict[str, Any]:
    """The SAE's explained variance and CE loss recovered on the prompts themselves."""
    out: dict[str, Any] = {
        "n_tokens": quality.n,
        "explained_variance": None,
        "ce_loss_recovered": None,
        "ce_reason": None,
    }
    if quality.n and quality.total is not None:
        centred = quality.sq_norm - sum(v * v for v in quality.total) / quality.n
        if centred > 0:
            out["explained_variance"] = 1.0 - quality.sq_err / centred
    if quality.ce_records and quality.ce_n:
        span = quality.ce_zero - quality.ce_clean
        out["ce_loss_recovered"] = (quality.ce_zero - quality.ce_spliced) / span if span else None
        out["ce_loss_clean"] = quality.ce_clean / quality.ce_n
        out["ce_loss_spliced"] = quality.ce_spliced / quality.ce_n
        out["ce_n_predictions"] = quality.ce_n
    else:
        out["ce_reason"] = (
            "not measured: ce_loss_on_prompts is off for this run (three extra forward "
            "passes; on by default for sets of up to 2,000 prompts)"
            if quality.records
            else "no extraction records"
        )
    if out["explained_variance"] is None and not quality.n:
        out["ev_reason"] = "the extraction did not report reconstruction sums (an older worker)"
    return out


@dataclass
class _Views:
    """The ranked views: the default one, both lists and the ids each reports."""

    method: str
    fallback: str | None
    default_view: list[dict[str, Any]]
    active: list[dict[str, Any]]
    specific_ids: list[int]
    active_ids: list[int]


def summarize(
    acc: FeatureAccumulator,
    reference: CorpusReference | None,
    settings: SummarySettings | None = None,
) -> dict[str, Any]:
    """The body of aggregate.json (without bundles and labelling choices)."""
    settings = settings or SummarySettings()
    if acc.n_prompts[MAIN_SET] == 0:
        raise ExtractionFailed("extraction produced no records for the main prompt set")
    ranking = settings.ranking
    min_prompts = min(ranking.min_prompts, acc.n_prompts[MAIN_SET])
    stats = {fid: feature_stats(acc, fid, reference, settings) for fid in acc.features}
    views = _rank(acc, stats, reference, ranking, min_prompts)
    contrast = _contrast_with_specificity(acc, stats, reference, settings)
    reported = _reported(views, contrast, settings)
    ordered = sorted(
        stats.values(),
        key=lambda s: (s.get("rank") is None, s.get("rank") or 0, s["id"]),
    )
    _drop_unshown_detail(ordered, set(reported) | _detailed(views, contrast))
    first_token_ids = sorted(
        (fid for fid, s in stats.items() if s["first_token"]),
        key=lambda f: (-acc.features[f].first_fires, f),
    )
    return {
        "n_prompts": acc.n_prompts[MAIN_SET],
        "n_tokens": acc.n_tokens[MAIN_SET] + acc.n_prompts[MAIN_SET],
        "n_content_tokens": acc.n_tokens[MAIN_SET],
        "n_contrast_prompts": acc.n_prompts[CONTRAST_SET],
        "n_contrast_tokens": acc.n_tokens[CONTRAST_SET] + acc.n_prompts[CONTRAST_SET],
        "n_features_seen": len(stats),
        "n_ranked": len({s["id"] for s in views.default_view} | {s["id"] for s in views.active}),
        "ranking": {
            "method": views.method,
            "description": _describe(views.method, ranking, min_prompts),
            "active_description": ACTIVITY_DESCRIPTION.format(max_freq=ranking.max_token_frequency),
            "fallback": views.fallback,
            "reference": reference.describe() if reference is not None else None,
            "min_prompts": min_prompts,
            "views": {"specific": views.specific_ids, "active": views.active_ids},
        },
        "first_token": {
            "rule": settings.first_token_rule.describe(),
            "corpus_rule": reference.first_token_rule if reference is not None else None,
            "features": first_token_ids,
        },
        "features": ordered,
        "reported": reported,
        "contrast": contrast,
        "prompt_quality": prompt_quality(acc.quality),
    }


def _rank(
    acc: FeatureAccumulator,
    stats: Mapping[int, dict[str, Any]],
    reference: CorpusReference | None,
    ranking: RankingSettings,
    min_prompts: int,
) -> _Views:
    """Rank by specificity against the corpus reference (by activity without one); sets
    each feature's ``rank`` (default view) and ``active_rank``."""
    main_stats = [s for s in stats.values() if s["token_count"] > 0]
    active = rank_by_activity(main_stats, min_prompts, ranking.max_token_frequency)
    active_ids = [s["id"] for s in active[: ranking.active_features]]
    for rank, s in enumerate(active, start=1):
        s["active_rank"] = rank
    if reference is None:
        for rank, s in enumerate(active, start=1):
            s["rank"] = rank
        return _Views(
            method=ACTIVITY,
            fallback=(
                "the SAE carries no reference-corpus statistics (feature_summary.json or "
                "feature_data.jsonl), so specificity cannot be computed: features are ranked "
                "by activity"
            ),
            default_view=active,
            active=active,
            # The one view there is fills the report's main list.
            specific_ids=[
                s["id"] for s in active[: max(ranking.top_k_features, ranking.active_features)]
            ],
            active_ids=[],
        )
    score_specificity(main_stats, reference, acc.positions[MAIN_SET], ranking)
    specific = rank_by_specificity(main_stats, min_prompts, ranking.min_specificity)
    for rank, s in enumerate(specific, start=1):
        s["rank"] = rank
    return _Views(
        method=SPECIFICITY,
        fallback=None,
        default_view=specific,
        active=active,
        specific_ids=[s["id"] for s in specific[: ranking.top_k_features]],
        active_ids=active_ids,
    )


def _contrast_with_specificity(
    acc: FeatureAccumulator,
    stats: dict[int, dict[str, Any]],
    reference: CorpusReference | None,
    settings: SummarySettings,
) -> dict[str, Any] | None:
    """The contrast table, after scoring each feature's specificity on the contrast set
    too (the table orders topical differences before stylistic ones)."""
    if not acc.n_prompts[CONTRAST_SET]:
        return None
    if reference is not None:
        contrast_side = [s["contrast"] | {"id": s["id"]} for s in stats.values()]
        score_specificity(
            [c for c in contrast_side if c["token_count"]],
            reference,
            acc.positions[CONTRAST_SET],
            settings.ranking,
        )
        for c in contrast_side:
            stats[c["id"]]["contrast"]["specificity"] = c.get("specificity")
    return _contrast(acc, stats, settings)


def _reported(
    views: _Views, contrast: dict[str, Any] | None, settings: SummarySettings
) -> list[int]:
    """Report (and label, in this order, as far as the budget goes): the first half of the
    specific view, the significant contrast features of each side, the rest of the
    specific view, the active view. A contrast's features then carry labels too."""
    contrast_ids: list[int] = []
    if contrast is not None:
        for side in ("more_in_main", "more_in_contrast"):
            significant = [r["id"] for r in contrast[side] if r["significant"]]
            contrast_ids += significant[: settings.contrast_rows_reported]
    specific = views.specific_ids
    half = (len(specific) + 1) // 2
    return list(dict.fromkeys(specific[:half] + contrast_ids + specific[half:] + views.active_ids))


def _detailed(views: _Views, contrast: dict[str, Any] | None) -> set[int]:
    """Features whose top tokens and histogram the report may show."""
    keep = {s["id"] for s in views.default_view[:200]}
    if contrast is not None:
        keep |= {r["id"] for side in ("more_in_main", "more_in_contrast") for r in contrast[side]}
    return keep


def _drop_unshown_detail(ordered: list[dict[str, Any]], keep: set[int]) -> None:
    for s in ordered:
        if s["id"] not in keep:
            s.pop("top_tokens", None)
            s.pop("histogram", None)


def _describe(method: str, ranking: RankingSettings, min_prompts: int) -> str:
    if method == SPECIFICITY:
        return SPECIFICITY_DESCRIPTION.format(
            floor=ranking.strength_floor,
            cap=ranking.strength_cap,
            min_prompts=min_prompts,
            min_spec=ranking.min_specificity,
        )
    return ACTIVITY_DESCRIPTION.format(max_freq=ranking.max_token_frequency)


def _contrast(
    acc: FeatureAccumulator, stats: Mapping[int, dict[str, Any]], settings: SummarySettings
) -> dict[str, Any]:
    counts = [
        PromptCounts(
            fid,
            acc.features[fid].by_set.get(MAIN_SET, SetCounts()).prompts,
            acc.features[fid].by_set.get(CONTRAST_SET, SetCounts()).prompts,
            s.get("specificity"),
            (s.get("contrast") or {}).get("specificity"),
        )
        for fid, s in stats.items()
        if not s["first_token"]
    ]
    table = contrast_table(
        counts, acc.n_prompts[MAIN_SET], acc.n_prompts[CONTRAST_SET], settings.contrast
    )
    annotate(table["more_in_main"] + table["more_in_contrast"], stats)
    table["n_tokens"] = {"main": acc.n_tokens[MAIN_SET], "contrast": acc.n_tokens[CONTRAST_SET]}
    return table
