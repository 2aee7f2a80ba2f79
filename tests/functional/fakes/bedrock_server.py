"""A fake Amazon Bedrock runtime: real HTTP on 127.0.0.1, the Converse API's JSON shape.

Only ``POST /model/<modelId>/converse`` is implemented. boto3 reaches it through
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` (or ``endpoint_url=``). What it answers is decided
by ``responder(model_id, request_json) -> str`` (the assistant's text); ``throttle``
makes it answer 429 ThrottlingException the way Bedrock does.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

Responder = Callable[[str, dict[str, Any]], str]
_PATH = re.compile(r"^/model/(?P<model>[^/]+)/converse$")


@dataclass
class FakeBedrock:
    responder: Responder
    throttle: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def answer(
        self, model_id: str, body: dict[str, Any], authorization: str = ""
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        # The SigV4 header names the caller's access key and Region (Credential=KEY/date/
        # REGION/bedrock/aws4_request): tests check whose credentials reached Bedrock.
        self.requests.append({"model_id": model_id, "body": body, "authorization": authorization})
        if self.throttle:
            return (
                429,
                {
                    "x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                },
                {"message": "Too many requests, please wait before trying again."},
            )
        if model_id == "no-such-model":
            return (
                400,
                {"x-amzn-ErrorType": "ValidationException"},
                {"message": "The provided model identifier is invalid."},
            )
        if not body.get("messages"):
            return (
                400,
                {"x-amzn-ErrorType": "ValidationException"},
                {"message": "messages is required"},
            )
        text = self.responder(model_id, body)
        prompt_chars = sum(len(c.get("text", "")) for m in body["messages"] for c in m["content"])
        usage = {"inputTokens": prompt_chars // 4, "outputTokens": len(text) // 4}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        return (
            200,
            {},
            {
                "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": "end_turn",
                "usage": usage,
                "metrics": {"latencyMs": 5},
            },
        )

    def answer_messages(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        """The Anthropic Messages API shape (for the anthropic SDK labeler)."""
        model_id = str(body.get("model"))
        system = body.get("system") or ""
        converse_like = {
            "system": [{"text": system}] if isinstance(system, str) else system,
            "messages": [{"role": "user", "content": [{"text": body["messages"][0]["content"]}]}],
        }
        self.requests.append({"model_id": model_id, "body": body, "api": "messages"})
        if self.throttle:
            return (
                429,
                {},
                {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            )
        text = self.responder(model_id, converse_like)
        return (
            200,
            {},
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model_id,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": len(body["messages"][0]["content"]) // 4,
                    "output_tokens": len(text) // 4,
                },
            },
        )


def _handler_for(fake: FakeBedrock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            match = _PATH.match(self.path.split("?")[0])
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.split("?")[0] == "/v1/messages":
                status, headers, payload = fake.answer_messages(json.loads(raw or b"{}"))
            elif not match:
                status, headers, payload = (
                    404,
                    {"x-amzn-ErrorType": "UnknownOperationException"},
                    {"message": "not found"},
                )
            else:
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                status, headers, payload = fake.answer(
                    unquote(match.group("model")), body, self.headers.get("Authorization", "")
                )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

    return Handler


@contextmanager
def running_fake_bedrock(responder: Responder) -> Iterator[FakeBedrock]:
    fake = FakeBedrock(responder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def claude_like_responder(model_id: str, body: dict[str, Any]) -> str:
    """Answers like a careful Claude would for saeflow's two prompts.

    Explain prompt -> a label naming the most frequent highlighted token; scoring prompt ->
    10 for excerpts containing that token, 0 otherwise.
    """
    system = " ".join(block.get("text", "") for block in body.get("system", []))
    prompt = body["messages"][0]["content"][0]["text"]
    if "simulate" in system:
        token = re.search(r"Feature explanation: fires on '([^']+)'", prompt)
        word = token.group(1) if token else "\0"
        excerpts = re.findall(r"^Excerpt (\d+): (.*)$", prompt, re.M)
        return json.dumps(
            {
                "predictions": [
                    {"excerpt": int(i), "activation": 10 if word in text else 0}
                    for i, text in excerpts
                ]
            }
        )
    marked = re.findall(r"<<(.+?)>>", prompt)
    word = max(set(marked), key=marked.count).strip() if marked else "nothing"
    return (
        "```json\n"
        + json.dumps(
            {
                "label": f"fires on '{word}'",
                "explanation": f"The token '{word}' in context.",
                "confidence": "high",
            }
        )
        + "\n```"
    )
