"""A fast stand-in for ``python -m gpu_worker`` that honours the worker contract
(docs/ARCHITECTURE.md "Worker contracts") with made-up numbers, so the real state machine
can run end to end in seconds. The real worker is tested in tests/worker and tests/workflow.

train: writes an SAELens-shaped model dir (cfg.json, weights, metrics.json,
feature_data.jsonl, saeflow_sae.json); hyperparameter ``lr`` = "0.5" makes it fail the
way the worker does (output/failure, exit 1). serve: /ping, and /invocations answering
extraction and steer records in JSON Lines, one line out per line in; a prompt holding
``CRASH`` kills the server (a transform job that fails); one holding ``TOOLONG`` gets the
worker's per-record ``PromptTooLong`` (its exact limit is the last word on length).
"""

import argparse
import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

D_SAE = 32
METRICS = {
    "explained_variance": 0.84,
    "mse": 0.01,
    "l0": 8.0,
    "dead_fraction": 0.03,
    "never_fired_fraction": 0.0,
    "ce_loss_clean": 2.0,
    "ce_loss_spliced": 2.04,
    "ce_loss_zero_ablated": 6.0,
    "ce_loss_recovered": 0.99,
    "training_tokens": 1000,
    "eval_tokens": 100,
    "train_seconds": 1.0,
    "tokens_per_s": 1000.0,
    "d_in": 576,
    "d_sae": D_SAE,
    "architecture": "topk",
}


def feature_of(word: str) -> int:
    return int(hashlib.sha256(word.lower().encode()).hexdigest(), 16) % D_SAE


def train(base: Path) -> int:
    hyperparameters = json.loads((base / "input/config/hyperparameters.json").read_text())
    (base / "output").mkdir(parents=True, exist_ok=True)
    if hyperparameters.get("lr") == "0.5":
        (base / "output/failure").write_text("TrainingFailed: loss diverged (lr=0.5)")
        return 1
    model = base / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "cfg.json").write_text(json.dumps({"d_in": 576, "d_sae": D_SAE}))
    (model / "sae_weights.safetensors").write_bytes(b"\0" * 64)
    (model / "metrics.json").write_text(json.dumps(METRICS))
    example = {"tokens": ["the", "cat"], "activations": [0.0, 2.0], "max": 2.0}
    lines = [
        {
            "id": fid,
            "density": 0.01,
            "max_activation": 2.0,
            "top_examples": [example],
            "random_examples": [example],
            "histogram": {"edges": [0.0, 1.0, 2.0], "counts": [3, 1]},
            "promoted_tokens": [{"token": "cat", "logit": 1.0}],
            "suppressed_tokens": [{"token": "dog", "logit": -1.0}],
        }
        for fid in range(D_SAE)
    ]
    (model / "feature_data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (model / "saeflow_sae.json").write_text(
        json.dumps({"model": hyperparameters.get("model"), "hook": hyperparameters.get("hook")})
    )
    return 0


def extraction(record: dict) -> dict:
    words = record["text"].split()
    tokens, summary = [], {}
    for position, word in enumerate(words):
        fid, activation = feature_of(word), 1.0 + (position % 3)
        tokens.append({"text": " " + word, "features": [{"id": fid, "activation": activation}]})
        stats = summary.setdefault(fid, {"id": fid, "max": 0.0, "sum": 0.0, "count": 0})
        stats["max"] = max(stats["max"], activation)
        stats["sum"] += activation
        stats["count"] += 1
    return {
        "prompt_index": record["prompt_index"],
        "id": record["id"],
        "set": record["set"],
        "n_tokens": len(tokens),
        "tokens": tokens,
        "summary": [
            {"id": s["id"], "max": s["max"], "mean": s["sum"] / s["count"], "count": s["count"]}
            for s in summary.values()
        ],
        "error": None,
    }


def answer(record: dict) -> dict:
    if "CRASH" in record.get("text", ""):
        os._exit(3)  # a server that dies mid-job: the transform job fails
    if "TOOLONG" in record.get("text", ""):
        message = "prompt has 9999 tokens; the limit is 512"
        return {
            **{k: record.get(k) for k in ("prompt_index", "id", "set")},
            "n_tokens": None,
            "tokens": [],
            "summary": [],
            "error": {"error": "PromptTooLong", "message": message},
        }
    if "steer" in record:
        steer = record["steer"]
        return {"steer": steer, "baseline": " car.", "steered": f" car ({steer['strength']})."}
    return extraction(record)


def serve(port: int) -> int:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/ping" else 404)
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            out = [
                json.dumps(answer(json.loads(line))) for line in body.splitlines() if line.strip()
            ]
            data = ("\n".join(out) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/jsonlines")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--base-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    sys.exit(train(args.base_dir) if args.command == "train" else serve(args.port))
