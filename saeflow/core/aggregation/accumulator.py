"""Streaming, mergeable feature statistics over extraction records.

The aggregator sees one extraction record at a time and keeps bounded state per feature:
counters per prompt set, a bounded heap of top examples, a bounded sample of activating
windows, a token tally and a log2 histogram; globally, a sample of random prompt windows
(the non-activating contexts that label scoring needs) and the sums behind the SAE's
quality on the prompts.

Every piece merges: counters add, heaps and samples keep the best/lowest-priority items
of the union, and the random choices come from hashes of the prompt (not from a random
generator), so statistics computed shard by shard and merged equal one pass over all
records, up to float rounding (sums are added in a different order). The token tally is
the exception: when a feature's tally outgrows its cap, the tokens with the least
activation mass are pruned, so the rare tail depends on the order records arrive in.

Positions: a record's tokens start after BOS. The record's first token is the text's
first real token; features there are counted only as first-token evidence
(:mod:`saeflow.core.first_token`), never in the content statistics (frequency, examples,
specificity), because that position's residual stream is unlike any other.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from math import frexp
from typing import Any

from saeflow.core.contract.extraction import record_tokens
from saeflow.core.errors import ExtractionFailed, PromptTooLong

MAIN_SET = "main"
CONTRAST_SET = "contrast"
SETS = (MAIN_SET, CONTRAST_SET)
_MASK64 = (1 << 64) - 1
# Content tokens are counted per absolute position (BOS = 0, first real token = 1) up to
# this slot; the last slot holds every later position. Specificity is position-matched.
POSITION_SLOTS = 130
# What :meth:`FeatureAccumulator.to_partial` writes; a change of the state's shape is a new
# version (partials of one run are always written by one deployment, so no migration).
PARTIAL_FORMAT = "saeflow.feature-accumulator"
PARTIAL_VERSION = 2


@dataclass(frozen=True)
class AccumulatorSettings:
    """How much the aggregator keeps per feature."""

    examples_per_feature: int = 20
    """Top-activating prompt windows kept per feature."""
    samples_per_feature: int = 8
    """Random activating prompt windows kept per feature (held-out positives for scoring)."""
    context_before: int = 12
    context_after: int = 4
    random_window_pool: int = 96
    """Random prompt windows kept (held-out negatives for scoring)."""
    tally_cap: int = 64
    """Distinct tokens tallied per feature before the rare tail is pruned."""
    short_prompts: int = 8
    """Shortest main-set prompt texts kept (candidates for automatic steering)."""

    def __post_init__(self) -> None:
        for name in ("examples_per_feature", "samples_per_feature", "tally_cap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass(slots=True)
class SetCounts:
    """One feature on one prompt set, content tokens only."""

    tokens: int = 0
    prompts: int = 0
    activation_sum: float = 0.0
    max_activation: float = 0.0

    def merge(self, other: SetCounts) -> None:
        self.tokens += other.tokens
        self.prompts += other.prompts
        self.activation_sum += other.activation_sum
        self.max_activation = max(self.max_activation, other.max_activation)

    def to_json(self) -> list[float]:
        return [self.tokens, self.prompts, self.activation_sum, self.max_activation]

    @classmethod
    def from_json(cls, data: list[float]) -> SetCounts:
        return cls(int(data[0]), int(data[1]), float(data[2]), float(data[3]))


@dataclass(slots=True)
class FeatureState:
    by_set: dict[str, SetCounts] = field(default_factory=dict)
    first_fires: int = 0
    first_mass: float = 0.0
    total_mass: float = 0.0
    # token text -> [count, activation sum] on content tokens
    tally: dict[str, list[float]] = field(default_factory=dict)
    # exponent e counts content activations in [2^(e-1), 2^e)
    log2_hist: dict[int, int] = field(default_factory=dict)
    # min-heap of (activation, -priority, example): the strongest windows
    top: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    # min-heap of (-own priority, -prompt priority, example): the lowest priorities = a
    # uniform sample of the prompts it fires in
    sample: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    def counts(self, set_name: str) -> SetCounts:
        found = self.by_set.get(set_name)
        if found is None:
            found = self.by_set[set_name] = SetCounts()
        return found


@dataclass(slots=True)
class QualitySums:
    """The SAE's reconstruction and loss on the prompts, as sums that merge."""

    n: int = 0
    sq_err: float = 0.0
    sq_norm: float = 0.0
    total: list[float] | None = None
    ce_n: int = 0
    ce_clean: float = 0.0
    ce_spliced: float = 0.0
    ce_zero: float = 0.0
    ce_records: int = 0
    records: int = 0

    def add(self, quality: Mapping[str, Any] | None, ce: Mapping[str, Any] | None) -> None:
        self.records += 1
        if quality:
            self.n += int(quality.get("n") or 0)
            self.sq_err += float(quality.get("sq_err") or 0.0)
            self.sq_norm += float(quality.get("sq_norm") or 0.0)
            vector = [float(v) for v in quality.get("sum") or ()]
            if not vector:
                pass
            elif self.total is None:
                self.total = vector
            elif len(vector) == len(self.total):
                self.total = [a + b for a, b in zip(self.total, vector, strict=True)]
        if ce:
            self.ce_records += 1
            self.ce_n += int(ce.get("n") or 0)
            self.ce_clean += float(ce.get("clean") or 0.0)
            self.ce_spliced += float(ce.get("spliced") or 0.0)
            self.ce_zero += float(ce.get("zero") or 0.0)

    def merge(self, other: QualitySums) -> None:
        self.records += other.records
        self.n += other.n
        self.sq_err += other.sq_err
        self.sq_norm += other.sq_norm
        if other.total is not None:
            if self.total is None:
                self.total = list(other.total)
            elif len(other.total) == len(self.total):
                self.total = [a + b for a, b in zip(self.total, other.total, strict=True)]
        self.ce_records += other.ce_records
        self.ce_n += other.ce_n
        self.ce_clean += other.ce_clean
        self.ce_spliced += other.ce_spliced
        self.ce_zero += other.ce_zero


