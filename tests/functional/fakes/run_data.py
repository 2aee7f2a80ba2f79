"""Seed a bucket with what the workflow has produced by the time it aggregates.

Extraction output shards (serve contract), an SAE directory (metrics.json,
feature_data.jsonl, saeflow_sae.json), run.json and a steering output; returns the
state ``$`` as the aggregate step sees it. Texts include hostile HTML on purpose.
"""

from __future__ import annotations

import json
from typing import Any

from saeflow.core import layout

RUN_ID = "demo-0123456789ab"
SAE_ID = "saes/smollm2-135m-instruct/blocks.15.hook_resid_post/00112233aabbccdd"
WEIGHTS_SHA256 = "5a" * 32
HOSTILE = (
    '</script><img src=x onerror="document.title=\'PWNED\'"><script>document.title="PWNED"</script>'
)
CITY, NUMBER, ANIMAL, DENSE = 7, 11, 23, 3
CITIES = ("Paris", "London", "Tokyo", "Rome")
ANIMALS = ("cat", "dog", "horse")

MAIN_PROMPTS = [
    "I flew to Paris last spring",
    "The capital of England is London",
    "We met in Tokyo in 2019",
    "My cat sleeps all day",
    "A dog and a horse in Rome",
    HOSTILE + " Paris",
    "Nothing special here at all",
    "London and Paris by train",
]
CONTRAST_PROMPTS = ["Count 1 2 3 4", "It costs 42 dollars", "The year 1999 and 2000"]


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


def extraction_record(index: int, text: str, set_name: str) -> dict[str, Any]:
    tokens = []
    for word in _words(text):
        bare = word.strip()
        feats = []
        if bare in CITIES:
            feats.append({"id": CITY, "activation": 5.0 + CITIES.index(bare)})
        if bare in ANIMALS:
            feats.append({"id": ANIMAL, "activation": 3.0 + ANIMALS.index(bare)})
        if bare.isdigit():
            feats.append({"id": NUMBER, "activation": 2.5})
        feats.append({"id": DENSE, "activation": 0.3})
        tokens.append({"text": word, "features": feats})
    return {
        "prompt_index": index,
        "id": f"{set_name}-{index}",
        "set": set_name,
        "n_tokens": len(tokens),
        "tokens": tokens,
        "summary": [],
        "error": None,
    }


def feature_data_lines() -> list[dict[str, Any]]:
    def ex(words: list[str], hot: int, act: float) -> dict[str, Any]:
        acts = [act if i == hot else 0.0 for i in range(len(words))]
        return {"tokens": words, "activations": acts, "max": act}

    lines = []
    for fid in range(30):
        line: dict[str, Any] = {
            "id": fid,
            # the dense feature fires on almost every corpus token too
            "density": 0.9 if fid == DENSE else 0.001 * (fid + 1),
            "max_activation": 1.0,
            "top_examples": [],
            "random_examples": [],
            "histogram": {"edges": [0, 1, 2, 3, 4], "counts": [9, 4, 2, 1]},
            "promoted_tokens": [],
            "suppressed_tokens": [],
        }
        if fid == CITY:
            line.update(
                max_activation=9.0,
                top_examples=[
                    ex(["Flights", " to", " Paris"], 2, 9.0),
                    ex(["Rain", " over", " London"], 2, 8.0),
                    ex(["Streets", " of", " Rome"], 2, 7.0),
                    ex(["Trains", " to", " Tokyo"], 2, 6.5),
                ],
                random_examples=[ex(["Museums", " in", " Paris", " open"], 2, 3.0)],
                promoted_tokens=[
                    {"token": " France", "logit": 2.1},
                    {"token": " Europe", "logit": 1.7},
                ],
                suppressed_tokens=[{"token": HOSTILE, "logit": -1.2}],
            )
        lines.append(line)
    return lines


def put_lines(store: Any, key: str, rows: list[dict[str, Any]]) -> None:
    store.put_bytes(key, "".join(json.dumps(r) + "\n" for r in rows).encode())


