"""summarize(): the body of aggregate.json from an accumulator and the corpus reference."""

from __future__ import annotations

import pytest

from saeflow.core.aggregation.accumulator import FeatureAccumulator, QualitySums
from saeflow.core.aggregation.ranking import RankingSettings
from saeflow.core.aggregation.reference import CorpusReference, reference_from_feature_data
from saeflow.core.aggregation.summary import SummarySettings, prompt_quality, summarize

TOPIC, COMMON, POSITION, ONCE, COOKING = 100, 200, 300, 400, 500


def tok(text: str, **features: float) -> dict:
    return {
        "text": text,
        "features": [{"id": int(k[1:]), "activation": v} for k, v in features.items()],
    }


def pet_prompt(i: int) -> dict:
    tokens = [
        tok(f"P{i}", f300=50.0),  # the first real token: the position feature fires hard
        tok(" my", **({"f400": 3.0} if i == 0 else {})),
        tok(" cat" if i % 2 else " kitten", f100=8.0 + i / 10),
        tok(" sleeps", f300=2.0),
        tok(" the", f200=1.0),
        tok(" end", f200=1.0),
    ]
    return {"id": f"pets-{i:02d}", "tokens": tokens, "error": None}


def cooking_prompt(i: int) -> dict:
    tokens = [tok(f"C{i}", f300=50.0), tok(" boil", f500=6.0), tok(" the", f200=1.0), tok(" water")]
    return {"id": f"cook-{i:02d}", "set": "contrast", "tokens": tokens, "error": None}


def accumulate(n_main: int = 16, n_contrast: int = 8, quality: bool = False):
    acc = FeatureAccumulator()
    records = [pet_prompt(i) for i in range(n_main)]
    if quality:
        records[0]["quality"] = {"n": 3, "sq_err": 2.0, "sq_norm": 50.0, "sum": [3.0, 0.0]}
        records[0]["ce"] = {"n": 10, "clean": 20.0, "spliced": 22.0, "zero": 60.0}
        records[1]["quality"] = {"n": 2, "sq_err": 1.0, "sq_norm": 30.0, "sum": [1.0, 4.0]}
        records[1]["ce"] = {"n": 5, "clean": 10.0, "spliced": 12.0, "zero": 40.0}
    acc.add_all(records)
    acc.add_all(cooking_prompt(i) for i in range(n_contrast))
    return acc


REFERENCE = CorpusReference(
    n_tokens=100_000,
    fire_counts={TOPIC: 10.0, COMMON: 45_000.0, POSITION: 5000.0, COOKING: 10.0},
    mean_activation={TOPIC: 8.0, COMMON: 1.0, POSITION: 2.0, COOKING: 6.0},
    first_token=frozenset({POSITION}),
    first_token_rule="the corpus rule",
)


def by_id(body: dict) -> dict[int, dict]:
    return {s["id"]: s for s in body["features"]}


def test_every_field_of_the_body_is_there():
    body = summarize(accumulate(quality=True), REFERENCE)
    assert set(body) == {
        "n_prompts",
        "n_tokens",
        "n_content_tokens",
        "n_contrast_prompts",
        "n_contrast_tokens",
        "n_features_seen",
        "n_ranked",
        "ranking",
        "first_token",
        "features",
        "reported",
        "contrast",
        "prompt_quality",
    }
    assert set(body["ranking"]) == {
        "method",
        "description",
        "active_description",
        "fallback",
        "reference",
        "min_prompts",
        "views",
    }
    assert set(body["ranking"]["views"]) == {"specific", "active"}
    assert set(body["first_token"]) == {"rule", "corpus_rule", "features"}
    topic = by_id(body)[TOPIC]
    assert {
        "id",
        "token_count",
        "prompt_count",
        "frequency",
        "prompt_frequency",
        "mean_activation",
        "max_activation",
        "importance",
        "dense",
        "first_token",
        "first_token_source",
        "first_token_evidence",
        "top_tokens",
        "histogram",
        "contrast",
        "expected_count",
        "corpus_density",
        "specificity",
        "strength_weight",
        "specificity_score",
        "rank",
        "active_rank",
    } <= set(topic)
    assert set(body["prompt_quality"]) >= {
        "n_tokens",
        "explained_variance",
        "ce_loss_recovered",
        "ce_reason",
    }


