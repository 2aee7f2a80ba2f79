"""The first-token rule: one verdict from constructed evidence."""

from __future__ import annotations

import dataclasses

import pytest

from saeflow.core.first_token import (
    DEFAULT_RULE,
    FirstTokenEvidence,
    FirstTokenRule,
    is_first_token_feature,
    verdict_from_record,
)


def evidence(n_texts, first_fires, first_mass, rest_mass, content_fires):
    return FirstTokenEvidence(
        n_texts=n_texts,
        first_fires=first_fires,
        first_mass=first_mass,
        total_mass=first_mass + rest_mass,
        content_fires=content_fires,
    )


def test_only_at_the_first_token_is_a_first_token_feature():
    only_first = evidence(20, 20, 20 * 50.0, 0.0, 0)
    assert only_first.mass_share == 1.0
    assert only_first.intensity_ratio == float("inf")
    assert is_first_token_feature(only_first)


def test_position_feature_firing_weakly_everywhere_but_six_times_harder_first():
    # 20 texts, first token at 60 each; 1,000 later tokens at 10 each.
    position = evidence(20, 20, 20 * 60.0, 1000 * 10.0, 1000)
    assert position.mass_share == pytest.approx(1200 / 11200)  # far below 0.5
    assert position.intensity_ratio == pytest.approx(6.0)
    assert is_first_token_feature(position)
    # The same feature only 2x harder at the first token is a content feature.
    assert not is_first_token_feature(evidence(20, 20, 20 * 20.0, 1000 * 10.0, 1000))


def test_content_features_are_not_first_token_features():
    # Fires on a quarter of first tokens as hard as anywhere else: a word it likes.
    content = evidence(20, 5, 5 * 10.0, 200 * 10.0, 200)
    assert content.fire_rate == 0.25 and content.intensity_ratio == pytest.approx(1.0)
    assert not is_first_token_feature(content)
    # All its mass at the first token, but on too few texts: a word, not a position.
    rare = evidence(20, 3, 3 * 40.0, 0.0, 0)
    assert rare.fire_rate == 0.15
    assert not is_first_token_feature(rare)
    # Never fires at the first token.
    assert not is_first_token_feature(evidence(100, 0, 0.0, 500.0, 50))


def test_too_few_texts_gives_no_verdict():
    assert not is_first_token_feature(evidence(15, 15, 300.0, 0.0, 0))
    assert is_first_token_feature(evidence(16, 16, 320.0, 0.0, 0))
    assert not is_first_token_feature(FirstTokenEvidence.empty())


def test_thresholds_are_inclusive():
    rule = FirstTokenRule(min_texts=10, min_fire_rate=0.2, min_mass_share=0.5)
    # fire rate exactly 0.2 and mass share exactly 0.5 (intensity ratio 1)
    boundary = evidence(10, 2, 20.0, 20.0, 2)
    assert boundary.fire_rate == 0.2 and boundary.mass_share == 0.5
    assert is_first_token_feature(boundary, rule)
    # intensity ratio exactly 3 (mean 3 on first tokens, 1 elsewhere), mass share 9/19
    exactly_three = evidence(10, 3, 3 * 3.0, 10 * 1.0, 10)
    assert exactly_three.intensity_ratio == pytest.approx(3.0)
    assert is_first_token_feature(exactly_three, rule)
    assert not is_first_token_feature(exactly_three, dataclasses.replace(rule, min_texts=11))


def test_evidence_requires_every_field():
    with pytest.raises(TypeError):
        FirstTokenEvidence(10, 5, 1.0, 2.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        FirstTokenEvidence(n_texts=10, first_fires=5, first_mass=1.0, total_mass=2.0)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FirstTokenEvidence.empty().n_texts = 3  # type: ignore[misc]


def test_evidence_adds_up_across_shards_field_by_field():
    one = FirstTokenEvidence(10, 4, 40.0, 100.0, 30)
    two = FirstTokenEvidence(6, 6, 90.0, 95.0, 1)
    total = one + two
    assert total == FirstTokenEvidence(16, 10, 130.0, 195.0, 31)
    assert one + FirstTokenEvidence.empty() == one
    assert two + one == total
    # Neither shard alone has 16 texts; together they decide.
    assert not is_first_token_feature(one) and not is_first_token_feature(two)
    assert total.fire_rate == 10 / 16 and total.mass_share == pytest.approx(130 / 195)
    assert is_first_token_feature(total)


def test_ratios_of_empty_evidence_are_zero_not_errors():
    empty = FirstTokenEvidence.empty()
    assert (empty.fire_rate, empty.mass_share, empty.intensity_ratio) == (0.0, 0.0, 0.0)
    assert empty.to_dict() == {
        "n_texts": 0,
        "first_fires": 0,
        "fire_rate": 0.0,
        "mass_share": 0.0,
        "intensity_ratio": 0.0,
    }


def test_to_dict_rounds_and_writes_an_infinite_ratio_as_null():
    assert evidence(3, 1, 2.0, 0.0, 0).to_dict() == {
        "n_texts": 3,
        "first_fires": 1,
        "fire_rate": 0.3333,
        "mass_share": 1.0,
        "intensity_ratio": None,
    }
    assert evidence(3, 3, 30.0, 70.0, 7).to_dict()["intensity_ratio"] == 1.0


def test_rule_validation_and_description():
    with pytest.raises(ValueError):
        FirstTokenRule(min_texts=0)
    with pytest.raises(ValueError):
        FirstTokenRule(min_fire_rate=0.0)
    with pytest.raises(ValueError):
        FirstTokenRule(min_mass_share=1.5)
    text = DEFAULT_RULE.describe()
    assert "20%" in text and "50%" in text and "3x" in text and "16 texts" in text


def test_verdict_from_record():
    assert verdict_from_record({"first_token": {"is_first_token": True}}) is True
    assert verdict_from_record({"first_token": {"is_first_token": False}}) is False
    assert verdict_from_record({"first_token": {"is_first_token": "yes"}}) is None
    assert verdict_from_record({"first_token": True}) is None
    assert verdict_from_record({"id": 3}) is None
    assert verdict_from_record(None) is None
