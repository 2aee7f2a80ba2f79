"""Streaming feature statistics over extraction records: ranking, contrast, selection.

Extraction output can be large (up to a million prompts split over shards), so the
aggregator sees one record at a time and keeps only bounded state per feature:
counters, a bounded heap of top examples, and a bounded token tally. A small global
reservoir of random prompt windows gives every chosen feature examples on which it
does *not* fire, which the explanation scoring needs to be meaningful.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import frexp
from typing import Any

from saeflow.core.errors import ExtractionFailed, PromptTooLong

MAIN_SET = "main"
CONTRAST_SET = "contrast"


@dataclass(frozen=True)
class AggregateSettings:
    """How the aggregator ranks features and how much it keeps per feature."""

    top_k_features: int = 20
    examples_per_feature: int = 12
    context_before: int = 12
    context_after: int = 4
    # A feature among a token's top features on more than this fraction of tokens says
    # little about this prompt set (position-like, punctuation-like features): not ranked.
    # Not lower: a prompt set on one theme (all code, say) has a legitimately frequent
    # theme feature, and the contrast set is the tool to separate those.
    max_token_frequency: float = 0.3
    detailed_features: int = 200  # ranked features whose top tokens aggregate.json keeps
    top_tokens_per_feature: int = 10
    random_window_pool: int = 64
    contrast_features_per_side: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k_features < 0:
            raise ValueError("top_k_features must be >= 0")
        if self.examples_per_feature < 1:
            raise ValueError("examples_per_feature must be >= 1")
        if not 0.0 < self.max_token_frequency <= 1.0:
            raise ValueError("max_token_frequency must be in (0, 1]")


@dataclass(slots=True)
class _SetCounts:
    tokens: int = 0
    prompts: int = 0
    activation_sum: float = 0.0
    max_activation: float = 0.0

    def to_dict(self, n_tokens: int, n_prompts: int) -> dict[str, Any]:
        return {
            "token_count": self.tokens,
            "prompt_count": self.prompts,
            "frequency": _ratio(self.tokens, n_tokens),
            "prompt_frequency": _ratio(self.prompts, n_prompts),
            "mean_activation": _ratio(self.activation_sum, self.tokens),
            "max_activation": self.max_activation,
        }


@dataclass(slots=True)
class _FeatureState:
    by_set: dict[str, _SetCounts] = field(default_factory=dict)
    # token text -> [count, activation sum]; pruned when it grows, so approximate
    # for the rare tail but exact enough for the most frequent tokens.
    token_tally: dict[str, list[float]] = field(default_factory=dict)
    # activation histogram over log2 bins: exponent e counts activations in [2^(e-1), 2^e)
    log2_hist: dict[int, int] = field(default_factory=dict)
    # min-heap of (max activation, insertion order, example)
    top: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)

    def counts(self, set_name: str) -> _SetCounts:
        counts = self.by_set.get(set_name)
        if counts is None:
            counts = self.by_set[set_name] = _SetCounts()
        return counts


@dataclass(frozen=True)
class AggregateResult:
    """What aggregation found: plain JSON pieces plus the chosen feature ids."""

    stats: dict[str, Any]  # the body of aggregate.json (without bundles)
    reported_ids: list[int]  # features the report shows, in rank order
    examples: dict[int, list[dict[str, Any]]]  # top prompt examples of reported features
    random_windows: dict[int, list[dict[str, Any]]]  # held-out prompt windows per feature


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else 0.0


class FeatureAggregator:
    """Accumulates extraction records one at a time (``add``) then ranks (``result``)."""

    def __init__(self, settings: AggregateSettings | None = None) -> None:
        self.settings = settings or AggregateSettings()
        self._features: dict[int, _FeatureState] = {}
        self._n_tokens = {MAIN_SET: 0, CONTRAST_SET: 0}
        self._n_prompts = {MAIN_SET: 0, CONTRAST_SET: 0}
        self._order = itertools.count()
        self._rng = random.Random(self.settings.seed)
        self._windows: list[dict[str, Any]] = []
        self._windows_seen = 0

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.add(record)

    def add(self, record: Mapping[str, Any]) -> None:
        """Fold one extraction output record into the statistics."""
        error = record.get("error")
        if error:
            name = error.get("error") if isinstance(error, Mapping) else str(error)
            message = error.get("message", "") if isinstance(error, Mapping) else ""
            detail = f"prompt {record.get('id', record.get('prompt_index'))!s}: {message}"
            if name == "PromptTooLong":
                raise PromptTooLong(detail)
            raise ExtractionFailed(f"extraction reported {name} for {detail}")
        tokens = record.get("tokens")
        if not isinstance(tokens, list):
            raise ExtractionFailed(f"extraction record without tokens: {_describe(record)}")
        set_name = CONTRAST_SET if record.get("set") == CONTRAST_SET else MAIN_SET
        self._n_prompts[set_name] += 1
        self._n_tokens[set_name] += len(tokens)

        texts = [str(tok.get("text", "")) for tok in tokens]
        per_feature = _activations_by_feature(tokens)
        # The hot loop of aggregation (every firing of every feature): kept inline.
        features = self._features
        heap_cap = self.settings.examples_per_feature
        tally_cap = self.settings.top_tokens_per_feature * 4
        for feature_id, positions in per_feature.items():
            state = features.get(feature_id)
            if state is None:
                state = features[feature_id] = _FeatureState()
            counts = state.by_set.get(set_name) or state.counts(set_name)
            tally = state.token_tally
            hist = state.log2_hist
            best_pos, best_act = positions[0]
            total = 0.0
            for pos, act in positions:
                total += act
                exponent = frexp(act)[1]
                hist[exponent] = hist.get(exponent, 0) + 1
                if act > best_act:
                    best_pos, best_act = pos, act
                text = texts[pos]
                entry = tally.get(text)
                if entry is None:
                    tally[text] = [1, act]
                else:
                    entry[0] += 1
                    entry[1] += act
            if len(tally) > tally_cap:
                # Bounded memory: keep the most frequent half (approximate for the tail).
                ranked = sorted(tally.items(), key=lambda kv: -kv[1][0])
                state.token_tally = dict(ranked[: tally_cap // 2])
            counts.tokens += len(positions)
            counts.prompts += 1
            counts.activation_sum += total
            if best_act > counts.max_activation:
                counts.max_activation = best_act
            heap = state.top
            if len(heap) < heap_cap or best_act > heap[0][0]:
                self._offer_example(state, record, set_name, texts, positions, best_pos, best_act)
        self._offer_window(texts, per_feature)

    def _offer_example(
        self,
        state: _FeatureState,
        record: Mapping[str, Any],
        set_name: str,
        texts: list[str],
        positions: list[tuple[int, float]],
        best_pos: int,
        best_act: float,
    ) -> None:
        heap = state.top
        cap = self.settings.examples_per_feature
        if len(heap) >= cap and best_act <= heap[0][0]:
            return  # building the window is the costly part: skip it when it cannot enter
        start = max(0, best_pos - self.settings.context_before)
        end = min(len(texts), best_pos + self.settings.context_after + 1)
        acts = [0.0] * (end - start)
        for pos, act in positions:
            if start <= pos < end:
                acts[pos - start] = act
        example = {
            "tokens": texts[start:end],
            "activations": acts,
            "max": best_act,
            "prompt_id": str(record.get("id", record.get("prompt_index", ""))),
            "set": set_name,
        }
        item = (best_act, next(self._order), example)
        if len(heap) < cap:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)

    def _offer_window(self, texts: list[str], per_feature: dict[int, list]) -> None:
        """Reservoir-sample one random window per prompt (used as held-out examples)."""
        if not texts:
            return
        self._windows_seen += 1
        cap = self.settings.random_window_pool
        slot = len(self._windows) if len(self._windows) < cap else None
        if slot is None:
            j = self._rng.randrange(self._windows_seen)
            if j >= cap:
                return
            slot = j
        width = self.settings.context_before + self.settings.context_after + 1
        start = self._rng.randrange(max(1, len(texts) - width + 1))
        end = min(len(texts), start + width)
        features: dict[int, list[float]] = {}
        for feature_id, positions in per_feature.items():
            acts = [0.0] * (end - start)
            hit = False
            for pos, act in positions:
                if start <= pos < end:
                    acts[pos - start] = act
                    hit = True
            if hit:
                features[feature_id] = acts
        window = {"tokens": texts[start:end], "features": features}
        if slot == len(self._windows):
            self._windows.append(window)
        else:
            self._windows[slot] = window

    # --- results ---------------------------------------------------------------

    def feature_stats(self, feature_id: int) -> dict[str, Any]:
        state = self._features[feature_id]
        main = state.by_set.get(MAIN_SET, _SetCounts())
        contrast = state.by_set.get(CONTRAST_SET)
        stats: dict[str, Any] = {"id": feature_id}
        stats.update(main.to_dict(self._n_tokens[MAIN_SET], self._n_prompts[MAIN_SET]))
        stats["importance"] = _ratio(main.activation_sum, self._n_tokens[MAIN_SET])
        stats["dense"] = stats["frequency"] > self.settings.max_token_frequency
        stats["top_tokens"] = self._top_tokens(state)
        if self._n_prompts[CONTRAST_SET]:
            stats["contrast"] = (contrast or _SetCounts()).to_dict(
                self._n_tokens[CONTRAST_SET], self._n_prompts[CONTRAST_SET]
            )
        return stats

    def _top_tokens(self, state: _FeatureState) -> list[dict[str, Any]]:
        ranked = sorted(state.token_tally.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        return [
            {"token": text, "count": int(count), "mean_activation": act_sum / count}
            for text, (count, act_sum) in ranked[: self.settings.top_tokens_per_feature]
        ]

    def result(self) -> AggregateResult:
        if self._n_prompts[MAIN_SET] == 0:
            raise ExtractionFailed("extraction produced no records for the main prompt set")
        all_stats = {fid: self.feature_stats(fid) for fid in self._features}
        ranked = rank_features(all_stats.values())
        contrast = self._contrast(all_stats) if self._n_prompts[CONTRAST_SET] else None

        reported: list[int] = [s["id"] for s in ranked[: self.settings.top_k_features]]
        if contrast is not None:
            per_side = self.settings.contrast_features_per_side
            for side in ("more_in_main", "more_in_contrast"):
                for entry in contrast[side][:per_side]:
                    if entry["id"] not in reported:
                        reported.append(entry["id"])

        ranked_ids = {s["id"] for s in ranked}
        # aggregate.json lists every feature seen (up to d_sae of them): token tallies
        # only where someone will read them, to keep the file small.
        keep_tokens = set(reported) | {s["id"] for s in ranked[: self.settings.detailed_features]}
        for s in itertools.chain(ranked, all_stats.values()):
            if s["id"] not in keep_tokens:
                s.pop("top_tokens", None)
        stats = {
            "n_prompts": self._n_prompts[MAIN_SET],
            "n_tokens": self._n_tokens[MAIN_SET],
            "n_contrast_prompts": self._n_prompts[CONTRAST_SET],
            "n_contrast_tokens": self._n_tokens[CONTRAST_SET],
            "n_features_seen": len(all_stats),
            "n_dense_excluded": sum(1 for s in all_stats.values() if s["dense"]),
            "settings": {
                "top_k_features": self.settings.top_k_features,
                "max_token_frequency": self.settings.max_token_frequency,
                "ranking": "importance = frequency x mean activation (sum of activations / "
                "tokens) over the main set; features firing on more than "
                f"{self.settings.max_token_frequency:.0%} of tokens are excluded",
            },
            "features": ranked
            + sorted(
                (s for s in all_stats.values() if s["id"] not in ranked_ids),
                key=lambda s: s["id"],
            ),
            "reported": reported,
            "contrast": contrast,
        }
        by_id = {s["id"]: s for s in ranked}
        by_id.update({fid: s for fid, s in all_stats.items() if fid not in by_id})
        for fid in reported:
            by_id[fid]["histogram"] = self._histogram(fid)
        examples = {fid: self._sorted_examples(fid) for fid in reported}
        windows = {fid: self._windows_for(fid) for fid in reported}
        return AggregateResult(stats, reported, examples, windows)

    def _histogram(self, feature_id: int) -> dict[str, Any]:
        """Activations of the feature on this prompt set (both sets), in log2 bins."""
        hist = self._features[feature_id].log2_hist
        low, high = min(hist), max(hist)
        return {
            "edges": [2.0 ** (e - 1) for e in range(low, high + 2)],
            "counts": [hist.get(e, 0) for e in range(low, high + 1)],
            "scale": "log2",
            "source": "prompt set",
        }

    def _sorted_examples(self, feature_id: int) -> list[dict[str, Any]]:
        heap = self._features[feature_id].top
        return [item[2] for item in sorted(heap, key=lambda it: (-it[0], it[1]))]

    def _windows_for(self, feature_id: int) -> list[dict[str, Any]]:
        out = []
        for window in self._windows:
            acts = window["features"].get(feature_id)
            if acts is None:
                acts = [0.0] * len(window["tokens"])
            out.append({"tokens": list(window["tokens"]), "activations": acts, "max": max(acts)})
        return out

    def _contrast(self, all_stats: dict[int, dict[str, Any]]) -> dict[str, Any]:
        rows = []
        for fid, stats in all_stats.items():
            other = stats["contrast"]
            # A feature dense in both sets fires everywhere; dense in one set only is
            # exactly the kind of difference the contrast is for.
            if stats["dense"] and other["frequency"] > self.settings.max_token_frequency:
                continue
            rows.append(
                {
                    "id": fid,
                    "main_frequency": stats["frequency"],
                    "contrast_frequency": other["frequency"],
                    "frequency_diff": stats["frequency"] - other["frequency"],
                    "main_prompt_frequency": stats["prompt_frequency"],
                    "contrast_prompt_frequency": other["prompt_frequency"],
                    "main_mean_activation": stats["mean_activation"],
                    "contrast_mean_activation": other["mean_activation"],
                    "activation_diff": stats["mean_activation"] - other["mean_activation"],
                }
            )
        limit = max(self.settings.top_k_features, self.settings.contrast_features_per_side)
        more_main = sorted(
            (r for r in rows if r["frequency_diff"] > 0),
            key=lambda r: (-r["frequency_diff"], r["id"]),
        )
        more_contrast = sorted(
            (r for r in rows if r["frequency_diff"] < 0),
            key=lambda r: (r["frequency_diff"], r["id"]),
        )
        return {
            "n_prompts": {
                MAIN_SET: self._n_prompts[MAIN_SET],
                CONTRAST_SET: self._n_prompts[CONTRAST_SET],
            },
            "n_tokens": {
                MAIN_SET: self._n_tokens[MAIN_SET],
                CONTRAST_SET: self._n_tokens[CONTRAST_SET],
            },
            "more_in_main": more_main[:limit],
            "more_in_contrast": more_contrast[:limit],
        }


def rank_features(stats: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Non-dense features active in the main set, by importance (ties: by id)."""
    eligible = [dict(s) for s in stats if not s["dense"] and s["token_count"] > 0]
    eligible.sort(key=lambda s: (-s["importance"], s["id"]))
    for rank, s in enumerate(eligible, start=1):
        s["rank"] = rank
    return eligible


