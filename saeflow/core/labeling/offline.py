"""The offline heuristic labeller: a label from a feature's strongest tokens, no language model.

It is what runs without credentials or network, and it says so: every label starts with
``[heuristic]``. The label names the feature's strongest tokens in the windows it is explained from (its
strongest on the prompts and on the corpus; first tokens left out upstream; never the
held-out contexts it is scored on), grouped (``cat / kitten / puppy / dog``),
plus a context word when the tokens alone are function words or punctuation. Two features
get the same label only if their strongest tokens are the same.

Its detection rule is as plain as its label: a context "fires" when it contains one of
the tokens the label or its explanation names (the label shows the 4 strongest, the
explanation lists up to 12). Scored like any labeller (:mod:`saeflow.core.labeling.detection`), so
its balanced accuracy against the shuffled baseline says how far token identity alone
explains the feature.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saeflow.core.labeling.answers import Explanation
from saeflow.core.labeling.examples import Example, interleave

OFFLINE_SOURCE = "offline heuristic"
OFFLINE_RULE = "offline heuristic rule: a context fires when it contains one of the label's tokens"
LABEL_TOKENS = 4
# The explanation names more of the strongest tokens than the label shows; the detection
# rule uses every token the label and the explanation name (12 measured best for trained
# SAEs on the topical example sets: 4 tokens catch only a third of the activating contexts).
LISTED_TOKENS = 12
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "after",
        "all",
        "also",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "being",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "not",
        "of",
        "on",
        "one",
        "or",
        "our",
        "out",
        "over",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "too",
        "up",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)


@dataclass(frozen=True)
class TokenGroup:
    """One of the strongest tokens: its display form and the forms it stands for."""

    display: str
    keys: frozenset[str]
    weight: float


def token_key(token: str) -> str:
    """How tokens compare: case and surrounding whitespace ignored (a token that is only
    whitespace, a space or a newline, is itself)."""
    return token.strip().lower() or token


def _is_wordlike(key: str) -> bool:
    return bool(_WORD.fullmatch(key)) and key not in _STOPWORDS


def word_stem(key: str) -> str:
    """A crude stem so that 'bake', 'baked', 'bakes' and 'baking' meet (suffixes only)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(key) > len(suffix) + 2 and key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def match_key(token: str) -> str:
    """How the offline rule compares tokens: case, spaces and simple suffixes ignored."""
    return word_stem(token_key(token))


def strongest_tokens(explain: Sequence[Example], limit: int = LISTED_TOKENS) -> list[TokenGroup]:
    """The tokens the feature fires hardest on in the windows it is explained from, grouped
    by stem; never the held-out contexts it will be scored on. The prompts' strongest and
    the corpus's strongest alternate, prompts first: corpus activations often run higher,
    and a label about the corpus alone would say little about these prompts."""
    rankings = [
        _ranked_tokens([ex for ex in explain if ex.get("source") != "corpus"]),
        _ranked_tokens([ex for ex in explain if ex.get("source") == "corpus"]),
    ]
    merged: dict[str, TokenGroup] = {}
    for group in interleave(*rankings):
        merged.setdefault(next(iter(group.keys)), group)  # a stem the other side had first
    ordered = list(merged.values())
    # Past the label's few, only content words: a 'the' or a '.' would match any context.
    kept = [
        g for i, g in enumerate(ordered) if i < LABEL_TOKENS or _is_wordlike(next(iter(g.keys)))
    ]
    return kept[:limit]


def _ranked_tokens(examples: Sequence[Example]) -> list[TokenGroup]:
    """Every firing token of ``examples``, grouped by stem, strongest first."""
    weights: dict[str, float] = {}
    forms: dict[str, Counter[str]] = {}
    for example in examples:
        tokens = [str(t) for t in example.get("tokens") or ()]
        for token, act in zip(tokens, example.get("activations") or (), strict=False):
            key = match_key(token)
            if float(act) <= 0 or not key:
                continue
            weights[key] = max(weights.get(key, 0.0), float(act))
            forms.setdefault(key, Counter())[token.strip() or token] += 1  # display form
    ranked = sorted(weights, key=lambda k: (-weights[k], k))
    return [
        TokenGroup(forms[key].most_common(1)[0][0], frozenset({key}), weights[key])
        for key in ranked
    ]


def _words_of(example: Mapping[str, Any]) -> set[str]:
    return {w.lower() for w in _WORD.findall("".join(map(str, example.get("tokens", ()))))}


def context_word(
    examples: Sequence[Example], negatives: Sequence[Example], exclude: set[str]
) -> str | None:
    """The content word the feature's top examples share and its silent contexts do not:
    in at least a third of the examples (two at least), and 25 points more often there."""
    if not examples:
        return None
    pos: Counter[str] = Counter()
    for ex in examples:
        # ``exclude`` holds the label's stems: a label token is never its own context.
        pos.update(w for w in _words_of(ex) if w not in _STOPWORDS and word_stem(w) not in exclude)
    neg: Counter[str] = Counter()
    for ex in negatives:
        neg.update(_words_of(ex))
    best, best_gap = None, 0.25
    for word, count in sorted(pos.items()):
        share = count / len(examples)
        gap = share - (neg[word] / len(negatives) if negatives else 0.0)
        if count >= 2 and share >= 1 / 3 and gap > best_gap:
            best, best_gap = word, gap
    return best


def _shown(group: TokenGroup) -> str:
    return group.display if _WORD.fullmatch(group.display) else repr(group.display)


def offline_explanation(
    bundle: Mapping[str, Any], explain: Sequence[Example], negatives: Sequence[Example] = ()
) -> Explanation:
    groups = strongest_tokens(explain)
    shown = " / ".join(_shown(g) for g in groups[:LABEL_TOKENS]) or "no clear token"
    label = f"[heuristic] {shown}"
    top = groups[:LABEL_TOKENS]
    weak = sum(1 for g in top if not _is_wordlike(token_key(g.display)))
    word = None
    if top and weak * 2 >= len(top):
        word = context_word(explain, negatives, {k for g in groups for k in g.keys})
        if word:
            label += f" (context: {word})"
    parts = [
        "Offline heuristic label (no language model was asked): the feature fires hardest on ",
        shown,
        " across the prompts and the reference corpus",
    ]
    if len(groups) > LABEL_TOKENS:
        parts.append(f"; also on {', '.join(_shown(g) for g in groups[LABEL_TOKENS:])}")
    if word:
        parts.append(f"; in text about '{word}'")
    promoted = [
        str(t.get("token", ""))
        for t in ((bundle.get("corpus") or {}).get("promoted_tokens") or [])[:3]
    ]
    if promoted:
        parts.append(f"; through the unembedding it promotes {', '.join(map(repr, promoted))}")
    parts.append(".")
    return Explanation(label=label[:80], explanation="".join(parts)[:600], confidence="low")


def heuristic_predictions(
    groups: Sequence[TokenGroup], contexts: Sequence[Mapping[str, Any]]
) -> list[bool]:
    """The offline rule: a context fires when one of its tokens is one the label or its
    explanation names."""
    keys = {k for g in groups for k in g.keys}
    return [any(match_key(str(t)) in keys for t in ctx.get("tokens", ())) for ctx in contexts]