def test_counts_and_the_specificity_ranking():
    body = summarize(accumulate(), REFERENCE)
    assert (body["n_prompts"], body["n_content_tokens"], body["n_tokens"]) == (16, 80, 96)
    assert (body["n_contrast_prompts"], body["n_contrast_tokens"]) == (8, 32)
    assert body["n_features_seen"] == 5
    ranking = body["ranking"]
    assert ranking["method"] == "specificity" and ranking["fallback"] is None
    assert ranking["reference"]["n_first_token_features"] == 1
    assert ranking["min_prompts"] == 2
    # COMMON is less frequent than the corpus predicts, POSITION is a first-token feature,
    # ONCE fires in one prompt, COOKING never in the main set: only TOPIC ranks.
    assert ranking["views"] == {"specific": [TOPIC], "active": [TOPIC]}
    assert body["n_ranked"] == 1
    topic = by_id(body)[TOPIC]
    assert (topic["token_count"], topic["prompt_count"]) == (16, 16)
    assert topic["frequency"] == pytest.approx(16 / 80)
    assert topic["mean_activation"] == pytest.approx(8.75)
    assert topic["importance"] == pytest.approx(16 * 8.75 / 80)
    assert topic["expected_count"] == pytest.approx(80 * 10.5 / 100_001)
    assert topic["strength_weight"] == 1.0  # 8.75 / 8 capped at 1
    assert topic["rank"] == 1 and topic["active_rank"] == 1
    common = by_id(body)[COMMON]
    assert common["dense"] is True and common["specificity"] < 0 and "rank" not in common
    assert [s["id"] for s in body["features"]] == [TOPIC, COMMON, POSITION, ONCE, COOKING]


def test_first_token_feature_from_the_corpus_verdict():
    body = summarize(accumulate(), REFERENCE)
    position = by_id(body)[POSITION]
    assert position["first_token"] is True and position["first_token_source"] == "corpus"
    assert "rank" not in position and "active_rank" not in position
    assert body["first_token"]["features"] == [POSITION]
    assert body["first_token"]["corpus_rule"] == "the corpus rule"
    evidence = position["first_token_evidence"]
    # 24 texts (main and contrast) with a first token, all fired on; 16 weak content fires
    assert evidence == {
        "n_texts": 24,
        "first_fires": 24,
        "fire_rate": 1.0,
        "mass_share": round(1200 / 1232, 4),
        "intensity_ratio": 25.0,
    }
    # The corpus verdict is the only one: a feature it clears is not judged on the prompts.
    cleared = CorpusReference(
        n_tokens=100_000,
        fire_counts=dict(REFERENCE.fire_counts),
        first_token=frozenset(),
        first_token_rule="the corpus rule",
    )
    assert by_id(summarize(accumulate(), cleared))[POSITION]["first_token"] is False


def test_first_token_feature_from_the_prompts_without_a_corpus_verdict():
    body = summarize(accumulate(), None)
    position = by_id(body)[POSITION]
    assert position["first_token"] is True and position["first_token_source"] == "prompts"
    assert body["first_token"]["features"] == [POSITION]
    # Too few texts for the rule (min 16): no verdict.
    few = summarize(accumulate(n_main=6, n_contrast=4), None)
    assert by_id(few)[POSITION]["first_token"] is False


def test_first_token_verdict_from_feature_data_lines_is_used():
    lines = [
        {"id": TOPIC, "density": 0.0001, "first_token": {"is_first_token": True}},
        {"id": COMMON, "density": 0.45},
    ]
    reference = reference_from_feature_data(lines, n_tokens=100_000)
    assert reference is not None and TOPIC in reference.first_token
    assert by_id(summarize(accumulate(), reference))[TOPIC]["first_token"] is True


def test_without_a_reference_the_ranking_falls_back_to_activity_and_says_why():
    body = summarize(accumulate(), None)
    ranking = body["ranking"]
    assert ranking["method"] == "activity"
    assert "no reference-corpus statistics" in ranking["fallback"]
    assert ranking["reference"] is None
    assert ranking["views"] == {"specific": [TOPIC], "active": []}
    topic = by_id(body)[TOPIC]
    assert topic["rank"] == 1 and "specificity" not in topic
    assert body["first_token"]["corpus_rule"] is None


