"""Where extraction through ``serve`` loses speed against the same model in-process.

One model and one SAE (the ``extract`` part's: the default model, a random TopK SAE of
the default shape), one prompt list, every variant timed in interleaved rounds (best
kept: the machine is shared). Steps from the in-process figure to the serve path, each adding one thing:

1. ``in_process``: ``FeatureExtractor.extract(all prompts)``: one call, batched freely
   (``in_process_main_thread``: the same on the main thread: torch's intra-op parallelism
   of small ops differs there, and spins under CPU contention; the others run on a thread
   of their own, as the server's handlers do);
2. ``per_request_<n>``: the same, ``n`` prompts per call (what one HTTP request carries):
   batching across requests is lost;
3. ``records_<n>``: plus the output records as JSON (worker encodes, caller decodes),
   compact (what the worker writes) and verbose (what it wrote before issue 10);
4. ``http_<n>``: the real server (``WorkerServer`` + ``ModelBackend``) over HTTP on
   127.0.0.1, ``n`` records per request (input framing, HTTP, JSON both ways).

Each is reported as tokens/s and as a fraction of ``in_process``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gpu_worker.extraction import PromptFeatures, result_to_json


def _in_thread(fn: Callable[[], Any]) -> float:
    """Seconds ``fn`` takes on a fresh thread (the way the server's handlers call the model)."""
    seconds: list[float] = []

    def timed() -> None:
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=timed)
    thread.start()
    thread.join()
    if not seconds:
        raise RuntimeError("the timed call failed (see the thread's traceback)")
    return seconds[0]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _verbose(record: dict[str, Any]) -> dict[str, Any]:
    """The per-token form workers wrote before the compact one (for the size figure)."""
    tokens = [
        {"text": text, "features": [{"id": f, "activation": a} for f, a in feats]}
        for text, feats in zip(record["tokens"], record["features"], strict=True)
    ]
    summary = [{"id": i, "max": m, "mean": e, "count": c} for i, m, e, c in record["summary"]]
    return {**record, "tokens": tokens, "features": None, "summary": summary}


def _serve(backend: Any) -> Any:
    from gpu_worker.serve import ServeSettings, WorkerServer

    server = WorkerServer(ServeSettings(host="127.0.0.1", port=0, max_payload_mb=100))
    server.load_in_background(lambda: backend).join(timeout=60)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _post_all(port: int, payloads: list[bytes]) -> int:
    """Every payload through /invocations on one connection; output lines seen."""
    lines = 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    try:
        for body in payloads:
            connection.request(
                "POST", "/invocations", body=body, headers={"Content-Type": "application/jsonlines"}
            )
            answer = connection.getresponse().read()
            lines += sum(1 for line in answer.split(b"\n") if line.strip())
            [json.loads(line) for line in answer.split(b"\n") if line.strip()]
    finally:
        connection.close()
    return lines


def run(
    *, extractor: Any, backend: Any, prompts: list[str], sizes: Sequence[int], rounds: int = 3
) -> dict:
    """The gap figures for ``prompts`` (``extractor`` is ``backend.extractor``).

    Every variant runs once per round, rounds interleaved, best round kept: on a shared
    machine the load moves during the run, and interleaving keeps the ratios fair."""
    results = extractor.extract(prompts)  # warm-up, and the token count
    n_tokens = sum(r.n_tokens for r in results if isinstance(r, PromptFeatures))

    def per_request(size: int) -> None:
        for chunk in _chunks(prompts, size):
            extractor.extract(chunk)

    def records(size: int) -> None:
        for chunk in _chunks(prompts, size):
            text = "".join(json.dumps(result_to_json(r)) + "\n" for r in extractor.extract(chunk))
            [json.loads(line) for line in text.splitlines()]

    server = _serve(backend)
    port = server.server_address[1]
    variants: dict[str, Callable[[], Any]] = {"in_process": lambda: extractor.extract(prompts)}
    for size in sizes:
        payloads = [
            "".join(
                json.dumps({"prompt_index": i, "id": f"p{i}", "set": "main", "text": t}) + "\n"
                for i, t in enumerate(chunk)
            ).encode()
            for chunk in _chunks(prompts, size)
        ]
        variants[f"per_request_{size}"] = lambda s=size: per_request(s)
        variants[f"records_{size}"] = lambda s=size: records(s)
        variants[f"http_{size}"] = lambda p=payloads: _post_all(port, p)
    best = dict.fromkeys([*variants, "in_process_main_thread"], float("inf"))
    try:
        for _ in range(rounds):
            # As in the server, every model call runs on a thread of its own; torch's
            # intra-op parallelism differs on the main thread (in_process_main_thread).
            for name, fn in variants.items():
                best[name] = min(best[name], _in_thread(fn))
            started = time.perf_counter()
            extractor.extract(prompts)
            seconds = time.perf_counter() - started
            best["in_process_main_thread"] = min(best["in_process_main_thread"], seconds)
    finally:
        server.shutdown()
        server.server_close()
    figures: dict[str, Any] = {"n_prompts": len(prompts), "n_tokens": n_tokens, "rounds": rounds}
    for name, seconds in best.items():
        figures[f"{name}_tokens_per_s"] = round(n_tokens / seconds, 1)
        if name != "in_process":
            figures[f"{name}_ratio"] = round(best["in_process"] / seconds, 3)
    compact = [json.dumps(result_to_json(r)) for r in results]
    verbose = [json.dumps(_verbose(json.loads(line))) for line in compact]
    figures["record_bytes_per_token_compact"] = round(sum(map(len, compact)) / n_tokens, 1)
    figures["record_bytes_per_token_verbose"] = round(sum(map(len, verbose)) / n_tokens, 1)
    return figures
