"""Held-out split, detection scores and the shuffled baseline, the offline labeller."""

from __future__ import annotations

import pytest

from saeflow.core.aggregation.bundles import attach_baselines
from saeflow.core.labeling.detection import (
    MIN_PER_CLASS,
    baseline_partners,
    detection_score,
    summarize,
)
from saeflow.core.labeling.examples import SplitSettings, example_text, split_examples
from saeflow.core.labeling.label import label_heuristically
from saeflow.core.labeling.offline import (
    OFFLINE_SOURCE,
    heuristic_predictions,
    offline_explanation,
    strongest_tokens,
)
from saeflow.core.stats import balanced_accuracy


def window(text: str, hot: dict[int, float] | None = None) -> dict:
    """A window from a space-separated text; ``hot`` maps token index -> activation."""
    words = text.split(" ")
    tokens = [words[0]] + [" " + w for w in words[1:]]
    acts = [(hot or {}).get(i, 0.0) for i in range(len(tokens))]
    return {"tokens": tokens, "activations": acts, "max": max(acts)}


def texts(examples: list[dict]) -> list[str]:
    return [example_text(e) for e in examples]


# --- split_examples ---------------------------------------------------------------

PET_TOPS = [
    window("My cat sleeps", {1: 9.0}),
    window("The kitten plays", {1: 8.5}),
    window("A puppy barks", {1: 8.0}),
    window("Our dog runs", {1: 7.5}),
    window("Two cats purr", {1: 7.0}),
    window("The dog sleeps", {1: 6.0}),
    window("A cat naps", {1: 5.0}),
    window("My puppy eats", {1: 4.0}),
]
PET_SAMPLES = [
    window("the old dog waits", {2: 2.0}),
    window("a kitten in the box", {1: 3.0}),
    window("cats and dogs", {0: 1.0, 2: 1.5}),
    window("My cat sleeps", {1: 9.0}),  # the same text as an explain example: dropped
]
KITCHEN_NEGATIVES = [
    window("Boil the pasta"),
    window("Stir the sauce"),
    window("Add salt now"),
    window("Slice two onions"),
    window("Whisk the eggs", {1: 0.5}),  # the feature fires: not a negative
]
CORPUS_NEGATIVES = [window("Stock prices fell"), window("Rain again today"), window("Vote early")]
PET_BUNDLE = {
    "feature_id": 7,
    "sae_id": "saes/m/h/abc",
    "stats": {
        "top_tokens": [
            {"token": " cat", "count": 3, "mean_activation": 9.0},
            {"token": " cats", "count": 1, "mean_activation": 9.5},
            {"token": " kitten", "count": 1, "mean_activation": 8.5},
            {"token": " puppy", "count": 2, "mean_activation": 8.0},
            {"token": " dog", "count": 2, "mean_activation": 7.0},
            {"token": " the", "count": 2, "mean_activation": 1.0},
        ]
    },
    "prompt_examples": PET_TOPS,
    "prompt_samples": PET_SAMPLES,
    "random_windows": KITCHEN_NEGATIVES,
    "corpus": {
        "top_examples": [window("a Cat here", {1: 6.5})],
        "random_examples": [window("my dogs bark", {1: 2.5})],
        "promoted_tokens": [{"token": " pets"}, {"token": " vet"}],
    },
    "corpus_negatives": CORPUS_NEGATIVES,
}


def test_split_holds_out_every_fourth_top_example_and_samples():
    split = split_examples(PET_BUNDLE)
    # tops by activation: cat 9, kitten 8.5, puppy 8, dog 7.5, cats 7, Cat(corpus) 6.5,
    # dog 6, cat 5, puppy 4: indices 1 and 5 are held out.
    assert texts(split.explain) == [
        "My cat sleeps",
        "A puppy barks",
        "Our dog runs",
        "Two cats purr",
        "The dog sleeps",
        "A cat naps",
        "My puppy eats",
    ]
    assert set(texts(split.positives)) == {
        "The kitten plays",
        "a Cat here",
        "the old dog waits",
        "a kitten in the box",
        "cats and dogs",
        "my dogs bark",
    }
    sources = {example_text(e): e["source"] for e in split.positives}
    assert sources["a Cat here"] == "corpus" and sources["my dogs bark"] == "corpus-sample"
    assert sources["the old dog waits"] == "prompt-sample"


