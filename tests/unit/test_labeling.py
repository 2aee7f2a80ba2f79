"""Labelling: prompts, answer validation, scoring, the offline heuristic, the LLM flow."""

from __future__ import annotations

import json

import pytest

from saeflow.core.errors import LabelerError
from saeflow.core.labeling.examples import split_examples
from saeflow.core.labeling.label import (
    as_reused,
    label_heuristically,
    label_with_llm,
    reusable,
)
from saeflow.core.labeling.offline import OFFLINE_SOURCE
from saeflow.core.labeling.pricing import estimate_usd, price_per_million, usd_per_feature
from saeflow.core.labeling.prompts import (
    Explanation,
    build_explanation_prompt,
    build_scoring_prompt,
    parse_explanation,
    parse_predictions,
)
from saeflow.core.labeling.scoring import pearson, score_predictions
from saeflow.ports import Completion


def window(words: list[str], hot: dict[int, float]) -> dict:
    acts = [hot.get(i, 0.0) for i in range(len(words))]
    return {"tokens": words, "activations": acts, "max": max(acts)}


CITY_EXAMPLES = [
    window(["I", " flew", " to", " Paris"], {3: 9.0}),
    window(["The", " capital", " is", " London"], {3: 8.0}),
    window(["A", " walk", " in", " Paris"], {3: 7.5}),
    window(["We", " met", " in", " Tokyo"], {3: 7.0}),
    window(["Rain", " in", " London", " again"], {2: 6.0}),
    window(["Trains", " to", " Paris", " run"], {2: 5.5}),
    window(["Flights", " to", " Tokyo", " today"], {2: 5.0}),
    window(["Tea", " in", " London"], {2: 4.0}),
    window(["Sushi", " in", " Tokyo"], {2: 3.0}),
]
BUNDLE = {
    "feature_id": 7,
    "sae_id": "saes/m/h/abc",
    "run_id": "demo-000000000000",
    "stats": {"id": 7, "top_tokens": [{"token": " Paris", "count": 3, "mean_activation": 7.0}]},
    "prompt_examples": CITY_EXAMPLES,
    "random_windows": [
        window(["Nothing", " here", " at", " all"], {}),
        window(["Numbers", " 1", " 2", " 3"], {}),
        window(["The", " cat", " sat"], {}),
    ],
    "corpus": {"promoted_tokens": [{"token": " France", "logit": 1.5}], "random_examples": []},
}


class ScriptedLabeler:
    """A Labeler whose answers are scripted; records the prompts it got."""

    name = "test:scripted"

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.prompts: list[tuple[str, str]] = []

    def complete(self, system: str, prompt: str, *, max_tokens: int) -> Completion:
        self.prompts.append((system, prompt))
        return Completion(self.answers.pop(0), "anthropic.claude-3-5-haiku-20241022-v1:0", 1000, 50)


def test_split_holds_out_every_third_top_example_plus_negatives():
    split = split_examples(BUNDLE)
    explained = {"".join(e["tokens"]) for e in split.explain}
    held = {"".join(e["tokens"]) for e in split.held_out}
    assert not explained & held
    assert len(split.explain) == 6
    assert "The capital is London" in explained and "A walk in Paris" in held
    assert "Nothing here at all" in held  # a negative: true activation 0


def test_explanation_prompt_marks_activating_tokens_and_scales_to_ten():
    system, prompt = build_explanation_prompt(
        7, CITY_EXAMPLES[:2], promoted_tokens=[{"token": " France"}]
    )
    assert "JSON" in system
    assert "I flew to<< Paris>>" in prompt
    assert '" Paris"=10' in prompt and '" London"=9' in prompt
    assert '" France"' in prompt
    with pytest.raises(LabelerError):
        build_explanation_prompt(7, [])


def test_parse_explanation_is_tolerant_of_fences_and_strict_on_content():
    text = 'Sure!\n```json\n{"label": "  city   names ", "explanation": "Fires on cities.", "confidence": "HIGH"}\n```'
    parsed = parse_explanation(text)
    assert parsed == Explanation("city names", "Fires on cities.", "high")
    assert parse_explanation('{"label": "x", "confidence": "sure"}').confidence is None
    long = parse_explanation(json.dumps({"label": "y" * 200, "explanation": "z"}))
    assert len(long.label) == 80
    for bad in ("no json here", '{"label": ""}', '{"label": 5}', "[1, 2]"):
        with pytest.raises(LabelerError):
            parse_explanation(bad)


def test_parse_predictions_validates_every_excerpt():
    good = '{"predictions": [{"excerpt": 2, "activation": 3}, {"excerpt": 1, "activation": 12}]}'
    assert parse_predictions(good, 2) == [10.0, 3.0]  # clamped and re-ordered
    assert parse_predictions('{"predictions": [1, 2.5]}', 2) == [1.0, 2.5]
    for bad in (
        '{"predictions": [1]}',
        '{"predictions": ["a", 1]}',
        '{"predictions": [{"excerpt": 9, "activation": 1}, 1]}',
        "{}",
    ):
        with pytest.raises(LabelerError):
            parse_predictions(bad, 2)
    _, prompt = build_scoring_prompt(Explanation("c", "cities", None), CITY_EXAMPLES[:2])
    assert 'Excerpt 2: "The capital is London"' in prompt and "<<" not in prompt


