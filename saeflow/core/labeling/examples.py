"""Which contexts a labeller explains from, and which are held out to score the label.

Scoring follows Delphi's *detection* score: the labeller (Claude, or the offline
heuristic's own rule) sees held-out contexts it did not write the label from and predicts,
from the label alone, which of them make the feature fire. Half are activating contexts,
spread across the feature's activation range (not only its strongest: a label that only
explains the peak is a weak label), from the prompts and the corpus; half are contexts
where it does not fire at all, from the prompts and the corpus. The score is the balanced
accuracy of those predictions.

Pools, from the feature bundle (see saeflow.steps.aggregate):

- ``prompt_examples``: the prompt set's strongest windows; ``corpus.top_examples``: the
  corpus's. These are what the label is written from (every ``hold_every``-th is held out,
  so the strongest contexts are scored too).
- ``prompt_samples``: prompt windows around a random firing of the feature;
  ``corpus.random_examples``: the same on the corpus. Held out: they cover the whole
  activation range.
- ``random_windows`` (prompt windows) and ``corpus_negatives`` (corpus windows): those where
  the feature is silent are the negatives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

Example = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class SplitSettings:
    max_explain: int = 20
    max_positive: int = 10
    hold_every: int = 4
    """Every n-th top example (the 2nd, 6th, 10th...) is held out for scoring."""


@dataclass(frozen=True)
class ExampleSplit:
    explain: list[Example]
    positives: list[Example]
    negatives: list[Example]

    @property
    def held_out(self) -> list[Example]:
        """Scoring contexts, positives then negatives, each with ``fires``."""
        return [dict(ex, fires=True) for ex in self.positives] + [
            dict(ex, fires=False) for ex in self.negatives
        ]


def example_text(example: Mapping[str, Any]) -> str:
    return "".join(str(t) for t in example.get("tokens", ()))


def _fires(example: Mapping[str, Any]) -> bool:
    return float(example.get("max", 0.0) or 0.0) > 0.0


def _tagged(examples: Sequence[Mapping[str, Any]] | None, source: str) -> list[Example]:
    return [dict(ex, source=source) for ex in examples or ()]


def _dedup(examples: list[Example], seen: set[str]) -> list[Example]:
    out = []
    for ex in examples:
        key = example_text(ex)
        if key and key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def _spread(examples: list[Example], n: int) -> list[Example]:
    """``n`` examples evenly spaced over the activation range (weakest to strongest)."""
    if len(examples) <= n:
        return examples
    ordered = sorted(examples, key=lambda ex: (float(ex.get("max", 0.0)), example_text(ex)))
    step = (len(ordered) - 1) / (n - 1) if n > 1 else 0
    return [ordered[round(i * step)] for i in range(n)]


def interleave(*pools: Sequence[T]) -> list[T]:
    """Round robin over ``pools``: the first of each, then the second of each, and so on."""
    out: list[T] = []
    for i in range(max((len(p) for p in pools), default=0)):
        out.extend(p[i] for p in pools if i < len(p))
    return out


def split_examples(
    bundle: Mapping[str, Any], settings: SplitSettings | None = None
) -> ExampleSplit:
    """The explain set and the balanced held-out set of one feature bundle (deterministic)."""
    settings = settings or SplitSettings()
    corpus = bundle.get("corpus") or {}
    tops = _tagged(bundle.get("prompt_examples"), "prompt") + _tagged(
        corpus.get("top_examples"), "corpus"
    )
    tops.sort(key=lambda ex: (-float(ex.get("max", 0.0)), example_text(ex)))
    tops = [ex for ex in _dedup(tops, set()) if _fires(ex)]
    explain: list[Example] = []
    held_top: list[Example] = []
    for index, ex in enumerate(tops):
        if index % settings.hold_every == 1:
            held_top.append(ex)
        elif len(explain) < settings.max_explain:
            explain.append(ex)
    seen = {example_text(ex) for ex in explain}
    sampled = _tagged(bundle.get("prompt_samples"), "prompt-sample") + _tagged(
        corpus.get("random_examples"), "corpus-sample"
    )
    positives = _dedup([ex for ex in held_top + sampled if _fires(ex)], seen)
    positives = _spread(positives, settings.max_positive)
    prompt_negatives = [
        ex for ex in _tagged(bundle.get("random_windows"), "prompt-window") if not _fires(ex)
    ]
    corpus_negatives = [
        ex for ex in _tagged(bundle.get("corpus_negatives"), "corpus-window") if not _fires(ex)
    ]
    negatives = _dedup(interleave(prompt_negatives, corpus_negatives), seen)
    return ExampleSplit(explain, positives, negatives[: max(len(positives), 1)])
