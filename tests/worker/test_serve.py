"""The batch-transform server over real HTTP on 127.0.0.1, with the real model and SAE."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpu_worker.backend import ModelBackend
from gpu_worker.extraction import ExtractionSettings
from gpu_worker.models import load_sae
from gpu_worker.serve import ServeSettings, WorkerServer
from saeflow.core.hooks import HookPoint

pytestmark = pytest.mark.slow

MAX_PAYLOAD_MB = 1


@pytest.fixture(scope="module")
def backend(default_model: Any, small_sae_dir: Any) -> ModelBackend:
    sae = load_sae(small_sae_dir, device="cpu")
    hook = HookPoint.parse(sae.cfg.metadata.hook_name)
    return ModelBackend(default_model, sae, hook, ExtractionSettings(features_per_token=4))


@pytest.fixture(scope="module")
def server(backend: ModelBackend) -> Iterator[WorkerServer]:
    server = WorkerServer(ServeSettings(host="127.0.0.1", port=0, max_payload_mb=MAX_PAYLOAD_MB))
    server.load_in_background(lambda: backend).join(timeout=60)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(
    server: WorkerServer, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=120)
    try:
        headers = {"Content-Type": "application/jsonlines"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        conn.close()


def jsonl(records: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_ping_and_execution_parameters(server: WorkerServer) -> None:
    status, body, _ = request(server, "GET", "/ping")
    assert status == 200
    status, body, _ = request(server, "GET", "/execution-parameters")
    assert status == 200
    assert json.loads(body) == {
        "MaxConcurrentTransforms": 1,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": MAX_PAYLOAD_MB,
    }


def test_ping_is_503_until_loaded() -> None:
    gate = threading.Event()
    server = WorkerServer(ServeSettings(host="127.0.0.1", port=0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        loader = server.load_in_background(lambda: gate.wait(30) and object())  # type: ignore[arg-type, return-value]
        status, body, _ = request(server, "GET", "/ping")
        assert status == 503
        assert json.loads(body)["error"] == "Loading"
        gate.set()
        loader.join(timeout=30)
        assert request(server, "GET", "/ping")[0] == 200
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


def test_multi_record_payload_keeps_order_and_reports_bad_lines(server: WorkerServer) -> None:
    records: list[Any] = [
        {"prompt_index": 0, "id": "a", "set": "main", "text": "The cat sat on the mat."},
        {
            "prompt_index": 1,
            "id": "b",
            "set": "contrast",
            "text": "Paris is the capital of France.",
        },
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(1, "{not json")
    lines.append(json.dumps({"prompt_index": 3, "id": "c"}))  # no text
    lines.append(json.dumps({"prompt_index": 4, "id": "d", "text": "word " * 600}))  # too long
    lines.append(json.dumps({"prompt_index": 5, "id": "e", "text": "Hi"}))
    # A raw U+2028 inside a JSON string is not a line break.
    lines.append(json.dumps({"id": "f", "text": "one\u2028two"}, ensure_ascii=False))
    status, body, content_type = request(
        server, "POST", "/invocations", ("\n".join(lines) + "\n").encode()
    )
    assert status == 200
    assert content_type == "application/jsonlines"
    out = [json.loads(line) for line in body.decode().splitlines()]
    assert len(out) == len(lines)

    assert [o.get("id") for o in out] == ["a", None, "b", "c", "d", "e", "f"]
    first = out[0]
    assert first["error"] is None and first["set"] == "main" and first["prompt_index"] == 0
    assert first["n_tokens"] == len(first["tokens"]) == len(first["features"]) > 3
    assert "".join(first["tokens"]) == "The cat sat on the mat."
    assert all(len(per_token) <= 4 for per_token in first["features"])
    assert any(first["features"])
    assert first["summary"] and len(first["summary"][0]) == 4  # [id, max, mean, count]
    assert first["quality"]["n"] == first["n_tokens"] and first["ce"] is None
    assert out[2]["set"] == "contrast" and out[2]["error"] is None
    assert out[1]["error"]["error"] == "InvalidRecord"
    assert out[3]["error"]["error"] == "InvalidRecord" and out[3]["prompt_index"] == 3
    assert out[4]["error"]["error"] == "PromptTooLong" and out[4]["tokens"] == []
    assert "512" in out[4]["error"]["message"]
    assert out[5]["error"] is None and out[5]["n_tokens"] >= 1
    assert out[6]["error"] is None and out[6]["set"] == "main" and out[6]["prompt_index"] is None


def test_steer_record(server: WorkerServer) -> None:
    steer = {
        "feature": 0,
        "strength": 40.0,
        "prompt": "Should I travel by plane or by",
        "max_new_tokens": 6,
        "temperature": 0.5,
        "freq_penalty": 2.0,
        "seed": 1,
    }
    bad = dict(steer, feature=10**9)
    zero = dict(steer, strength=0.0)
    other = dict(steer, feature=1, strength=-40.0)
    status, body, _ = request(
        server,
        "POST",
        "/invocations",
        jsonl([{"steer": steer}, {"steer": bad}, {"steer": zero}, {"steer": other}]),
    )
    assert status == 200
    good_out, bad_out, zero_out, other_out = (
        json.loads(line) for line in body.decode().splitlines()
    )
    assert good_out["steer"] == steer and zero_out["steer"] == zero
    assert isinstance(good_out["baseline"], str) and good_out["baseline"]
    assert isinstance(good_out["steered"], str)
    # One prompt, one baseline; the records are one batch with one shared sampling noise,
    # so adding nothing gives the baseline's exact text.
    assert good_out["baseline"] == zero_out["baseline"] == other_out["baseline"]
    assert zero_out["steered"] == zero_out["baseline"]
    assert bad_out["error"]["error"] == "InvalidRunOptions"
    assert "does not exist" in bad_out["error"]["message"]


def test_payload_over_the_limit_is_413(server: WorkerServer) -> None:
    record = json.dumps({"prompt_index": 0, "text": "x" * 1000})
    body = ((record + "\n") * (MAX_PAYLOAD_MB * 1100)).encode()
    started = time.monotonic()
    status, answer, _ = request(server, "POST", "/invocations", body)
    assert status == 413
    error = json.loads(answer)
    assert error["error"] == "PayloadTooLarge"
    assert "MaxPayloadInMB=1" in error["message"]
    assert time.monotonic() - started < 10  # refused without running the model
    # The server is still healthy afterwards.
    assert request(server, "GET", "/ping")[0] == 200


def test_unknown_route_and_wrong_content_type(server: WorkerServer) -> None:
    assert request(server, "GET", "/nope")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        conn.request("POST", "/invocations", body=b"a,b\n", headers={"Content-Type": "text/csv"})
        response = conn.getresponse()
        assert response.status == 415
        assert json.loads(response.read())["error"] == "UnsupportedMediaType"
    finally:
        conn.close()