def test_held_out_never_shows_an_explain_text_and_is_balanced():
    split = split_examples(PET_BUNDLE)
    held = split.held_out
    assert not set(texts(split.explain)) & set(texts(held))
    assert len(split.negatives) == len(split.positives) == 6
    assert [c["fires"] for c in held] == [True] * 6 + [False] * 6
    # negatives alternate prompt and corpus windows; a firing window is never a negative
    assert texts(split.negatives) == [
        "Boil the pasta",
        "Stock prices fell",
        "Stir the sauce",
        "Rain again today",
        "Add salt now",
        "Vote early",
    ]
    assert all(c["max"] == 0.0 for c in split.negatives)


def test_negatives_never_outnumber_positives():
    few = dict(PET_BUNDLE, prompt_examples=PET_TOPS[:2], prompt_samples=[], corpus={})
    split = split_examples(few)
    assert len(split.positives) == 1  # the 2nd top example
    assert len(split.negatives) == 1
    no_negatives = dict(PET_BUNDLE, random_windows=[], corpus_negatives=[])
    assert split_examples(no_negatives).negatives == []


def test_positives_spread_over_the_activation_range():
    samples = [window(f"sample number {i}", {1: float(i)}) for i in range(1, 31)]
    bundle = {"feature_id": 1, "prompt_samples": samples}
    split = split_examples(bundle, SplitSettings(max_positive=10))
    # 30 sorted by activation, 10 picked at round(i * 29 / 9)
    assert [p["max"] for p in split.positives] == [1, 4, 7, 11, 14, 17, 20, 24, 27, 30]
    assert split.explain == []


# --- detection --------------------------------------------------------------------


def test_detection_score_and_its_reason_when_too_few():
    contexts = [{"fires": True}] * 3 + [{"fires": False}] * 3
    score = detection_score([True, True, False, False, False, True], contexts)
    assert score.balanced_accuracy == pytest.approx((2 / 3 + 2 / 3) / 2)
    truth = [True, True, True, False, False, False]
    assert score.ci95 == balanced_accuracy([True, True, False, False, False, True], truth).ci95
    assert score.to_dict()["n_positive"] == 3 and score.reason is None
    few = detection_score([True, False, False], [{"fires": True}, {"fires": False}, {}])
    assert MIN_PER_CLASS == 2
    assert few.balanced_accuracy is None and few.to_dict() is None
    assert "1 activating, 2 non-activating" in few.reason


def test_baseline_partners_form_a_derangement():
    partners = baseline_partners([5, 9, 2, 7])
    assert partners == {5: 9, 9: 2, 2: 7, 7: 5}
    assert all(fid != partner for fid, partner in partners.items())
    assert sorted(partners.values()) == sorted(partners)
    assert baseline_partners([5]) == {} and baseline_partners([]) == {}


def scored(own: float | None, base: float | None) -> dict:
    return {
        "detection": None if own is None else {"balanced_accuracy": own},
        "baseline": None if base is None else {"balanced_accuracy": base},
    }


def test_run_summary_better_than_shuffled():
    summary = summarize([scored(0.9, 0.5), scored(0.85, 0.55), scored(0.95, 0.45)])
    assert summary["n_scored"] == 3
    assert summary["mean_balanced_accuracy"] == 0.9
    assert summary["baseline_mean_balanced_accuracy"] == 0.5
    assert summary["improvement"] == 0.4
    # diffs 0.4, 0.3, 0.5: sd 0.1, half-width 1.96 * 0.1 / sqrt(3)
    assert summary["improvement_ci95"] == [0.2868, 0.5132]
    assert summary["verdict"].startswith("the labels beat chance")
    assert "+0.40" in summary["verdict"] and "+0.29 to +0.51" in summary["verdict"]


def test_run_summary_worse_and_unclear():
    worse = summarize([scored(0.4, 0.6), scored(0.45, 0.6), scored(0.5, 0.6)])
    assert worse["improvement"] == pytest.approx(-0.15)
    assert worse["verdict"].startswith("the labels do worse than shuffled labels")
    unclear = summarize([scored(0.7, 0.5), scored(0.3, 0.5), scored(0.6, 0.5), scored(0.4, 0.5)])
    assert unclear["improvement"] == 0.0
    assert unclear["verdict"].startswith("the labels do not clearly beat chance")
    single = summarize([scored(0.8, 0.5)])
    assert "too few labels for an interval" in single["verdict"]
    assert single["improvement_ci95"] is None