def seed_run(
    store: Any,
    *,
    label_backend: str = "bedrock",
    steering: bool = True,
    max_features: int = 24,
    top_k: int = 5,
) -> dict[str, Any]:
    main = [extraction_record(i, t, "main") for i, t in enumerate(MAIN_PROMPTS)]
    contrast = [extraction_record(100 + i, t, "contrast") for i, t in enumerate(CONTRAST_PROMPTS)]
    put_lines(store, layout.extract_output_key(RUN_ID, 0), main[:5])
    put_lines(store, layout.extract_output_key(RUN_ID, 1), main[5:] + contrast)
    sae_prefix = SAE_ID + "/"
    store.put_json(
        sae_prefix + layout.SAE_METRICS,
        {
            "explained_variance": 0.83,
            "mse": 0.1,
            "l0": 32.0,
            "dead_fraction": 0.01,
            "never_fired_fraction": 0.0,
            "ce_loss_clean": 2.0,
            "ce_loss_spliced": 2.05,
            "ce_loss_zero_ablated": 6.0,
            "ce_loss_recovered": 0.987,
            "training_tokens": 100000,
            "eval_tokens": 10000,
            "train_seconds": 120.0,
            "tokens_per_s": 833.0,
            "d_in": 576,
            "d_sae": 4608,
            "architecture": "topk",
        },
    )
    put_lines(store, sae_prefix + layout.SAE_FEATURE_DATA, feature_data_lines())
    store.put_json(
        sae_prefix + layout.SAE_MANIFEST,
        {
            "model": "smollm2-135m-instruct",
            "hook": "blocks.15.hook_resid_post",
            "versions": {"sae_lens": "6.54.12"},
        },
    )
    options = {
        "model": "smollm2-135m-instruct",
        "hook": "blocks.15.hook_resid_post",
        "sae": "train",
        "top_k_features": top_k,
        "contrast": "prompts/numbers.jsonl",
        "label": {
            "backend": label_backend,
            "max_features": max_features,
            "max_usd": 1.0,
            "model_id": None,
        },
        "report_max_prompts": 200,
    }
    store.put_json(
        layout.run_json_key(RUN_ID),
        {
            "run_id": RUN_ID,
            "bucket": store.bucket,
            "key": "prompts/demo.jsonl",
            "status": "running",
            "provenance": {"prompt_sha256": "ab" * 32},
        },
    )
    if steering:
        put_lines(
            store,
            layout.steer_output_key(RUN_ID),
            [
                {
                    "steer": {
                        "feature": CITY,
                        "strength": s,
                        "prompt": "Should I travel by plane or by",
                        "max_new_tokens": 20,
                        "temperature": 0.5,
                        "freq_penalty": 2.0,
                        "seed": 0,
                    },
                    "baseline": " car? It depends.",
                    "steered": f" Paris train to Paris ({s})",
                }
                for s in (8.0, 16.0)
            ],
        )
    bucket = store.bucket
    return {
        "run_id": RUN_ID,
        "run": {
            "run_id": RUN_ID,
            "bucket": bucket,
            "options": options,
            "n_prompts": len(main),
            "n_contrast_prompts": len(contrast),
            "extract_uri": f"s3://{bucket}/{layout.extract_prefix(RUN_ID)}",
            "transform_instance_count": 1,
            "steer_output_uri": f"s3://{bucket}/{layout.steer_output_prefix(RUN_ID)}",
            "has_steering": steering,
        },
        "sae": {
            "mode": "cached",
            "uri": f"s3://{bucket}/{sae_prefix}",
            "sae_id": SAE_ID,
            "weights_sha256": WEIGHTS_SHA256,
            "training": None,
            "serve_environment": {},
        },
        "extraction": {
            "job_name": "sf-0123456789ab-extract",
            "start": 1_700_000_000_000,
            "end": 1_700_000_004_000,
        },
    }
