"""Partial aggregates: stored, merged in batches, they equal one pass over the same records."""

from __future__ import annotations

import copy
import random

import pytest
from test_accumulator import NO_PRUNING, made_up_reference, rounded, with_quality

from saeflow.core.aggregation.accumulator import AccumulatorSettings, FeatureAccumulator
from saeflow.core.aggregation.partial import PartialAggregate, PromptSample
from saeflow.core.aggregation.summary import summarize
from saeflow.core.contract.extraction import compact_tokens, record_tokens
from saeflow.core.errors import ExtractionFailed, PromptTooLong


def compact(record: dict) -> dict:
    """The same record in the worker's compact form."""
    texts, features = record_tokens(record)
    out = {k: v for k, v in record.items() if k != "tokens"}
    out.update(compact_tokens(texts, features))
    return out


def numbered(records: list[dict]) -> list[dict]:
    """prompt_index within each set, as validate writes it."""
    counters = {"main": 0, "contrast": 0}
    for record in records:
        name = record.get("set", "main")
        record["prompt_index"] = counters[name]
        counters[name] += 1
    return records


def partial(settings: AccumulatorSettings, sample: int) -> PartialAggregate:
    return PartialAggregate(FeatureAccumulator(settings), PromptSample(sample))


def through_storage(part: PartialAggregate) -> PartialAggregate:
    data = part.to_bytes()
    assert data[:2] == b"\x1f\x8b"  # gzip
    return PartialAggregate.from_bytes(data)


def map_reduce(
    shards: list[list[dict]], settings: AccumulatorSettings, sample: int, batch: int
) -> PartialAggregate:
    """What the workflow does: a stored partial per shard, stored merges per batch of
    ``batch`` shards, one final merge (each merge reads what the previous step stored)."""
    stored = []
    for index, records in enumerate(shards):
        part = partial(settings, sample)
        part.add_shard(index, records)
        stored.append(through_storage(part))
    batches = []
    for start in range(0, len(stored), batch):
        merged = partial(settings, sample)
        for part in stored[start : start + batch]:
            merged.merge(part)
        batches.append(through_storage(merged))
    final = partial(settings, sample)
    for part in reversed(batches):  # any order: the result does not depend on it
        final.merge(part)
    return final


def one_pass(records: list[dict], settings: AccumulatorSettings, sample: int) -> PartialAggregate:
    single = partial(settings, sample)
    single.add_all(records)
    return single


@pytest.mark.parametrize(
    ("n_shards", "batch", "form"),
    [(7, 3, "compact"), (28, 5, "compact"), (4, 4, "verbose"), (3, 1, "verbose")],
)
def test_merged_partials_equal_one_pass_on_real_extraction_output(
    real_records, n_shards, batch, form
):
    records = numbered(with_quality(real_records))
    if form == "compact":
        records = [compact(r) for r in records]
    random.Random(n_shards).shuffle(records)  # shards need not follow the prompt order
    shards = [records[i::n_shards] for i in range(n_shards)]
    single = one_pass(records, NO_PRUNING, sample=10)
    merged = map_reduce(shards, NO_PRUNING, sample=10, batch=batch)

    merged.check_covers(n_shards)
    one, acc = single.accumulator, merged.accumulator
    assert acc.n_prompts == one.n_prompts == {"main": 14, "contrast": 14}
    assert (acc.n_tokens, acc.n_first, acc.positions) == (one.n_tokens, one.n_first, one.positions)
    assert acc.short_texts == one.short_texts
    assert acc.random_windows() == one.random_windows()
    assert set(acc.features) == set(one.features)
    for fid in one.features:
        assert acc.top_examples(fid) == one.top_examples(fid)
        assert acc.sampled_examples(fid) == one.sampled_examples(fid)
        assert acc.features[fid].log2_hist == one.features[fid].log2_hist
        assert acc.features[fid].tally.keys() == one.features[fid].tally.keys()
    assert merged.sample.records() == single.sample.records()
    assert len(single.sample.records()) == 10
    body = summarize(one, None)
    assert body["prompt_quality"]["explained_variance"] is not None
    assert rounded(summarize(acc, None)) == rounded(body)
    reference = made_up_reference(one)
    with_reference = summarize(one, reference)
    assert with_reference["ranking"]["method"] == "specificity"
    assert with_reference["contrast"] is not None
    assert rounded(summarize(acc, reference)) == rounded(with_reference)


