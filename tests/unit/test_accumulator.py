"""The streaming accumulator: counts, first-token evidence, bounded state, shard merges."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from saeflow.core.aggregation.accumulator import (
    POSITION_SLOTS,
    AccumulatorSettings,
    FeatureAccumulator,
)
from saeflow.core.aggregation.reference import CorpusReference
from saeflow.core.aggregation.summary import summarize
from saeflow.core.errors import ExtractionFailed, PromptTooLong

REPO = Path(__file__).resolve().parents[2]


def tok(text: str, **features: float) -> dict:
    return {
        "text": text,
        "features": [{"id": int(k[1:]), "activation": v} for k, v in features.items()],
    }


def record(rid: str, tokens: list[dict], set_name: str | None = None, **extra) -> dict:
    out = {"id": rid, "text": "".join(t["text"] for t in tokens), "tokens": tokens, "error": None}
    if set_name:
        out["set"] = set_name
    out.update(extra)
    return out


# Feature 1: a content feature that also fires on one first token; 2: content only;
# 3: first tokens only (a position feature).
HAND = [
    record(
        "a",
        [
            tok("The", f1=5.0, f3=40.0),
            tok(" cat", f2=3.0),
            tok(" sat", f1=2.0, f2=0.0),
            tok(" down"),
        ],
    ),
    record("b", [tok("A", f3=35.0), tok(" dog", f2=4.0, f1=1.5), tok(" ran", f1=2.5)]),
    record("c", [tok("Boil", f3=30.0), tok(" water", f1=1.0)], "contrast"),
]


def hand_accumulator(settings: AccumulatorSettings | None = None) -> FeatureAccumulator:
    acc = FeatureAccumulator(settings)
    acc.add_all(json.loads(json.dumps(HAND)))
    return acc


def test_counts_leave_out_the_first_token_and_evidence_counts_it():
    acc = hand_accumulator()
    assert acc.n_prompts == {"main": 2, "contrast": 1}
    assert acc.n_tokens == {"main": 5, "contrast": 1}  # 3 + 2 content tokens; 1
    assert acc.n_first == 3
    f1, f2, f3 = acc.features[1], acc.features[2], acc.features[3]
    main = f1.by_set["main"]
    assert (main.tokens, main.prompts) == (3, 2)
    assert main.activation_sum == pytest.approx(2.0 + 1.5 + 2.5)
    assert main.max_activation == 2.5
    contrast = f1.by_set["contrast"]
    assert (contrast.tokens, contrast.prompts, contrast.max_activation) == (1, 1, 1.0)
    assert (f1.first_fires, f1.first_mass) == (1, 5.0)
    assert f1.total_mass == pytest.approx(5.0 + 2.0 + 1.5 + 2.5 + 1.0)
    # zero activations do not count as firing
    assert (f2.by_set["main"].tokens, f2.first_fires, f2.total_mass) == (2, 0, 7.0)
    # only ever at a first token: evidence, but no content statistics at all
    assert (f3.first_fires, f3.first_mass, f3.total_mass) == (3, 105.0, 105.0)
    assert f3.by_set == {} and f3.tally == {} and f3.top == [] and f3.log2_hist == {}
    assert acc.top_examples(3) == [] and acc.sampled_examples(3) == []


def test_token_tally_and_log2_histogram_see_content_tokens_only():
    f1 = hand_accumulator().features[1]
    assert f1.tally == {
        " sat": [1, 2.0],
        " dog": [1, 1.5],
        " ran": [1, 2.5],
        " water": [1, 1.0],
    }
    # 1.0 and 1.5 in [1, 2) (exponent 1); 2.0 and 2.5 in [2, 4) (exponent 2); 5.0 not counted
    assert f1.log2_hist == {1: 2, 2: 2}


def test_positions_count_content_tokens_by_absolute_position():
    acc = hand_accumulator()
    main = acc.positions["main"]
    # BOS = 0, first real token = 1 (not counted); "a" has content at 2, 3, 4; "b" at 2, 3.
    assert main[:6] == [0, 0, 2, 2, 1, 0] and sum(main) == acc.n_tokens["main"]
    assert acc.positions["contrast"][:4] == [0, 0, 1, 0]
    long = FeatureAccumulator()
    long.add(record("long", [tok(f" t{i}") for i in range(200)]))
    slots = long.positions["main"]
    assert len(slots) == POSITION_SLOTS
    assert slots[2] == slots[128] == 1 and slots[1] == 0
    assert slots[-1] == 200 - 128  # positions 129..200 share the last slot
    assert sum(slots) == 199 == long.n_tokens["main"]


def test_top_examples_are_windows_around_the_peak_strongest_first():
    acc = hand_accumulator()
    examples = acc.top_examples(1)
    assert [(e["prompt_id"], e["set"], e["max"]) for e in examples] == [
        ("b", "main", 2.5),
        ("a", "main", 2.0),
        ("c", "contrast", 1.0),
    ]
    assert examples[0]["tokens"] == [" dog", " ran"]  # the first token is never shown
    assert examples[0]["activations"] == [1.5, 2.5]
    assert examples[1]["tokens"] == [" cat", " sat", " down"]
    assert examples[1]["activations"] == [0.0, 2.0, 0.0]
    assert examples[1]["at"] == 2.0


def test_window_bounds_follow_the_context_settings():
    acc = FeatureAccumulator(AccumulatorSettings(context_before=2, context_after=1))
    words = ["S", " a", " b", " c", " d", " e", " f", " g"]
    tokens = [tok(w) for w in words]
    tokens[3] = tok(" c", f9=1.0)
    tokens[5] = tok(" e", f9=3.0)
    acc.add(record("w", tokens))
    (window,) = acc.top_examples(9)
    assert window["tokens"] == [" c", " d", " e", " f"]
    assert window["activations"] == [1.0, 0.0, 3.0, 0.0]
    assert (window["max"], window["at"]) == (3.0, 3.0)


def many_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        tokens = [tok(f"T{i}", f9=99.0), tok(f" w{i}"), tok(" pet", f9=float(i + 1)), tok(" end")]
        out.append(record(f"p{i:03d}", tokens, text="x" * (i % 17 + 5) + f" {i}"))
    return out


def test_bounded_state_over_many_records():
    settings = AccumulatorSettings(
        examples_per_feature=3,
        samples_per_feature=2,
        random_window_pool=4,
        short_prompts=2,
        context_before=1,
        context_after=1,
    )
    acc = FeatureAccumulator(settings)
    acc.add_all(many_records(300))
    state = acc.features[9]
    assert len(state.top) == 3 and len(state.sample) == 2
    assert [e["max"] for e in acc.top_examples(9)] == [300.0, 299.0, 298.0]
    assert len(acc.windows) == 4
    assert len(acc.short_texts) == 2
    assert acc.short_texts == ["xxxxx 0", "xxxxx 17"]  # shortest, then alphabetical
    # No window, example or sample ever shows a first token (T...).
    shown = [w["tokens"] for w in acc.random_windows()]
    shown += [e["tokens"] for e in acc.top_examples(9) + acc.sampled_examples(9)]
    assert all(not t.startswith("T") for tokens in shown for t in tokens)
    assert state.by_set["main"].tokens == 300 and state.first_fires == 300


def test_bounded_state_does_not_depend_on_record_order():
    records = many_records(120)
    settings = AccumulatorSettings(examples_per_feature=3, samples_per_feature=4)
    forward = FeatureAccumulator(settings)
    forward.add_all(records)
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    backward = FeatureAccumulator(settings)
    backward.add_all(shuffled)
    assert forward.top_examples(9) == backward.top_examples(9)
    assert forward.sampled_examples(9) == backward.sampled_examples(9)
    assert forward.random_windows() == backward.random_windows()
    assert forward.short_texts == backward.short_texts
    # the sample is not just the strongest ones
    assert {e["max"] for e in forward.sampled_examples(9)} != {118.0, 119.0, 120.0, 117.0}


def test_tally_is_pruned_to_half_its_cap_keeping_the_most_activation_mass():
    acc = FeatureAccumulator(AccumulatorSettings(tally_cap=4))
    for i in range(5):
        acc.add(record(f"r{i}", [tok("X"), tok(" common", f5=1.0), tok(f" rare{i}", f5=9.0)]))
    # After the 4th record: 5 distinct > 4 -> keep the 2 with the most activation mass
    # (" rare0", " rare1": 9.0 each, ties by text; " common" has 4.0); the 5th record adds
    # " common" again and " rare4". Strong tokens survive, weak frequent ones go first.
    assert list(acc.features[5].tally) == [" rare0", " rare1", " common", " rare4"]
    assert acc.features[5].tally[" common"] == [1, 1.0]


def test_error_records_raise_named_errors():
    acc = FeatureAccumulator()
    with pytest.raises(PromptTooLong, match="p9"):
        acc.add({"id": "p9", "error": {"error": "PromptTooLong", "message": "600 tokens"}})
    with pytest.raises(PromptTooLong):
        acc.add({"id": "p8", "error": "PromptTooLong"})
    with pytest.raises(ExtractionFailed, match="CudaOutOfMemory"):
        acc.add({"id": "p7", "error": {"error": "CudaOutOfMemory", "message": "oom"}})
    with pytest.raises(ExtractionFailed, match="without tokens"):
        acc.add({"id": "p1", "tokens": None, "error": None})
    assert acc.n_prompts == {"main": 0, "contrast": 0}
    with pytest.raises(ExtractionFailed, match="no records"):
        summarize(FeatureAccumulator(), None)


def test_merge_refuses_different_settings():
    with pytest.raises(ValueError, match="settings"):
        FeatureAccumulator().merge(FeatureAccumulator(AccumulatorSettings(tally_cap=8)))


# --- the real records ---------------------------------------------------------------


def naive_counts(records: list[dict]) -> dict[int, dict]:
    """An independent oracle: per feature, per set, straight from the records."""
    out: dict[int, dict] = {}
    for rec in records:
        set_name = rec.get("set", "main")
        seen: set[int] = set()
        for pos, token in enumerate(rec["tokens"]):
            for feat in token["features"]:
                act = feat["activation"]
                if act <= 0:
                    continue
                entry = out.setdefault(
                    feat["id"], {"first": 0, "first_mass": 0.0, "total": 0.0, "sets": {}}
                )
                entry["total"] += act
                if pos == 0:
                    entry["first"] += 1
                    entry["first_mass"] += act
                    continue
                counts = entry["sets"].setdefault(set_name, [0, 0, 0.0, 0.0])
                counts[0] += 1
                counts[2] += act
                counts[3] = max(counts[3], act)
                if (feat["id"], set_name) not in seen:
                    seen.add((feat["id"], set_name))
                    counts[1] += 1
    return out


def test_counts_on_real_records_match_an_independent_count(real_records):
    acc = FeatureAccumulator()
    acc.add_all(real_records)
    expected = naive_counts(real_records)
    assert set(acc.features) == set(expected)
    assert acc.n_prompts == {"main": 14, "contrast": 14}
    assert acc.n_tokens["main"] == sum(
        len(r["tokens"]) - 1 for r in real_records if r.get("set") != "contrast"
    )
    for fid, want in expected.items():
        state = acc.features[fid]
        assert state.first_fires == want["first"]
        assert state.first_mass == pytest.approx(want["first_mass"])
        assert state.total_mass == pytest.approx(want["total"])
        assert set(state.by_set) == set(want["sets"])
        for set_name, (tokens, prompts, act_sum, act_max) in want["sets"].items():
            got = state.by_set[set_name]
            assert (got.tokens, got.prompts, got.max_activation) == (tokens, prompts, act_max)
            assert got.activation_sum == pytest.approx(act_sum)


def shards_of(records: list[dict], how: str) -> list[list[dict]]:
    if how == "two halves":
        return [records[:11], records[11:]]
    if how == "three interleaved":
        return [records[0::3], records[1::3], records[2::3]]
    if how == "uneven, an empty shard last":
        return [records[:1], records[1:20], records[20:], []]
    raise AssertionError(how)


def merged(shards: list[list[dict]], settings: AccumulatorSettings) -> FeatureAccumulator:
    parts = []
    for shard in shards:
        part = FeatureAccumulator(settings)
        part.add_all(shard)
        parts.append(part)
    total = FeatureAccumulator(settings)
    for part in parts:
        total.merge(part)
    return total


def rounded(value, digits: int = 12):
    """Floats to ``digits`` significant digits: summation order moves the last bits only."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


