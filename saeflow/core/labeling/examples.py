"""Which examples a labeler sees, and which are held out to score its explanation.

Scoring on the very examples the explanation was written from would reward
memorisation, so the top examples are split: most go to the explainer, every third
is held out. Random prompt windows (often not firing at all) and the corpus's random
activating contexts are added to the held-out set so the true activations vary and a
correlation means something.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Example = dict[str, Any]


@dataclass(frozen=True)
class ExampleSplit:
    explain: list[Example]
    held_out: list[Example]


def example_text(example: Mapping[str, Any]) -> str:
    return "".join(str(t) for t in example.get("tokens", ()))


def _dedup(examples: list[Example]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for ex in examples:
        key = example_text(ex)
        if key and key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def top_examples(bundle: Mapping[str, Any]) -> list[Example]:
    """Prompt-set and corpus top examples, strongest first, without duplicates."""
    corpus = bundle.get("corpus") or {}
    pool = [dict(ex, source="prompt") for ex in bundle.get("prompt_examples") or ()]
    pool += [dict(ex, source="corpus") for ex in corpus.get("top_examples") or ()]
    pool.sort(key=lambda ex: -float(ex.get("max", 0.0)))
    return _dedup(pool)


def split_examples(
    bundle: Mapping[str, Any],
    *,
    max_explain: int = 10,
    max_held_out_top: int = 4,
    max_random_corpus: int = 3,
    max_random_windows: int = 5,
) -> ExampleSplit:
    tops = top_examples(bundle)
    explain: list[Example] = []
    held_top: list[Example] = []
    for index, ex in enumerate(tops):
        if index % 3 == 2 and len(held_top) < max_held_out_top:
            held_top.append(ex)
        elif len(explain) < max_explain:
            explain.append(ex)
    corpus = bundle.get("corpus") or {}
    randoms = [dict(ex, source="corpus-random") for ex in corpus.get("random_examples") or ()]
    windows = [dict(ex, source="prompt-random") for ex in bundle.get("random_windows") or ()]
    # Prefer windows where the feature is silent: they are the negatives.
    windows.sort(key=lambda ex: float(ex.get("max", 0.0)) > 0.0)
    explained = {example_text(ex) for ex in explain}
    held = _dedup(held_top + randoms[:max_random_corpus] + windows[:max_random_windows])
    held = [ex for ex in held if example_text(ex) not in explained]
    return ExampleSplit(explain=explain, held_out=held)