def test_run_summary_without_pairs_or_scores():
    unpaired = summarize([scored(0.8, None), scored(None, 0.5)])
    assert unpaired["n_scored"] == 1 and unpaired["mean_balanced_accuracy"] == 0.8
    assert unpaired["baseline_mean_balanced_accuracy"] is None
    assert unpaired["verdict"] == "no shuffled baseline (fewer than two labels were scored)"
    nothing = summarize([])
    assert nothing["verdict"] == "no label could be scored"
    assert nothing["mean_balanced_accuracy"] is None and "method" in nothing


# --- the offline labeller ---------------------------------------------------------


def test_strongest_tokens_come_from_the_explain_windows_grouped_by_stem():
    explain = split_examples(PET_BUNDLE).explain
    groups = strongest_tokens(explain)
    # "The kitten plays" (the 2nd strongest) is held out: the label never sees it.
    assert [g.display for g in groups] == ["cat", "puppy", "dog"]
    cat = groups[0]
    assert cat.weight == 9.0 and cat.keys == frozenset({"cat"})  # " cats" stems to "cat"
    # Past the first four, only content words are kept: a weak " the" or "." is cut.
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    many = [window(f"x {w}", {1: 9.0 - i}) for i, w in enumerate(words)]
    many += [window("x the", {1: 2.0}), window("x .", {1: 1.0})]
    assert [g.display for g in strongest_tokens(many)] == words


def test_offline_label_names_the_grouped_tokens_and_says_it_is_heuristic():
    record = label_heuristically(PET_BUNDLE)
    assert record["label"] == "[heuristic] cat / puppy / dog"
    assert record["label_source"] == OFFLINE_SOURCE
    assert "no language model" in record["explanation"]
    assert "' pets'" in record["explanation"]  # promoted tokens
    assert "context" not in record["label"]  # content words need no context word
    assert record["usage"]["requests"] == 0
    # Held out: the kitten windows (the label never saw a kitten: missed), "a Cat here",
    # "the old dog waits", "cats and dogs", "my dogs bark" (caught); no negative has a pet
    # word: TPR 4/6, TNR 1.
    assert record["detection"]["balanced_accuracy"] == pytest.approx((4 / 6 + 1) / 2, abs=1e-4)
    assert (record["detection"]["n_positive"], record["detection"]["n_negative"]) == (6, 6)
    assert record["baseline"] is None


PUNCT_EXAMPLES = [
    window("Mix the flour . Then", {2: 5.0}),
    window("for the recipe , add", {1: 6.0}),
    window("this recipe needs flour .", {4: 4.0}),
    window("recipe : the bowl", {2: 3.0}),
]


def punct_bundle(fid: int = 3) -> dict:
    return {"feature_id": fid, "prompt_examples": PUNCT_EXAMPLES}


def test_a_context_word_only_when_the_tokens_are_function_words_or_punctuation():
    bundle = punct_bundle()
    explain = split_examples(bundle).explain
    # the 2nd strongest ("Mix the flour") is held out; "recipe" is in the other three
    assert texts(explain) == [
        "for the recipe , add",
        "this recipe needs flour .",
        "recipe : the bowl",
    ]
    assert offline_explanation(bundle, explain).label == "[heuristic] the / '.' (context: recipe)"
    # A context word must also be rarer where the feature is silent.
    silent = [window("the recipe book"), window("a recipe card"), window("recipe")]
    assert "context" not in offline_explanation(bundle, explain, silent).label
    # Content tokens need no context word.
    content = [window("for the recipe , add", {2: 6.0}), window("recipe : the bowl", {3: 3.0})]
    assert offline_explanation(bundle, content).label == "[heuristic] recipe / bowl"


def test_no_context_word_unless_two_examples_share_it():
    explain = [window("alpha the beta", {1: 1.0}), window("gamma the delta", {1: 1.0})]
    assert offline_explanation(punct_bundle(), explain).label == "[heuristic] the"


def test_same_strongest_tokens_same_label_different_tokens_different_labels():
    twin = dict(
        PET_BUNDLE,
        feature_id=99,
        prompt_examples=list(reversed(PET_TOPS)),
        prompt_samples=[],
        corpus=dict(PET_BUNDLE["corpus"], random_examples=[]),
    )
    assert label_heuristically(twin)["label"] == label_heuristically(PET_BUNDLE)["label"]
    other = dict(PET_BUNDLE, prompt_examples=[window("Our dog runs", {1: 7.5})], corpus={})
    labels = {label_heuristically(b)["label"] for b in (PET_BUNDLE, other, punct_bundle())}
    assert len(labels) == 3