def prompt_priority(record: Mapping[str, Any], set_name: str) -> int:
    """A 64-bit pseudo-random number fixed by the prompt (not by the order it arrives in)."""
    key = f"{set_name}\x00{record.get('id', '')}\x00{record.get('prompt_index', '')}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def mix(value: int, salt: int) -> int:
    """SplitMix64-style mixing: a cheap per-(prompt, feature) pseudo-random number."""
    z = (value ^ (salt * 0x9E3779B97F4A7C15)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def activations_by_feature(
    features: list[list[tuple[int, float]]],
) -> dict[int, list[tuple[int, float]]]:
    """feature id -> [(token position, activation)] for the positive activations."""
    per_feature: dict[int, list[tuple[int, float]]] = {}
    for pos, per_token in enumerate(features):
        for feature_id, act in per_token:
            if act > 0.0:
                hits = per_feature.get(feature_id)
                if hits is None:
                    per_feature[feature_id] = [(pos, act)]
                else:
                    hits.append((pos, act))
    return per_feature


def check_record(record: Mapping[str, Any]) -> tuple[list[str], list[list[tuple[int, float]]]]:
    """The record's token texts and per-token features (either record form); a per-record
    error becomes the run's named error."""
    error = record.get("error")
    if error:
        name = error.get("error") if isinstance(error, Mapping) else str(error)
        message = error.get("message", "") if isinstance(error, Mapping) else ""
        detail = f"prompt {record.get('id', record.get('prompt_index'))!s}: {message}"
        if name == "PromptTooLong":
            raise PromptTooLong(detail)
        raise ExtractionFailed(f"extraction reported {name} for {detail}")
    tokens = record.get("tokens")
    where = f"prompt_index={record.get('prompt_index')!r} id={record.get('id')!r}"
    if not isinstance(tokens, list):
        raise ExtractionFailed(f"extraction record without tokens: {where}")
    try:
        return record_tokens(record)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise ExtractionFailed(f"malformed extraction record ({exc}): {where}") from exc


class FeatureAccumulator:
    """Folds extraction records in (``add``), merges with another (``merge``)."""

    def __init__(self, settings: AccumulatorSettings | None = None) -> None:
        self.settings = settings or AccumulatorSettings()
        self.features: dict[int, FeatureState] = {}
        self.n_prompts = dict.fromkeys(SETS, 0)
        self.n_tokens = dict.fromkeys(SETS, 0)  # content tokens (first token excluded)
        self.n_first = 0  # texts with a first real token (first-token evidence)
        self.positions = {name: [0] * POSITION_SLOTS for name in SETS}
        # min-heap of (-priority, -priority, window): the lowest priorities = a uniform sample
        self.windows: list[tuple[int, int, dict[str, Any]]] = []
        self.quality = QualitySums()
        self.short_texts: list[str] = []  # the shortest main-set prompts, shortest first

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.add(record)

    def add(self, record: Mapping[str, Any]) -> None:
        texts, token_features = check_record(record)
        set_name = CONTRAST_SET if record.get("set") == CONTRAST_SET else MAIN_SET
        self.n_prompts[set_name] += 1
        self.n_tokens[set_name] += max(0, len(texts) - 1)
        if texts:
            self.n_first += 1
        slots = self.positions[set_name]
        for position in range(2, min(len(texts) + 1, POSITION_SLOTS - 1)):
            slots[position] += 1
        slots[-1] += max(0, len(texts) + 1 - (POSITION_SLOTS - 1))
        self.quality.add(record.get("quality"), record.get("ce"))
        if set_name == MAIN_SET:
            self._offer_text(str(record.get("text") or "".join(texts)))
        priority = prompt_priority(record, set_name)
        prompt_id = str(record.get("id", record.get("prompt_index", "")))
        per_feature = activations_by_feature(token_features)
        for feature_id, positions in per_feature.items():
            state = self.features.get(feature_id)
            if state is None:
                state = self.features[feature_id] = FeatureState()
            self._add_feature(state, feature_id, set_name, texts, positions, priority, prompt_id)
        self._offer_window(texts, per_feature, priority)

    def _add_feature(
        self,
        state: FeatureState,
        feature_id: int,
        set_name: str,
        texts: list[str],
        positions: list[tuple[int, float]],
        priority: int,
        prompt_id: str,
    ) -> None:
        # The hot loop of aggregation (every firing of every feature): kept flat.
        total = 0.0
        for _, act in positions:
            total += act
        state.total_mass += total
        if positions[0][0] == 0:
            state.first_fires += 1
            state.first_mass += positions[0][1]
            positions = positions[1:]
            if not positions:
                return
        counts = state.counts(set_name)
        tally, hist = state.tally, state.log2_hist
        best_pos, best_act, content_sum = positions[0][0], positions[0][1], 0.0
        for pos, act in positions:
            content_sum += act
            exponent = frexp(act)[1]
            hist[exponent] = hist.get(exponent, 0) + 1
            if act > best_act:
                best_pos, best_act = pos, act
            entry = tally.get(texts[pos])
            if entry is None:
                tally[texts[pos]] = [1, act]
            else:
                entry[0] += 1
                entry[1] += act
        if len(tally) > self.settings.tally_cap:
            state.tally = _pruned(tally, self.settings.tally_cap // 2)
        counts.tokens += len(positions)
        counts.prompts += 1
        counts.activation_sum += content_sum
        counts.max_activation = max(counts.max_activation, best_act)
        meta = (prompt_id, set_name)
        top = state.top
        if len(top) < self.settings.examples_per_feature or (best_act, -priority) > top[0][:2]:
            item = (best_act, -priority, self._window(texts, positions, best_pos, best_act, meta))
            _push_bounded(top, item, self.settings.examples_per_feature)
        own = mix(priority, feature_id)
        sample = state.sample
        if len(sample) < self.settings.samples_per_feature or (-own, -priority) > sample[0][:2]:
            pick_pos, pick_act = positions[own % len(positions)]
            window = self._window(texts, positions, pick_pos, pick_act, meta)
            _push_bounded(sample, (-own, -priority, window), self.settings.samples_per_feature)

    def _window(
        self,
        texts: list[str],
        positions: list[tuple[int, float]],
        center: int,
        center_act: float,
        meta: tuple[str, str],
    ) -> dict[str, Any]:
        start = max(1, center - self.settings.context_before)
        end = min(len(texts), center + self.settings.context_after + 1)
        acts = [0.0] * (end - start)
        for pos, act in positions:
            if start <= pos < end:
                acts[pos - start] = act
        return {
            "tokens": texts[start:end],
            "activations": acts,
            "max": max(acts),
            "at": center_act,
            "prompt_id": meta[0],
            "set": meta[1],
        }

    def _offer_window(
        self, texts: list[str], per_feature: dict[int, list[tuple[int, float]]], priority: int
    ) -> None:
        """Keep a random window of the prompt if its priority is among the lowest seen."""
        if len(texts) < 2:
            return
        pool = self.windows
        cap = self.settings.random_window_pool
        if len(pool) >= cap and (-priority, -priority) <= pool[0][:2]:
            return
        width = self.settings.context_before + self.settings.context_after + 1
        # Content tokens only (never the first real token); the start is fixed by the prompt.
        span = max(1, len(texts) - 1 - width + 1)
        start = 1 + mix(priority, 0x5EED) % span
        end = min(len(texts), start + width)
        features: dict[str, list[float]] = {}
        for feature_id, positions in per_feature.items():
            acts = [0.0] * (end - start)
            hit = False
            for pos, act in positions:
                if start <= pos < end:
                    acts[pos - start] = act
                    hit = True
            if hit:
                features[str(feature_id)] = acts
        window = {"tokens": texts[start:end], "features": features}
        _push_bounded(pool, (-priority, -priority, window), cap)

    def _offer_text(self, text: str) -> None:
        text = text.strip()
        if text and text not in self.short_texts:
            self.short_texts.append(text)
            self.short_texts.sort(key=lambda t: (len(t), t))
            del self.short_texts[self.settings.short_prompts :]

    # --- merging ------------------------------------------------------------------

    def merge(self, other: FeatureAccumulator) -> None:
        """Fold another accumulator (another shard) into this one."""
        if other.settings != self.settings:
            raise ValueError("cannot merge accumulators with different settings")
        for set_name in SETS:
            self.n_prompts[set_name] += other.n_prompts[set_name]
            self.n_tokens[set_name] += other.n_tokens[set_name]
        self.n_first += other.n_first
        for set_name in SETS:
            mine, theirs = self.positions[set_name], other.positions[set_name]
            self.positions[set_name] = [a + b for a, b in zip(mine, theirs, strict=True)]
        self.quality.merge(other.quality)
        for text in other.short_texts:
            self._offer_text(text)
        for item in other.windows:
            _push_bounded(self.windows, item, self.settings.random_window_pool)
        for feature_id, theirs in other.features.items():
            mine = self.features.get(feature_id)
            if mine is None:
                mine = self.features[feature_id] = FeatureState()
            self._merge_feature(mine, theirs)

    def _merge_feature(self, mine: FeatureState, theirs: FeatureState) -> None:
        for set_name, counts in theirs.by_set.items():
            mine.counts(set_name).merge(counts)
        mine.first_fires += theirs.first_fires
        mine.first_mass += theirs.first_mass
        mine.total_mass += theirs.total_mass
        for text, (count, act_sum) in theirs.tally.items():
            entry = mine.tally.setdefault(text, [0, 0.0])
            entry[0] += count
            entry[1] += act_sum
        if len(mine.tally) > self.settings.tally_cap:
            mine.tally = _pruned(mine.tally, self.settings.tally_cap // 2)
        for exponent, count in theirs.log2_hist.items():
            mine.log2_hist[exponent] = mine.log2_hist.get(exponent, 0) + count
        for item in theirs.top:
            _push_bounded(mine.top, item, self.settings.examples_per_feature)
        for item in theirs.sample:
            _push_bounded(mine.sample, item, self.settings.samples_per_feature)

    # --- partial aggregates (one shard's state, stored between Lambda steps) --------

    def to_partial(self) -> dict[str, Any]:
        """The whole state as JSON-ready data (:data:`PARTIAL_FORMAT`, version
        :data:`PARTIAL_VERSION`); :meth:`from_partial` reads it back exactly (floats
        round-trip through JSON unchanged, heaps keep their order).

        Each feature's example windows (most of the state) are stored as JSON *text*, and
        kept as text when read back: merging only compares heap keys, so a window is parsed
        only if it ends up in a bundle (:meth:`top_examples`). Loading a shard's partial
        makes tens of thousands of objects instead of millions."""
        return {
            "format": PARTIAL_FORMAT,
            "version": PARTIAL_VERSION,
            "settings": asdict(self.settings),
            "n_prompts": dict(self.n_prompts),
            "n_tokens": dict(self.n_tokens),
            "n_first": self.n_first,
            "positions": {name: list(slots) for name, slots in self.positions.items()},
            "windows": [[a, b, dict(w)] for a, b, w in self.windows],
            "quality": asdict(self.quality),
            "short_texts": list(self.short_texts),
            "features": {str(fid): _feature_to_json(st) for fid, st in self.features.items()},
        }

    @classmethod
    def from_partial(cls, data: Mapping[str, Any]) -> FeatureAccumulator:
        """An accumulator from :meth:`to_partial`'s data; ValueError for another format or
        version (a partial written by a different saeflow cannot be merged safely)."""
        if data.get("format") != PARTIAL_FORMAT or data.get("version") != PARTIAL_VERSION:
            raise ValueError(
                f"not a {PARTIAL_FORMAT} version {PARTIAL_VERSION} partial: "
                f"format={data.get('format')!r} version={data.get('version')!r}"
            )
        acc = cls(AccumulatorSettings(**data["settings"]))
        acc.n_prompts = {name: int(data["n_prompts"][name]) for name in SETS}
        acc.n_tokens = {name: int(data["n_tokens"][name]) for name in SETS}
        acc.n_first = int(data["n_first"])
        acc.positions = {name: [int(v) for v in data["positions"][name]] for name in SETS}
        acc.windows = [(a, b, _Payload(w)) for a, b, w in data["windows"]]
        acc.quality = QualitySums(**data["quality"])
        acc.short_texts = list(data["short_texts"])
        acc.features = {int(fid): _feature_from_json(st) for fid, st in data["features"].items()}
        return acc

    # --- reading ------------------------------------------------------------------

    def top_examples(self, feature_id: int) -> list[dict[str, Any]]:
        heap = self.features[feature_id].top
        return [_example(item[2]) for item in sorted(heap, key=lambda it: (-it[0], -it[1]))]

    def sampled_examples(self, feature_id: int) -> list[dict[str, Any]]:
        heap = self.features[feature_id].sample
        return [_example(item[2]) for item in sorted(heap, key=lambda it: (-it[0], -it[1]))]

    def random_windows(self) -> list[dict[str, Any]]:
        """The pooled random prompt windows, in priority order (deterministic)."""
        return [dict(item[2]) for item in sorted(self.windows, key=lambda it: -it[0])]


def _pruned(tally: dict[str, list[float]], keep: int) -> dict[str, list[float]]:
    """The ``keep`` tokens with the most activation mass (a bounded heavy-hitter summary:
    exact while no pruning happens, approximate for the rare tail after)."""
    ranked = sorted(tally.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return dict(ranked[:keep])


def _feature_to_json(state: FeatureState) -> dict[str, Any]:
    return {
        "sets": {name: counts.to_json() for name, counts in state.by_set.items()},
        "first": [state.first_fires, state.first_mass],
        "mass": state.total_mass,
        "tally": {text: list(entry) for text, entry in state.tally.items()},
        "hist": {str(exponent): count for exponent, count in state.log2_hist.items()},
        "top": [[a, b, _window_text(example)] for a, b, example in state.top],
        "sample": [[a, b, _window_text(example)] for a, b, example in state.sample],
    }


def _window_text(example: Any) -> str:
    if isinstance(example, str):
        return example  # read from a partial and never parsed: written back as it was
    return json.dumps(example, ensure_ascii=False, separators=(",", ":"))


def _example(payload: Any) -> dict[str, Any]:
    """A heap payload as a window dict (a stored window is parsed here, on first read)."""
    return json.loads(payload) if isinstance(payload, str) else dict(payload)


def _feature_from_json(data: Mapping[str, Any]) -> FeatureState:
    return FeatureState(
        by_set={name: SetCounts.from_json(v) for name, v in data["sets"].items()},
        first_fires=int(data["first"][0]),
        first_mass=float(data["first"][1]),
        total_mass=float(data["mass"]),
        tally=dict(data["tally"]),  # [count, activation sum] lists, as JSON gives them
        log2_hist={int(e): int(c) for e, c in data["hist"].items()},
        # Stored in heap order: still valid heaps, so later pushes and merges work as before.
        # (key, key, window text) tuples, in stored (heap) order; JSON gives the keys' types.
        top=list(map(tuple, data["top"])),
        sample=list(map(tuple, data["sample"])),
    )


class _Payload(dict):
    """A dict that heaps never order by (equal keys leave items in place, no TypeError),
    against another payload or a stored window's text alike."""

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return False


def _push_bounded(heap: list, item: tuple, cap: int) -> None:
    """Keep the ``cap`` largest ``(key1, key2, payload)`` items in a min-heap."""
    payload = item[2]
    # A stored window (text) orders by its text on a tie of both keys: the same window
    # twice, so the order is immaterial.
    if not isinstance(payload, _Payload | str):
        payload = _Payload(payload)
    item = (item[0], item[1], payload)
    if len(heap) < cap:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)