def test_compact_and_verbose_records_aggregate_alike(real_records):
    verbose = numbered(with_quality(real_records))
    compacted = [compact(r) for r in copy.deepcopy(verbose)]
    assert all(isinstance(r["tokens"][0], str) for r in compacted)
    a, b = one_pass(verbose, NO_PRUNING, 5), one_pass(compacted, NO_PRUNING, 5)
    assert a.to_json() == b.to_json()


def test_storage_round_trip_is_exact(real_records):
    part = one_pass(numbered(with_quality(real_records)), AccumulatorSettings(), 7)
    part.shards = [3]
    again = PartialAggregate.from_bytes(part.to_bytes())
    assert again.to_json() == part.to_json()
    # A restored partial keeps accepting records and merges (its heaps are still heaps):
    # exactly as the partial it was stored from does.
    twin = copy.deepcopy(part)
    for partial in (again, twin):
        partial.add_all(numbered(with_quality(real_records))[:3])
        partial.merge(part)
    assert again.to_json() == twin.to_json()


def test_the_prompt_sample_shows_everything_when_it_fits_in_prompt_order(real_records):
    records = numbered(real_records)
    shuffled = records[::-1]
    sample = one_pass(shuffled, AccumulatorSettings(), sample=100).sample.records()
    assert [(r["set"], r["prompt_index"]) for r in sample] == [
        (r.get("set", "main"), r["prompt_index"])
        for r in sorted(records, key=lambda r: (r.get("set", "main") != "main", r["prompt_index"]))
    ]
    first = sample[0]
    assert first["text"] == records[0]["text"]
    assert first["tokens"] == [t["text"] for t in records[0]["tokens"]]
    assert len(first["features"]) == len(first["tokens"])


def test_a_per_record_error_is_kept_and_the_lowest_shard_wins(real_records):
    records = numbered(real_records)
    bad = {"id": "x", "prompt_index": 99, "tokens": [], "error": {"error": "PromptTooLong",
           "message": "prompt has 900 tokens; the limit is 512"}}  # fmt: skip
    later, earlier = PartialAggregate(), PartialAggregate()
    later.add_shard(5, [records[0], bad])
    earlier.add_shard(2, [bad, records[1]])
    final = PartialAggregate()
    final.merge(through_storage(later))
    final.merge(through_storage(earlier))
    assert final.error["shard"] == 2 and final.shards == [5, 2]
    with pytest.raises(PromptTooLong, match="900 tokens"):
        final.raise_error()
    unknown = PartialAggregate()
    unknown.add_shard(0, [{"id": "y", "tokens": [], "error": {"error": "Weird", "message": "?"}}])
    with pytest.raises(ExtractionFailed, match="Weird"):
        unknown.raise_error()


def test_coverage_names_missing_doubled_and_unknown_shards():
    part = PartialAggregate(shards=[0, 1, 1, 3, 7])
    with pytest.raises(ExtractionFailed, match=r"missing 2, 4, doubled 1, unknown 7"):
        part.check_covers(5)
    PartialAggregate(shards=[2, 0, 1]).check_covers(3)


def test_partials_of_another_version_are_refused():
    data = PartialAggregate().to_json()
    with pytest.raises(ValueError, match="version"):
        PartialAggregate.from_json({**data, "version": 99})
    with pytest.raises(ValueError, match="format"):
        FeatureAccumulator.from_partial({**data["accumulator"], "format": "other"})
