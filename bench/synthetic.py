"""Synthetic inputs for the scale bench: a big prompt file and extraction output shards
shaped like the real worker's (compact records, 8 features a token from a Zipf-like law
over the default SAE's 4608 features, the d_in-float quality sums), so that no LM runs."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

D_SAE = 4608  # the default SAE: 8 x 576
D_IN = 576
FEATURES_PER_TOKEN = 8
TOKENS_PER_PROMPT = 64
_WORDS = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on",
    "cat", "dog", "market", "planet", "recipe", "guitar", "goal", "protein", "river", "code",
    "price", "orbit", "bread", "melody", "league", "patient", "garden", "engine", "storm",
]  # fmt: skip


def vocabulary(size: int = 5000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f" {w}" for w in _WORDS]
    while len(words) < size:
        words.append(" " + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)))
    return words


def prompt_lines(n: int, seed: int = 0, long_every: int = 100) -> Iterator[bytes]:
    """``n`` JSONL prompt lines of about 64 tokens (18 words, most made of random letters:
    ~3.5 tokens each); every ``long_every``-th is 100 words, ~350 tokens in ~700 bytes: over
    the byte bound of 512 tokens, so validation counts it exactly."""
    rng, words = random.Random(seed), vocabulary()
    for i in range(n):
        length = 100 if long_every and i % long_every == long_every - 1 else 18
        text = "".join(rng.choice(words) for _ in range(length)).strip()
        yield json.dumps({"prompt": text, "id": f"s{i}"}).encode() + b"\n"


def write_prompt_file(path: Path, n: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with path.open("wb") as out:
        for block in _blocks(prompt_lines(n), 10_000):
            out.write(block)
            size += len(block)
    return size


def _blocks(lines: Iterator[bytes], size: int) -> Iterator[bytes]:
    while block := b"".join(itertools.islice(lines, size)):
        yield block


def extraction_records(shard: int, n_prompts: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Compact extraction records of one shard (prompt indices follow the shard)."""
    rng, words = random.Random(seed * 100_003 + shard), vocabulary()
    weights = list(itertools.accumulate(1.0 / (rank + 10) ** 1.1 for rank in range(D_SAE)))
    permutation = list(range(D_SAE))
    random.Random(seed).shuffle(permutation)  # which ids are common: fixed for the "SAE"
    for j in range(n_prompts):
        texts = [rng.choice(words) for _ in range(TOKENS_PER_PROMPT)]
        ids = rng.choices(permutation, cum_weights=weights, k=TOKENS_PER_PROMPT * 12)
        features = []
        for t in range(TOKENS_PER_PROMPT):
            chosen = list(dict.fromkeys(ids[t * 12 : (t + 1) * 12]))[:FEATURES_PER_TOKEN]
            acts = sorted((round(rng.lognormvariate(1.0, 0.8), 4) for _ in chosen), reverse=True)
            features.append([[f, a] for f, a in zip(chosen, acts, strict=False)])
        index = shard * n_prompts + j
        yield {
            "prompt_index": index,
            "id": f"s{index}",
            "set": "main",
            "n_tokens": TOKENS_PER_PROMPT,
            "tokens": texts,
            "features": features,
            "summary": [],
            "quality": {
                "n": TOKENS_PER_PROMPT,
                "sq_err": round(rng.uniform(50, 80), 4),
                "sq_norm": round(rng.uniform(900, 1100), 4),
                "sum": [round(rng.gauss(0, 3), 4) for _ in range(D_IN)],
            },
            "ce": None,
            "error": None,
        }


def extraction_shard(shard: int, n_prompts: int) -> bytes:
    return b"".join(
        json.dumps(r, separators=(",", ":")).encode() + b"\n"
        for r in extraction_records(shard, n_prompts)
    )


def feature_summary(seed: int = 0) -> dict[str, Any]:
    """A feature_summary.json (schema 1) for the synthetic SAE: the corpus reference."""
    rng = random.Random(seed + 7)
    return {
        "schema_version": 1,
        "d_sae": D_SAE,
        "n_tokens": 1_000_000,
        "n_windows": 8000,
        "fire_counts": [rng.randint(0, 5000) for _ in range(D_SAE)],
        "density": [0.0] * D_SAE,
        "mean_activation": [round(rng.uniform(1, 6), 4) for _ in range(D_SAE)],
        "max_activation": [round(rng.uniform(6, 30), 4) for _ in range(D_SAE)],
        "first_token": {"rule": "synthetic", "features": [], "fire_rate": [], "mass_share": []},
    }
