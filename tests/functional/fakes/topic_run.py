"""A synthetic run with topical features, as the aggregate step finds it in the bucket.

Eight topic features, each firing on its topic's words (cities, animals, food, colours,
music, weather, tools, sport), strongly on some prompts and weakly on others, a dense
feature that fires on every token, extraction output for ~60 prompts, and an SAE
directory (metrics.json, feature_data.jsonl with corpus examples, corpus_windows.jsonl
with corpus contexts where no topic fires, weights.sha256). Deterministic: the same call
writes the same bytes. ``extra_prompts`` are added to the prompt set (e.g. injection
attempts); their topic words fire hardest, so they lead their features' examples.

Used by the labelling tests (tests/functional) and by ``make bench`` (bench/bench_labels).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from saeflow.core import layout

RUN_ID = "topics-00112233aabb"
SAE_ID = "saes/smollm2-135m-instruct/blocks.15.hook_resid_post/topics0123456789"
WEIGHTS_SHA256 = hashlib.sha256(b"topic-run synthetic SAE weights").hexdigest()
DENSE = 3
TOPICS: dict[int, tuple[str, ...]] = {
    10: ("Paris", "London", "Tokyo", "Rome", "Berlin"),
    11: ("cat", "dog", "horse", "rabbit", "parrot"),
    12: ("bread", "cheese", "soup", "rice", "apples"),
    13: ("red", "blue", "green", "yellow", "purple"),
    14: ("piano", "guitar", "violin", "drums", "trumpet"),
    15: ("rain", "snow", "wind", "storm", "fog"),
    16: ("hammer", "pliers", "drill", "wrench", "chisel"),
    17: ("football", "tennis", "rugby", "hockey", "golf"),
}
# Long enough that a window (12 tokens before a firing, 4 after) is as long as the real
# ones (~17 tokens), so that request sizes are realistic.
FRAMES = (
    "So after a long and tiring day at the office we finally talked about the {a} "
    "and the {b} all evening long",
    "Then my oldest friend from school said in a loud voice that the {a} was better "
    "than any {b} we had ever seen",
    "Yesterday on the way home from the station I saw a {a} near the old market square again",
    "Honestly nobody in our small town could explain why the {a} and the {b} were "
    "everywhere this year",
    "Later that same week a short story about the {a} made the evening news on every channel",
    "Maybe it is the reason why nobody at the meeting liked the {a} or the {b} very much",
    "Still, when we looked closely at the photograph, the {a} in the picture looked odd to "
    "all of us",
)
CORPUS_FILLER = (
    "The committee met on Tuesday to review the budget for next year",
    "She opened the window and looked out over the quiet street",
    "He wrote three pages before he stopped to think again",
    "The report was late because the printer broke twice",
    "Most of the guests arrived after the speeches had started",
    "They walked along the river until the path ended",
    "A new law changed how the office handled its paperwork",
    "Nobody expected the meeting to last the whole afternoon",
    "The teacher asked the students to read the next chapter",
    "It was hard to hear anything over the noise of the crowd",
    "We spent the morning sorting old letters from the attic",
    "The bus was crowded so he decided to walk instead",
)


def _n(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=4).digest(), "big")


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def topic_of(token: str) -> int | None:
    bare = token.strip(" .,!?;:\"'()[]{}<>").lower()
    for fid, words in TOPICS.items():
        if bare in {w.lower() for w in words}:
            return fid
    return None


def main_prompts(n: int = 56) -> list[str]:
    prompts = []
    fids = sorted(TOPICS)
    for i in range(n):
        fid = fids[i % len(fids)]
        other = fids[(i * 3 + 1) % len(fids)]
        words = TOPICS[fid]
        frame = FRAMES[_n("frame", i) % len(FRAMES)]
        a = words[_n("a", i) % len(words)]
        b = TOPICS[other][_n("b", i) % len(words)] if i % 2 else words[(i + 1) % len(words)]
        prompts.append(frame.format(a=a, b=b))
    return prompts


def extraction_record(index: int, text: str, *, hot: bool = False) -> dict[str, Any]:
    tokens = []
    for position, token in enumerate(_tokens(text)):
        feats = []
        fid = topic_of(token)
        if fid is not None and position > 0:
            strength = 2.0 + (_n("act", index, position) % 60) / 10.0
            feats.append({"id": fid, "activation": strength + (5.0 if hot else 0.0)})
        feats.append({"id": DENSE, "activation": 0.2 + (_n("dense", index, position) % 5) / 10})
        tokens.append({"text": token, "features": feats})
    return {
        "prompt_index": index,
        "id": f"main-{index}",
        "set": "main",
        "text": text,
        "n_tokens": len(tokens),
        "tokens": tokens,
        "summary": [],
        "error": None,
    }


def _window(text: str, fid: int) -> dict[str, Any]:
    tokens = _tokens(text)
    acts = [
        (2.0 + (_n("corpus", text, i) % 50) / 10.0) if topic_of(t) == fid else 0.0
        for i, t in enumerate(tokens)
    ]
    return {"tokens": tokens, "activations": acts, "max": max(acts)}


def feature_data_lines() -> list[dict[str, Any]]:
    lines = []
    for fid in range(30):
        line: dict[str, Any] = {
            "id": fid,
            "density": 0.4 if fid == DENSE else 0.0005,
            "max_activation": 8.0,
            "top_examples": [],
            "random_examples": [],
            "histogram": {"edges": [0, 1, 2, 4, 8], "counts": [9, 4, 2, 1]},
            "promoted_tokens": [],
            "suppressed_tokens": [],
        }
        if fid in TOPICS:
            words = TOPICS[fid]
            texts = [
                f"In a long article from the reference corpus the {w} came up again and "
                f"again near the {words[(j + 2) % 5]} and other things"
                for j, w in enumerate(words)
            ]
            line["top_examples"] = [_window(t, fid) for t in texts[:4]]
            line["random_examples"] = [_window(t, fid) for t in texts[4:]]
            line["promoted_tokens"] = [{"token": " " + words[0], "logit": 1.5}]
        lines.append(line)
    return lines


def corpus_windows() -> list[dict[str, Any]]:
    windows = []
    for text in CORPUS_FILLER:
        tokens = _tokens(text)
        windows.append({"tokens": tokens, "features": [[[DENSE, 0.3]] for _ in tokens]})
    return windows


def _put_lines(store: Any, key: str, rows: Sequence[dict[str, Any]]) -> None:
    store.put_bytes(key, "".join(json.dumps(r) + "\n" for r in rows).encode())


def seed_topic_run(
    store: Any,
    *,
    run_id: str = RUN_ID,
    extra_prompts: Sequence[str] = (),
    label: dict[str, Any] | None = None,
    top_k: int = 8,
) -> dict[str, Any]:
    """Write the run's bucket state; returns the state ``$`` as the aggregate step sees it."""
    prompts = main_prompts()
    records = [extraction_record(i, t) for i, t in enumerate(prompts)]
    start = len(records)
    records += [extraction_record(start + i, t, hot=True) for i, t in enumerate(extra_prompts)]
    _put_lines(store, layout.extract_output_key(run_id, 0), records)
    sae_prefix = SAE_ID + "/"
    store.put_json(
        sae_prefix + layout.SAE_METRICS,
        {
            "explained_variance": 0.9,
            "l0": 32.0,
            "dead_fraction": 0.0,
            "ce_loss_recovered": 0.98,
            "eval_tokens": 20000,
            "d_in": 576,
            "d_sae": 4608,
            "architecture": "topk",
        },
    )
    _put_lines(store, sae_prefix + layout.SAE_FEATURE_DATA, feature_data_lines())
    _put_lines(store, sae_prefix + layout.SAE_CORPUS_WINDOWS, corpus_windows())
    store.put_bytes(sae_prefix + layout.SAE_WEIGHTS_SHA256, WEIGHTS_SHA256.encode())
    label_options = {"backend": "bedrock", "max_features": 24, "max_usd": 1.0, "model_id": None}
    label_options.update(label or {})
    options = {"sae": "train", "top_k_features": top_k, "label": label_options}
    bucket = store.bucket
    return {
        "run_id": run_id,
        "run": {
            "run_id": run_id,
            "bucket": bucket,
            "options": options,
            "n_prompts": len(records),
            "n_contrast_prompts": 0,
            "extract_uri": f"s3://{bucket}/{layout.extract_prefix(run_id)}",
            "transform_instance_count": 1,
            "has_steering": False,
        },
        "sae": {
            "mode": "cached",
            "uri": f"s3://{bucket}/{sae_prefix}",
            "sae_id": SAE_ID,
            "weights_sha256": WEIGHTS_SHA256,
            "training": None,
            "serve_environment": {},
        },
    }
