"""The offline heuristic labeler: a label from token statistics, no language model.

It is what runs without credentials or network. Its labels say plainly that they are
heuristic, and its score is a heuristic too: a "simulator" that predicts a held-out
example fires when it contains one of the feature's top tokens, correlated with the
true activations exactly like an LLM score. It is only comparable to itself.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from saeflow.core.labeling.examples import Example, split_examples
from saeflow.core.labeling.prompts import Explanation
from saeflow.core.labeling.scoring import Score, score_predictions, true_activations

OFFLINE_SOURCE = "offline heuristic"
OFFLINE_SCORE_METHOD = (
    "offline heuristic: predicts 10 when a held-out excerpt contains one of the label's "
    "tokens, 3 when it contains one of its context words, else 0; Pearson r with the "
    "true max activations"
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
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
        "was",
        "we",
        "were",
        "what",
        "when",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
        "would",
        "could",
        "should",
        "do",
        "does",
        "did",
        "can",
        "just",
        "about",
        "been",
        "being",
    ]
)


def activating_tokens(examples: Sequence[Example], limit: int = 3) -> list[tuple[str, int]]:
    """Tokens that carry the max activation of the examples, most frequent first."""
    counts: Counter[str] = Counter()
    for ex in examples:
        tokens = list(ex.get("tokens", ()))
        acts = list(ex.get("activations", ()))
        if not tokens or not acts:
            continue
        top = max(acts)
        for tok, act in zip(tokens, acts, strict=False):
            if top > 0 and act >= 0.5 * top and str(tok).strip():
                counts[str(tok)] += 1
    return counts.most_common(limit)


def context_words(examples: Sequence[Example], exclude: set[str], limit: int = 3) -> list[str]:
    """Words (not stopwords, not the activating tokens) shared by several examples."""
    doc_freq: Counter[str] = Counter()
    for ex in examples:
        words = {w.lower() for w in _WORD.findall("".join(map(str, ex.get("tokens", ()))))}
        doc_freq.update(words - _STOPWORDS - exclude)
    return [w for w, n in doc_freq.most_common(limit) if n >= 2]


def offline_explanation(bundle: Mapping[str, Any], explain: Sequence[Example]) -> Explanation:
    tokens = activating_tokens(explain)
    top_tokens = [tok for tok, _ in tokens]
    if not top_tokens:
        top_tokens = [t["token"] for t in (bundle.get("stats") or {}).get("top_tokens", [])[:3]]
    words = context_words(explain, {t.strip().lower() for t in top_tokens})
    corpus = bundle.get("corpus") or {}
    promoted = [str(t.get("token", "")) for t in (corpus.get("promoted_tokens") or [])[:3]]

    shown = " / ".join(repr(t) for t in top_tokens) or "no clear token"
    label = f"[heuristic] {shown}"
    parts = [
        "Offline heuristic label (no language model was asked): ",
        f"the feature fires most strongly on {shown}",
    ]
    if tokens:
        parts.append(f" (top token in {tokens[0][1]} of {len(explain)} top examples)")
    if words:
        parts.append(f"; context words its top examples share: {', '.join(words)}")
    if promoted:
        parts.append(f"; through the unembedding it promotes {', '.join(map(repr, promoted))}")
    parts.append(".")
    return Explanation(label=label[:80], explanation="".join(parts)[:600], confidence="low")


def heuristic_predictions(explain: Sequence[Example], held_out: Sequence[Example]) -> list[float]:
    tokens = {tok.strip().lower() for tok, _ in activating_tokens(explain) if tok.strip()}
    words = set(context_words(explain, tokens))
    predictions = []
    for ex in held_out:
        pieces = {str(t).strip().lower() for t in ex.get("tokens", ())}
        text_words = {w.lower() for w in _WORD.findall("".join(map(str, ex.get("tokens", ()))))}
        if pieces & tokens:
            predictions.append(10.0)
        elif text_words & words:
            predictions.append(3.0)
        else:
            predictions.append(0.0)
    return predictions


def label_offline(bundle: Mapping[str, Any]) -> tuple[Explanation, Score]:
    """Heuristic label and heuristic score for one feature bundle."""
    split = split_examples(bundle)
    explanation = offline_explanation(bundle, split.explain)
    truth = true_activations(split.held_out)
    predicted = heuristic_predictions(split.explain, split.held_out)
    return explanation, score_predictions(predicted, truth, OFFLINE_SCORE_METHOD)