def test_no_tokens_at_all_is_said_plainly():
    bundle = {"feature_id": 1, "prompt_examples": [window("a b", {1: 1.0})]}
    assert offline_explanation(bundle, []).label == "[heuristic] no clear token"


def test_heuristic_predictions_match_stems_not_substrings():
    groups = strongest_tokens(split_examples(PET_BUNDLE).explain)
    contexts = [
        {"tokens": ["My", " Cat"]},  # case ignored
        {"tokens": ["con", "cat", "enate"]},  # a token equal to "cat" counts
        {"tokens": ["concatenate"]},  # a longer token does not
        {"tokens": [" dogs"]},  # the plural form
        {"tokens": [" puppies"]},  # not a simple suffix: no
        {"tokens": []},
    ]
    assert heuristic_predictions(groups, contexts) == [True, True, False, True, False, False]


COOKING_BUNDLE = {
    "feature_id": 8,
    "stats": {
        "top_tokens": [
            {"token": " boil", "count": 3, "mean_activation": 9.0},
            {"token": " simmer", "count": 2, "mean_activation": 8.0},
        ]
    },
    "prompt_examples": [
        window("Boil the water", {0: 9.0}),
        window("simmer for ten minutes", {0: 8.0}),
        window("then boil again", {1: 7.0}),
        window("let it simmer gently", {2: 6.0}),
        window("bring to a boil", {3: 5.0}),
        window("we boil eggs", {1: 4.0}),
    ],
    "prompt_samples": [window("boil it", {0: 2.0}), window("simmer slowly", {0: 3.0})],
    "random_windows": [
        window("My dog sleeps"),  # a pet word among the cooking negatives
        window("Vote early"),
        window("Rain again today"),
        window("Stock prices fell"),
    ],
}


def test_offline_rule_beats_its_shuffled_baseline_on_clean_bundles():
    bundles = {7: dict(PET_BUNDLE), 8: dict(COOKING_BUNDLE)}
    attach_baselines(bundles, [7, 8])
    assert bundles[7]["baseline"]["feature_id"] == 8 and bundles[8]["baseline"]["feature_id"] == 7
    cooking_held = split_examples(COOKING_BUNDLE).held_out
    assert [(example_text(c), c["fires"]) for c in cooking_held] == [
        ("simmer for ten minutes", True),
        ("we boil eggs", True),
        ("boil it", True),
        ("simmer slowly", True),
        ("My dog sleeps", False),
        ("Vote early", False),
        ("Rain again today", False),
        ("Stock prices fell", False),
    ]
    assert bundles[7]["baseline"]["contexts"] == [
        {k: c[k] for k in ("tokens", "activations", "max", "fires", "source")} for c in cooking_held
    ]
    pets = label_heuristically(bundles[7])
    cooking = label_heuristically(bundles[8])
    # the pet label never saw a kitten (held out): its two kitten contexts are missed
    assert pets["score"] == pytest.approx((4 / 6 + 1) / 2, abs=1e-4) and cooking["score"] == 1.0
    # The pet label on the cooking contexts fires only on "My dog sleeps", a negative:
    # TPR 0/4, TNR 3/4.
    assert pets["baseline"] == {
        "feature_id": 8,
        "balanced_accuracy": 0.375,
        "ci95": pets["baseline"]["ci95"],
        "n_positive": 4,
        "n_negative": 4,
    }
    # The cooking label on the pet contexts fires only on "Boil the pasta", a negative:
    # TPR 0/6, TNR 5/6.
    assert cooking["baseline"]["balanced_accuracy"] == round(5 / 12, 4)
    summary = summarize([pets, cooking])
    assert summary["baseline_mean_balanced_accuracy"] == pytest.approx(
        (0.375 + 0.4167) / 2, abs=1e-4
    )
    own = ((4 / 6 + 1) / 2 + 1) / 2
    assert summary["improvement"] == pytest.approx(own - (0.375 + 0.4167) / 2, abs=1e-3)
    assert summary["verdict"].startswith("the labels beat chance")