def test_pearson_and_unscorable_cases():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert score_predictions([1, 2], [1, 2], "m").reason.startswith("only 2")
    assert score_predictions([1, 2, 3], [5, 5, 5], "m").value is None
    constant = score_predictions([4, 4, 4], [1, 2, 3], "m")
    assert constant.value is None and "same value" in constant.reason


def test_offline_label_says_it_is_heuristic_and_scores_honestly():
    record = label_heuristically(BUNDLE)
    assert record["label_source"] == OFFLINE_SOURCE
    assert record["label"].startswith("[heuristic]")
    assert "' Paris'" in record["label"] and "' London'" in record["label"]
    assert "no language model" in record["explanation"]
    assert "' France'" in record["explanation"]
    assert record["score_method"].startswith("offline heuristic")
    assert record["score"] is not None and record["score"] > 0.5  # city tokens predict firing
    assert record["usage"]["requests"] == 0


def test_offline_score_is_null_when_its_tokens_never_occur_in_held_out_examples():
    # Held out: only Tokyo examples, which the explained (Paris/London) tokens never match.
    examples = [ex for ex in CITY_EXAMPLES if "Tokyo" not in "".join(ex["tokens"])][:6]
    tokyo = [ex for ex in CITY_EXAMPLES if "Tokyo" in "".join(ex["tokens"])]
    ordered = [examples[0], examples[1], tokyo[0], examples[2], examples[3], tokyo[1]]
    for rank, ex in enumerate(ordered):
        ex = dict(ex, max=10.0 - rank)
        ordered[rank] = ex
    record = label_heuristically(
        dict(BUNDLE, prompt_examples=ordered, random_windows=BUNDLE["random_windows"])
    )
    assert record["score"] is None and "same value" in record["score_reason"]


def test_offline_score_is_null_with_reason_when_held_out_set_is_flat():
    flat = dict(BUNDLE, prompt_examples=CITY_EXAMPLES[:2], random_windows=[])
    record = label_heuristically(flat)
    assert record["score"] is None and "held-out" in record["score_reason"]


def test_llm_flow_explains_scores_and_counts_usage():
    n_held = len(split_examples(BUNDLE).held_out)
    predictions = [{"excerpt": i + 1, "activation": 0} for i in range(n_held)]
    predictions[0]["activation"] = 9  # the held-out top example
    labeler = ScriptedLabeler(
        [
            "not json at all",  # rejected, retried once with a reminder
            '{"label": "city names", "explanation": "Capital cities.", "confidence": "medium"}',
            json.dumps({"predictions": predictions}),
        ]
    )
    record = label_with_llm(BUNDLE, labeler)
    assert record["label"] == "city names" and record["label_source"] == "test:scripted"
    assert record["score"] is not None and record["score"] > 0.5
    assert record["usage"] == {
        "input_tokens": 3000,
        "output_tokens": 150,
        "requests": 3,
        "model_id": "anthropic.claude-3-5-haiku-20241022-v1:0",
    }
    assert "previous answer was not valid" in labeler.prompts[1][1]


def test_llm_flow_falls_back_to_the_heuristic_after_repeated_bad_answers():
    record = label_with_llm(BUNDLE, ScriptedLabeler(["nope", "still nope"]))
    assert record["label_source"] == OFFLINE_SOURCE and record["label"].startswith("[heuristic]")
    assert "test:scripted gave no usable answer" in record["fallback_reason"]
    assert record["usage"]["requests"] == 2  # what the failed attempts cost is still counted


def test_unusable_predictions_give_a_null_score_with_reason():
    labeler = ScriptedLabeler(['{"label": "cities"}', "garbage", "more garbage"])
    record = label_with_llm(BUNDLE, labeler)
    assert record["label"] == "cities" and record["score"] is None
    assert record["score_reason"].startswith("no usable predictions")
    assert record["usage"]["requests"] == 3


def test_service_errors_propagate():
    class Broken(ScriptedLabeler):
        def complete(self, system, prompt, *, max_tokens):
            raise LabelerError("AccessDeniedException")

    with pytest.raises(LabelerError, match="AccessDenied"):
        label_with_llm(BUNDLE, Broken([]))


def test_registry_reuse_rules():
    heuristic = {"label": "[heuristic] x", "label_source": OFFLINE_SOURCE}
    llm = {"label": "cities", "label_source": "bedrock:m", "usage": {"requests": 2}}
    assert reusable(llm, want_llm=True) and reusable(llm, want_llm=False)
    assert reusable(heuristic, want_llm=False)
    assert not reusable(heuristic, want_llm=True)
    assert not reusable(None, want_llm=False)
    reused = as_reused(llm, 7)
    assert reused["reused"] is True and reused["usage"]["requests"] == 0


def test_price_table():
    assert price_per_million("anthropic.claude-3-5-haiku-20241022-v1:0")[0] == (0.8, 4.0)
    assert price_per_million("us.anthropic.claude-sonnet-4-20250514-v1:0")[0] == (3.0, 15.0)
    assert "unknown" in price_per_million("mystery-model")[1]
    assert price_per_million(None)[0] == (0.0, 0.0)
    assert estimate_usd("claude-3-haiku-20240307", 1_000_000, 1_000_000) == pytest.approx(1.5)
    assert usd_per_feature("anthropic.claude-3-5-sonnet") > usd_per_feature("claude-3-haiku")
