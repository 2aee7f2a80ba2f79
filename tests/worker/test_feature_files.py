"""The feature files beside the SAE: first-token evidence, feature_summary.json, corpus_windows.jsonl.

Constructed activations check the selection rules exactly; the small SAE trained by the
session fixture checks that the files of a real training job agree with each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpu_worker.corpus import TokenWindows
from gpu_worker.evaluation import FeatureActivations
from gpu_worker.feature_data import FeatureDataOptions, build_feature_data
from gpu_worker.feature_summary import (
    build_corpus_windows,
    build_feature_summary,
    first_token_evidence,
)
from saeflow.core import layout
from saeflow.core.first_token import DEFAULT_RULE

N_WINDOWS, WIDTH = 40, 24


def token_id(row: int, pos: int) -> int:
    """Each (window, position) its own token, so a rendered token says where it came from."""
    return row * WIDTH + pos


def decode(token: int) -> str:
    return f"r{token // WIDTH}p{token % WIDTH}"


def constructed() -> FeatureActivations:
    """Four features on 40 windows of 24 tokens (position 0 = BOS; window 5 has a special
    token at position 1, so 39 windows count their first real token):

    0: fires only at position 1, in every counted window (a first-token feature);
    1: fires everywhere with the same strength (not one);
    2: fires at position 1 in 30% of the windows but mostly elsewhere (not one);
    3: fires at position 4 of windows 0..11 only (for example selection).
    """
    tokens = torch.arange(N_WINDOWS * WIDTH).view(N_WINDOWS, WIDTH)
    mask = torch.ones(N_WINDOWS, WIDTH, dtype=torch.bool)
    mask[:, 0] = False
    mask[5, 1] = False  # a special token: neither a first token nor content
    entries: list[tuple[int, int, int, float]] = []
    for row in range(N_WINDOWS):
        for pos in range(1, WIDTH):
            if not mask[row, pos]:
                continue
            if pos == 1:
                entries.append((row, pos, 0, 40.0 + row))
            entries.append((row, pos, 1, 2.0))
            if (pos == 1 and row % 10 < 3) or (pos > 1 and (row + pos) % 3 == 0):
                entries.append((row, pos, 2, 5.0))
        if row < 12:
            entries.append((row, 4, 3, 1.0 + row))
    row_t, pos_t, feature_t, value_t = (
        torch.tensor(column) for column in zip(*entries, strict=True)
    )
    windows = TokenWindows(tokens=tokens, mask=mask)
    return FeatureActivations.from_entries(
        windows, row_t, pos_t, feature_t, value_t.float(), d_sae=4
    )


def fake_sae_and_model(d_sae: int) -> tuple[SimpleNamespace, SimpleNamespace]:
    sae = SimpleNamespace(cfg=SimpleNamespace(d_sae=d_sae), W_dec=torch.eye(d_sae, 6))
    model = SimpleNamespace(
        W_U=torch.eye(6, 12), tokenizer=SimpleNamespace(decode=lambda ids: decode(ids[0]))
    )
    return sae, model


def content_positions_of(acts) -> int:
    return acts.n_tokens - 39


def test_first_token_evidence_and_verdict_on_constructed_activations() -> None:
    acts = constructed()
    evidence = first_token_evidence(acts)
    assert [e.n_texts for e in evidence] == [39] * 4
    only_first, everywhere, mixed, _ = evidence
    assert (only_first.first_fires, only_first.fire_rate, only_first.mass_share) == (39, 1.0, 1.0)
    assert everywhere.fire_rate == 1.0
    assert everywhere.mass_share == pytest.approx(39 / acts.n_tokens)
    assert mixed.first_fires == 12 and mixed.fire_rate == pytest.approx(12 / 39)
    assert mixed.mass_share < DEFAULT_RULE.min_mass_share

    sae, model = fake_sae_and_model(4)
    records = list(build_feature_data(acts, sae, model, evidence=evidence))
    assert [r["first_token"]["is_first_token"] for r in records] == [True, False, False, False]
    assert records[0]["first_token"] == {
        "n_texts": 39,
        "first_fires": 39,
        "fire_rate": 1.0,
        "mass_share": 1.0,
        "intensity_ratio": None,  # it fires nowhere else: infinitely harder at the first token
        "is_first_token": True,
    }
    # fires on every token at the same strength: the content firings are counted too
    assert everywhere.content_fires == content_positions_of(acts)
    # density: content positions only (the first real token left out)
    content_positions = acts.n_tokens - 39
    assert records[0]["density"] == 0.0
    assert records[1]["density"] == pytest.approx(1.0)
    assert records[3]["density"] == pytest.approx(12 / content_positions)

    summary = build_feature_summary(acts, evidence)
    assert summary["first_token"]["features"] == [0]
    assert summary["first_token"]["rule"] == DEFAULT_RULE.describe()
    assert summary["n_tokens"] == content_positions and summary["n_windows"] == N_WINDOWS
    assert summary["fire_counts"] == [0, content_positions, int(acts.content.fires[2]), 12]
    assert summary["mean_activation"][1] == 2.0 and summary["max_activation"][1] == 2.0
    assert summary["mean_activation"][3] == pytest.approx(6.5)  # 1..12
    assert summary["max_activation"][0] == 0.0  # content positions only


def test_random_examples_are_one_per_window_and_avoid_top_windows() -> None:
    acts = constructed()
    sae, model = fake_sae_and_model(4)
    options = FeatureDataOptions(n_top=8, n_random=8, tokens_before=1, tokens_after=1)
    records = list(build_feature_data(acts, sae, model, options))

    def windows_of(examples: list[dict]) -> list[str]:
        return [ex["tokens"][0].partition("p")[0] for ex in examples]

    # feature 1 fires in 40 windows: 8 random ones, none of the 8 top windows
    top, rand = windows_of(records[1]["top_examples"]), windows_of(records[1]["random_examples"])
    assert len(rand) == len(set(rand)) == 8
    assert not set(top) & set(rand)
    # feature 3 fires in 12 windows: the 4 windows outside its top 8, then 4 of the top ones
    top, rand = windows_of(records[3]["top_examples"]), windows_of(records[3]["random_examples"])
    assert top == [f"r{row}" for row in range(11, 3, -1)]  # strongest first
    assert len(rand) == len(set(rand)) == 8
    assert {f"r{row}" for row in range(4)} <= set(rand)
    # seeded: the same sample again
    again = list(build_feature_data(acts, sae, model, options))
    assert again[1]["random_examples"] == records[1]["random_examples"]


def test_corpus_windows_are_spans_after_the_first_real_token() -> None:
    acts = constructed()
    windows = build_corpus_windows(acts, decode, n_windows=16, span=16, seed=3)
    assert len(windows) == 16
    rows = set()
    for window in windows:
        assert len(window["tokens"]) == len(window["features"]) == 16
        places = [token.partition("p") for token in window["tokens"]]
        row = int(places[0][0][1:])
        positions = [int(p[2]) for p in places]
        assert positions == list(range(positions[0], positions[0] + 16))
        assert positions[0] >= 2  # never BOS, never the first real token
        rows.add(row)
        for position, features in zip(positions, window["features"], strict=True):
            expected = {1: 2.0}
            if (row + position) % 3 == 0:
                expected[2] = 5.0
            if row < 12 and position == 4:
                expected[3] = 1.0 + row
            assert {fid: act for fid, act in features} == expected
            assert [act for _, act in features] == sorted(
                (act for _, act in features), reverse=True
            )
    assert len(rows) == 16  # one span per window
    assert build_corpus_windows(acts, decode, n_windows=16, seed=3) == windows  # seeded
    assert len(build_corpus_windows(acts, decode, n_windows=500)) == N_WINDOWS


@pytest.mark.slow
def test_training_writes_consistent_feature_files(small_sae_dir: Path) -> None:
    metrics = json.loads((small_sae_dir / layout.SAE_METRICS).read_text())
    records = [
        json.loads(line)
        for line in (small_sae_dir / layout.SAE_FEATURE_DATA).read_text().splitlines()
    ]
    summary = json.loads((small_sae_dir / layout.SAE_FEATURE_SUMMARY).read_text())
    described = json.loads((small_sae_dir / layout.SAE_MANIFEST).read_text())
    d_sae = metrics["d_sae"]
    assert described["feature_data_version"] == 2
    assert summary["schema_version"] == 1 and summary["d_sae"] == d_sae
    for name in ("fire_counts", "density", "mean_activation", "max_activation"):
        assert len(summary[name]) == d_sae, name
    for name in ("fire_rate", "mass_share"):
        assert len(summary["first_token"][name]) == d_sae, name
    n_texts = records[0]["first_token"]["n_texts"]
    assert 0 < n_texts <= summary["n_windows"]
    assert summary["n_tokens"] + n_texts == metrics["eval_tokens"]
    assert summary["first_token"]["features"] == [
        r["id"] for r in records if r["first_token"]["is_first_token"]
    ]
    for record in records:
        fid = record["id"]
        assert summary["density"][fid] == pytest.approx(record["density"], rel=1e-5, abs=1e-12)
        assert summary["fire_counts"][fid] == round(record["density"] * summary["n_tokens"])
        for name in ("fire_rate", "mass_share"):
            assert summary["first_token"][name][fid] == pytest.approx(
                record["first_token"][name], abs=1e-4
            )
        assert summary["mean_activation"][fid] <= summary["max_activation"][fid] + 1e-4
        assert summary["max_activation"][fid] <= record["max_activation"] + 1e-3
        assert len(record["random_examples"]) <= 8

    k = int(json.loads((small_sae_dir / "cfg.json").read_text())["k"])
    lines = (small_sae_dir / layout.SAE_CORPUS_WINDOWS).read_text().splitlines()
    assert len(lines) == min(128, summary["n_windows"])
    for line in lines:
        window = json.loads(line)
        assert len(window["tokens"]) == len(window["features"]) == 16
        assert "<|im_start|>" not in window["tokens"][:1]
        for features in window["features"]:
            assert len(features) <= k
            assert all(0 <= fid < d_sae and act > 0 for fid, act in features)