# A tally cap no feature reaches: pruning is the one documented exception to merge equality.
NO_PRUNING = AccumulatorSettings(tally_cap=100_000)


def made_up_reference(acc: FeatureAccumulator) -> CorpusReference:
    """A corpus reference with position buckets, fixed by the feature ids."""
    ids = sorted(acc.features)
    return CorpusReference(
        n_tokens=20_000,
        fire_counts={f: float(f % 97) for f in ids},
        mean_activation={f: 5.0 + f % 13 for f in ids},
        first_token=frozenset(ids[:3]),
        first_token_rule="made up",
        buckets=((1, 4), (4, 16), (16, None)),
        bucket_tokens=(1000, 4000, 15_000),
        bucket_counts=(
            {f: float(f % 7) for f in ids},
            {f: float(f % 11) for f in ids},
            {f: float(f % 17) for f in ids},
        ),
    )


def with_quality(records: list[dict]) -> list[dict]:
    """The records with the reconstruction and CE sums a worker adds (made-up values)."""
    for i, rec in enumerate(records):
        n = len(rec["tokens"])
        rec["quality"] = {
            "n": n,
            "sq_err": 0.1 * n + i / 7,
            "sq_norm": 30.0 * n + i,
            "sum": [float(i % 3), 1.5, -float(i), 0.25 * n],
        }
        rec["ce"] = {"n": n - 1, "clean": 2.0 * n, "spliced": 2.1 * n + i / 9, "zero": 9.0 * n}
    return records


