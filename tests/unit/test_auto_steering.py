"""steer: "auto" (the most specific features, strengths in units of their scale) and the
worker's steer records."""

from __future__ import annotations

import pytest

from saeflow.core.errors import InvalidRunOptions
from saeflow.core.options import SteerRequest
from saeflow.core.steering import AutoSteerSettings, auto_steer_requests, steer_records

RANKED = [
    {"id": 41, "corpus_max_activation": 10.0, "max_activation": 3.0},
    {"id": 7, "max_activation": 3.3333},
    {"id": 12, "corpus_max_activation": 0.0, "max_activation": 4.0},
    {"id": 99, "corpus_max_activation": 50.0},
]
PROMPTS = [
    "  The cat sat on the mat.  ",  # 22 chars once stripped
    "Hi there",  # too short
    "Dogs bark loudly.",  # 17
    "Dogs bark loudly.",  # duplicate
    "A much longer prompt about the weather today.",
    "Birds sing early",  # 16
]


def test_the_first_n_features_at_multiples_of_their_scale():
    requests = auto_steer_requests(RANKED, PROMPTS)
    assert [r.feature for r in requests] == [41, 7, 12]
    assert requests[0].strengths == [15.0, 30.0]  # 1.5x and 3x the corpus max
    assert requests[1].strengths == [5.0, 10.0]  # no corpus max: the prompts' max
    assert requests[2].strengths == [6.0, 12.0]  # a zero corpus max falls back too
    assert all(isinstance(r, SteerRequest) for r in requests)


def test_the_shortest_prompts_of_at_least_min_chars_the_same_for_every_feature():
    requests = auto_steer_requests(RANKED, PROMPTS)
    assert requests[0].prompts == ["Birds sing early", "Dogs bark loudly."]
    assert all(r.prompts == requests[0].prompts for r in requests)
    wider = auto_steer_requests(RANKED, PROMPTS, AutoSteerSettings(n_prompts=3))
    assert wider[0].prompts == ["Birds sing early", "Dogs bark loudly.", "The cat sat on the mat."]
    lax = auto_steer_requests(RANKED, PROMPTS, AutoSteerSettings(min_prompt_chars=1))
    assert lax[0].prompts == ["Hi there", "Birds sing early"]


def test_only_short_prompts_fall_back_to_the_first_ones():
    requests = auto_steer_requests(RANKED[:1], ["  ", "Yo", "Hey you", "Hm"])
    assert requests[0].prompts == ["Yo", "Hey you"]
    assert auto_steer_requests(RANKED, []) == []
    assert auto_steer_requests(RANKED, ["   "]) == []


def test_settings_choose_how_many_and_how_strong():
    settings = AutoSteerSettings(n_features=2, n_prompts=1, strength_multiples=(1.0, 3.0, -2.0))
    requests = auto_steer_requests(RANKED, PROMPTS, settings)
    assert [r.feature for r in requests] == [41, 7]
    assert requests[0].strengths == [10.0, 30.0, -20.0]
    assert requests[0].prompts == ["Birds sing early"]
    assert auto_steer_requests([], PROMPTS) == []


def test_a_feature_without_any_scale_is_skipped():
    requests = auto_steer_requests([{"id": 3}, {"id": 4, "max_activation": 2.0}], PROMPTS)
    assert [r.feature for r in requests] == [4]


def test_steer_records_one_per_request_prompt_and_strength():
    requests = [
        SteerRequest(feature=41, strengths=[20.0, 50.0], prompts=["a b c", "d e f"]),
        SteerRequest(feature=7, strengths=[-3.0], prompts=["g h"], seed=5, max_new_tokens=8),
    ]
    records = steer_records(requests)
    assert [
        (r["steer"]["feature"], r["steer"]["prompt"], r["steer"]["strength"]) for r in records
    ] == [
        (41, "a b c", 20.0),
        (41, "a b c", 50.0),
        (41, "d e f", 20.0),
        (41, "d e f", 50.0),
        (7, "g h", -3.0),
    ]
    assert records[-1]["steer"] == {
        "feature": 7,
        "strength": -3.0,
        "prompt": "g h",
        "max_new_tokens": 8,
        "temperature": 0.5,
        "freq_penalty": 2.0,
        "seed": 5,
    }
    assert steer_records([]) == []


def test_auto_requests_are_valid_steer_requests():
    # 16 strengths is the limit of a SteerRequest.
    with pytest.raises(InvalidRunOptions, match="strengths"):
        auto_steer_requests(RANKED, PROMPTS, AutoSteerSettings(strength_multiples=(1.0,) * 17))