def _activations_by_feature(tokens: list[Any]) -> dict[int, list[tuple[int, float]]]:
    """feature id -> [(token position, activation)] for the positive activations."""
    per_feature: dict[int, list[tuple[int, float]]] = {}
    for pos, tok in enumerate(tokens):
        for feat in tok.get("features") or ():
            act = float(feat["activation"])
            if act > 0.0:
                fid = feat["id"]
                hits = per_feature.get(fid)
                if hits is None:
                    per_feature[fid] = [(pos, act)]
                else:
                    hits.append((pos, act))
    return per_feature


def _describe(record: Mapping[str, Any]) -> str:
    return f"prompt_index={record.get('prompt_index')!r} id={record.get('id')!r}"


# --- choosing what to label -------------------------------------------------------


@dataclass(frozen=True)
class LabelBudget:
    """Caps on labelling: at most ``max_features`` and an estimated ``max_usd``."""

    max_features: int | None = None
    max_usd: float | None = None
    usd_per_feature: float = 0.0  # estimated cost of labelling + scoring one feature


def choose_features_to_label(reported_ids: list[int], budget: LabelBudget) -> tuple[list[int], str]:
    """The prefix of ``reported_ids`` the budget allows, and why it stops where it does."""
    n = len(reported_ids)
    reason = f"all {n} reported features"
    if budget.max_features is not None and budget.max_features < n:
        n = max(0, budget.max_features)
        reason = f"capped at label.max_features={budget.max_features}"
    if budget.max_usd is not None and budget.usd_per_feature > 0:
        affordable = int(budget.max_usd // budget.usd_per_feature)
        if affordable < n:
            n = max(0, affordable)
            reason = (
                f"capped by label.max_usd={budget.max_usd:g} at an estimated "
                f"{budget.usd_per_feature:.4f} USD per feature"
            )
    return reported_ids[:n], reason


# --- bundles ----------------------------------------------------------------------


CORPUS_FIELDS = (
    "density",
    "max_activation",
    "top_examples",
    "random_examples",
    "histogram",
    "promoted_tokens",
    "suppressed_tokens",
)


def pick_corpus_data(
    lines: Iterable[Mapping[str, Any]], wanted: set[int]
) -> dict[int, dict[str, Any]]:
    """One streaming pass over feature_data.jsonl records, keeping only ``wanted`` ids."""
    found: dict[int, dict[str, Any]] = {}
    for line in lines:
        fid = line.get("id")
        if isinstance(fid, int) and fid in wanted:
            found[fid] = {key: line[key] for key in CORPUS_FIELDS if key in line}
            if len(found) == len(wanted):
                break
    return found


def build_bundle(
    *,
    feature_id: int,
    sae_id: str,
    run_id: str,
    stats: Mapping[str, Any],
    prompt_examples: list[dict[str, Any]],
    random_windows: list[dict[str, Any]],
    corpus: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Everything a labeler and the report need about one feature."""
    return {
        "feature_id": feature_id,
        "sae_id": sae_id,
        "run_id": run_id,
        "stats": dict(stats),
        "prompt_examples": prompt_examples,
        "random_windows": random_windows,
        "corpus": dict(corpus) if corpus is not None else None,
    }