def test_contrast_section_and_reported_features():
    body = summarize(accumulate(), REFERENCE)
    contrast = body["contrast"]
    assert contrast["n_prompts"] == {"main": 16, "contrast": 8}
    assert contrast["n_tokens"] == {"main": 80, "contrast": 24}
    assert [r["id"] for r in contrast["more_in_main"]] == [TOPIC]
    assert [r["id"] for r in contrast["more_in_contrast"]] == [COOKING]
    assert contrast["n_significant"] == {"more_in_main": 1, "more_in_contrast": 1}
    # POSITION is left out; ONCE (one prompt) and COMMON (every prompt: one possible
    # table) cannot reach the level.
    assert contrast["n_tested"] == 2 and contrast["n_untestable"] == 2
    cooking = contrast["more_in_contrast"][0]
    assert cooking["contrast_frequency"] == pytest.approx(8 / 24)
    assert cooking["main_frequency"] == 0.0
    assert cooking["side_specificity"] > 0  # its specificity on the contrast prompts
    assert body["reported"] == [TOPIC, COOKING]
    # Detail (tokens, histogram) only for what the report shows.
    stats = by_id(body)
    assert "top_tokens" in stats[TOPIC] and "top_tokens" in stats[COOKING]
    assert "top_tokens" not in stats[COMMON] and "histogram" not in stats[ONCE]
    assert stats[TOPIC]["top_tokens"][0]["token"] == " cat"  # stronger on odd prompts
    assert {t["token"] for t in stats[TOPIC]["top_tokens"]} == {" cat", " kitten"}


def test_no_contrast_set_gives_a_null_contrast():
    body = summarize(accumulate(n_contrast=0), REFERENCE)
    assert body["contrast"] is None and body["n_contrast_prompts"] == 0
    assert "contrast" not in by_id(body)[TOPIC]


def test_min_prompts_shrinks_to_the_number_of_prompts():
    # One firing in one prompt: log2(2 / ~1) is just under the default 2x threshold.
    settings = SummarySettings(ranking=RankingSettings(min_specificity=0.5))
    body = summarize(accumulate(n_main=1, n_contrast=0), REFERENCE, settings)
    assert body["ranking"]["min_prompts"] == 1
    assert TOPIC in body["ranking"]["views"]["specific"]


def test_prompt_quality_by_hand():
    body = summarize(accumulate(quality=True), REFERENCE)
    quality = body["prompt_quality"]
    # sums: n 5, sq_err 3, sq_norm 80, sum [4, 4] -> centred 80 - 32 / 5 = 73.6
    assert quality["n_tokens"] == 5
    assert quality["explained_variance"] == pytest.approx(1 - 3 / 73.6)
    # clean 30, spliced 34, zero 100 over 15 predictions
    assert quality["ce_loss_recovered"] == pytest.approx((100 - 34) / (100 - 30))
    assert quality["ce_loss_clean"] == pytest.approx(2.0)
    assert quality["ce_loss_spliced"] == pytest.approx(34 / 15)
    assert quality["ce_n_predictions"] == 15
    assert quality["ce_reason"] is None


def test_prompt_quality_without_sums_says_why():
    quality = summarize(accumulate(), REFERENCE)["prompt_quality"]
    assert quality["explained_variance"] is None and quality["ce_loss_recovered"] is None
    assert "not measured" in quality["ce_reason"]
    assert "did not report reconstruction sums" in quality["ev_reason"]
    empty = prompt_quality(QualitySums())
    assert empty["ce_reason"] == "no extraction records"


def test_prompt_quality_ev_only_and_a_flat_ce():
    sums = QualitySums()
    sums.add({"n": 4, "sq_err": 0.5, "sq_norm": 10.0, "sum": [2.0]}, None)
    sums.add(None, {"n": 3, "clean": 6.0, "spliced": 6.0, "zero": 6.0})
    out = prompt_quality(sums)
    assert out["explained_variance"] == pytest.approx(1 - 0.5 / (10 - 4 / 4))
    assert out["ce_loss_recovered"] is None  # zero-ablation as good as clean: undefined
    assert out["ce_n_predictions"] == 3