@pytest.mark.parametrize("how", ["two halves", "three interleaved", "uneven, an empty shard last"])
def test_merged_shards_equal_one_pass(real_records, how):
    real_records = with_quality(real_records)
    one = FeatureAccumulator(NO_PRUNING)
    one.add_all(real_records)
    shards = merged(shards_of(real_records, how), NO_PRUNING)
    assert shards.n_prompts == one.n_prompts and shards.n_tokens == one.n_tokens
    assert shards.n_first == one.n_first and shards.positions == one.positions
    assert shards.short_texts == one.short_texts
    assert shards.random_windows() == one.random_windows()
    for fid in one.features:
        assert shards.top_examples(fid) == one.top_examples(fid)
        assert shards.sampled_examples(fid) == one.sampled_examples(fid)
        assert shards.features[fid].log2_hist == one.features[fid].log2_hist
    assert shards.quality.records == one.quality.records == 28
    assert shards.quality.ce_records == one.quality.ce_records == 28
    body = summarize(one, None)
    assert body["prompt_quality"]["explained_variance"] is not None
    assert body["prompt_quality"]["ce_loss_recovered"] is not None
    assert rounded(summarize(shards, None)) == rounded(body)
    reference = made_up_reference(one)
    with_reference = summarize(one, reference)
    assert with_reference["ranking"]["method"] == "specificity"
    assert rounded(summarize(shards, reference)) == rounded(with_reference)


