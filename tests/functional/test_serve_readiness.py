"""``saeflow local serve`` answers S3 only once the stack and its persisted state are back:
an upload issued at once never sees a missing bucket or an empty saes/ (and so never
retrains a stored SAE), and a line says when it is ready."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from saeflow.cli import serve_command

pytestmark = pytest.mark.workflow

N_OBJECTS = 400  # enough that restoring them takes a moment an early client could hit


class Output(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()

    def write(self, text: str) -> int:
        if "ready:" in text:
            self.ready.set()
        return super().write(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed_state(state_dir: Path) -> None:
    saes = state_dir / "s3" / "saeflow-local" / "saes" / "m" / "h"
    for i in range(N_OBJECTS):
        (saes / f"{i:04d}").mkdir(parents=True)
        (saes / f"{i:04d}" / "metrics.json").write_text(json.dumps({"i": i}))
    table = state_dir / "dynamodb" / "saeflow-local-LabelTable.json"
    table.parent.mkdir(parents=True)
    # A label in the registry's key schema (weights hash | labeller model | prompt version).
    sae_key = "ab" * 32 + "|us.anthropic.claude-haiku-4-5-20251001-v1:0|1"
    item = {"sae_key": {"S": sae_key}, "feature": {"N": "1"}, "label_json": {"S": "{}"}}
    table.write_text(json.dumps([item]))


def test_serve_answers_only_with_its_state_restored(tmp_path):
    seed_state(tmp_path)
    port, out, stop = free_port(), Output(), threading.Event()
    server = threading.Thread(
        target=serve_command.serve, args=(tmp_path, port, out), kwargs={"stop": stop}, daemon=True
    )
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="user",
        aws_secret_access_key="user",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=30),
    )
    answers, refused = [], 0
    server.start()
    try:
        deadline = time.monotonic() + 120
        while not out.ready.is_set() and time.monotonic() < deadline:
            try:  # what an `aws s3 ...` issued right away would get
                listed = s3.list_objects_v2(Bucket="saeflow-local", Prefix="saes/")
                answers.append(listed.get("KeyCount", 0))
            except EndpointConnectionError:
                refused += 1
            time.sleep(0.02)
        assert out.ready.is_set(), out.getvalue()
        listed = s3.list_objects_v2(Bucket="saeflow-local", Prefix="saes/", MaxKeys=1000)
        assert listed["KeyCount"] == N_OBJECTS
        assert all(count == N_OBJECTS for count in answers), answers  # never a partial view
        assert refused > 0  # the port was closed while the state was being restored
        assert f"ready: http://127.0.0.1:{port} accepts S3 calls" in out.getvalue()
        assert f"({N_OBJECTS + 1} stored objects and labels restored)" in out.getvalue()
    finally:
        stop.set()
        server.join(timeout=60)