def test_top_tokens_with_the_default_tally_cap_do_not_depend_on_sharding(real_records):
    one = FeatureAccumulator()
    one.add_all(real_records)
    shards = merged(shards_of(real_records, "three interleaved"), AccumulatorSettings())
    tokens_one = {s["id"]: s.get("top_tokens") for s in summarize(one, None)["features"]}
    tokens_shards = {s["id"]: s.get("top_tokens") for s in summarize(shards, None)["features"]}
    assert rounded(tokens_shards) == rounded(tokens_one)


def quality_record(rid: str, quality: dict | None) -> dict:
    rec = record(rid, [tok("A"), tok(" b", f1=1.0), tok(" c")])
    if quality is not None:
        rec["quality"] = quality
    return rec


def test_merging_an_empty_shard_first_keeps_the_quality_sums():
    records = [
        quality_record("q1", {"n": 2, "sq_err": 1.0, "sq_norm": 11.0, "sum": [2.0, 2.0]}),
        quality_record("q2", {"n": 2, "sq_err": 1.0, "sq_norm": 12.0, "sum": [3.0, 2.0]}),
    ]
    one = FeatureAccumulator()
    one.add_all(records)
    shards = merged([[], records], AccumulatorSettings())
    assert shards.quality.total == one.quality.total == [5.0, 4.0]


def test_deterministic_across_processes_and_hash_seeds(real_records):
    script = (
        "import hashlib, json, sys\n"
        "from saeflow.core.aggregation.accumulator import FeatureAccumulator\n"
        "from saeflow.core.aggregation.summary import summarize\n"
        "records = [json.loads(line) for line in sys.stdin]\n"
        "acc = FeatureAccumulator()\n"
        "acc.add_all(records)\n"
        "body = {'summary': summarize(acc, None), 'windows': acc.random_windows(),\n"
        "        'samples': {f: acc.sampled_examples(f) for f in sorted(acc.features)}}\n"
        "print(hashlib.sha256(json.dumps(body).encode()).hexdigest())\n"
    )
    stdin = "\n".join(json.dumps(r) for r in real_records)
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=REPO,
        )
        digests.add(done.stdout.strip())
    assert len(digests) == 1 and all(len(d) == 64 for d in digests)


def test_histogram_exponents_are_log2_bins():
    acc = FeatureAccumulator()
    acc.add(record("h", [tok("X"), tok(" a", f4=0.75), tok(" b", f4=1.0), tok(" c", f4=7.99)]))
    # [0.5, 1) -> 0, [1, 2) -> 1, [4, 8) -> 3
    assert acc.features[4].log2_hist == {0: 1, 1: 1, 3: 1}
    assert all(math.frexp(v)[1] == e for v, e in [(0.75, 0), (1.0, 1), (7.99, 3)])
