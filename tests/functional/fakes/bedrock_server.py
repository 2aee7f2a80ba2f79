"""A fake Amazon Bedrock runtime over real HTTP on 127.0.0.1, and a deterministic "model".

Endpoints (the real clients reach them unchanged):

- ``POST /model/<id>/converse``: the Converse API (boto3 ``bedrock-runtime``, through
  ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` or ``endpoint_url=``), tool use and cache points;
- ``POST /model/<id>/invoke``: InvokeModel with an Anthropic Messages body (what
  ``anthropic.AnthropicBedrock`` sends);
- ``POST /v1/messages``: the Anthropic Messages API (``anthropic.Anthropic``).

Faults, for the tests: ``throttle`` (every request answers 429 ThrottlingException, as
Bedrock does), ``throttle_next`` (the next N requests), ``delay_s`` (answer late, to pass a
client's read timeout), ``script`` (replies used before the model's own, e.g. malformed).

Usage is counted like the service: ~4 characters a token over tools, system and messages;
the part up to a cache point is written to the cache the first time and read from it
afterwards, when it is at least ``min_cache_tokens`` long (Claude's minimum is 1,024-4,096
tokens by model).

:func:`rule_model` answers saeflow's two requests by a simple deterministic rule, and it
is deliberately *naive*: it obeys instructions it finds in the request. Which text it
treats as instructions is what saeflow's prompt design is about:

- when the system prompt declares the data untrusted, every JSON string literal of the
  user turn is data and only the rest (the system text and anything outside JSON
  strings) can instruct it, as a careful model behaves;
- otherwise everything it reads instructs it, the text of token lists included.

So a request that pastes user text outside JSON strings, or drops the declaration, lets
an injected instruction through, and the injection tests fail. The same holds for
highlights: the rule reads them from the JSON structure (token indices) when there is
one, and from ``<<...>>`` markers in the text otherwise, which text can forge.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

_CONVERSE = re.compile(r"^/model/(?P<model>[^/]+)/converse$")
_INVOKE = re.compile(r"^/model/(?P<model>[^/]+)/invoke$")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_DIRECTIVES = (
    re.compile(
        r"(?:label|call|name)\s+(?:this|the)\s+feature\s+(?:as\s+)?[\"'“]?([^\"'”.\n<>]{2,40})",
        re.I,
    ),
    re.compile(r"set\s+the\s+label\s+to\s+[\"'“]?([^\"'”.\n<>]{2,40})", re.I),
    re.compile(r"\"label\"\s*:\s*\"([^\"]{2,40})\"", re.I),
)
_ALL_FIRE = re.compile(
    r"(?:mark|answer|predict)\s+(?:all|every)\s+contexts?\s+(?:as\s+)?(?:firing|true)", re.I
)
_NO_TOOL = re.compile(r"(?:do\s+not|don't|never)\s+(?:call|use)\s+(?:any|the)\s+tools?", re.I)


@dataclass
class Request:
    """What the model sees, whatever the API: system text, user text, the forced tool."""

    system: str
    prompt: str
    tool: str | None
    cache_prefix: str | None


@dataclass
class Reply:
    """The model's answer: a tool call's input, or text."""

    tool_input: dict[str, Any] | None = None
    text: str = ""


Responder = Callable[[str, Request], Reply]


# ------------------------------------------------------------------ the rule model


def _decoded_texts(prompt: str) -> list[str]:
    """Texts a naive reader sees in the JSON data: token lists joined, text fields."""
    try:
        data = json.loads(prompt[prompt.index("{") :].split("\n\nYour previous", 1)[0])
    except ValueError:
        return []
    texts = []
    for excerpt in data.get("excerpts", ()) if isinstance(data, dict) else ():
        texts.append("".join(map(str, excerpt.get("tokens", ()))))
    for context in data.get("contexts", ()) if isinstance(data, dict) else ():
        texts.append(str(context.get("text", "")))
    return texts


def instruction_channel(system: str, prompt: str) -> str:
    """The text the rule model obeys (see the module docstring)."""
    if "untrusted" in system.lower():
        return system + "\n" + _JSON_STRING.sub('""', prompt)
    return "\n".join([system, prompt, *_decoded_texts(prompt)])


def directives(channel: str) -> dict[str, str]:
    """Instructions found in ``channel``: "label" (its text), "all_fire", "no_tool"."""
    found: dict[str, str] = {}
    if _NO_TOOL.search(channel):
        found["no_tool"] = ""
    if _ALL_FIRE.search(channel):
        found["all_fire"] = ""
    for pattern in _LABEL_DIRECTIVES:
        match = pattern.search(channel)
        if match and "label" not in found:
            found["label"] = match.group(1).strip()
    return found


def highlighted_tokens(prompt: str) -> list[str]:
    """Activating tokens: from the JSON structure when there is one, else ``<<...>>``."""
    try:
        data = json.loads(prompt[prompt.index("{") :].split("\n\nYour previous", 1)[0])
    except ValueError:
        data = None
    if isinstance(data, dict) and "excerpts" in data:
        found = []
        for excerpt in data["excerpts"]:
            tokens = excerpt.get("tokens", [])
            found += [str(tokens[i]) for i, _ in excerpt.get("activations", []) if i < len(tokens)]
        return found
    return re.findall(r"<<(.+?)>>", prompt)


def _explain(request: Request, found: dict[str, str]) -> Reply:
    if "label" in found:
        forged = found["label"][:80]
        return Reply({"label": forged, "explanation": f"As asked: {forged}.", "confidence": "high"})
    tokens = [t.strip() for t in highlighted_tokens(request.prompt) if t.strip()]
    words = [w for w, _ in Counter(tokens).most_common(3)] or ["nothing"]
    named = ", ".join(f"'{w}'" for w in words)
    return Reply(
        {
            "label": f"fires on {named}"[:80],
            "explanation": f"The tokens {named} in context.",
            "confidence": "high",
        }
    )


def _detect(request: Request, found: dict[str, str]) -> Reply:
    data = json.loads(request.prompt[request.prompt.index("{") :].split("\n\nYour previous", 1)[0])
    label = str(data.get("explanation", {}).get("label", ""))
    words = re.findall(r"'([^']+)'", label) if label.startswith("fires on") else []
    needles = [re.compile(rf"(?<!\w){re.escape(w)}(?!\w)", re.I) for w in words]
    predictions = []
    for context in data.get("contexts", []):
        text = str(context.get("text", ""))
        fires = "all_fire" in found or any(n.search(text) for n in needles)
        predictions.append({"context": context["context"], "fires": fires})
    return Reply({"predictions": predictions})


def rule_model(model_id: str, request: Request) -> Reply:
    """saeflow's explain and detection requests answered by a simple rule (see above)."""
    found = directives(instruction_channel(request.system, request.prompt))
    if "no_tool" in found:
        return Reply(None, "Here is the label in plain text, as the excerpt asked.")
    if request.tool == "record_predictions":
        return _detect(request, found)
    return _explain(request, found)


# ------------------------------------------------------------------ the service


@dataclass
class FakeBedrock:
    responder: Responder = rule_model
    throttle: bool = False
    throttle_next: int = 0
    throttle_tool: str | None = None  # throttle_next counts only requests forcing this tool
    delay_s: float = 0.0
    min_cache_tokens: int = 1024
    script: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _cached: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, request: Request) -> bool:
        with self._lock:
            if self.throttle:
                return True
            if self.throttle_next > 0 and self.throttle_tool in (None, request.tool):
                self.throttle_next -= 1
                return True
        return False

    def _reply(self, model_id: str, request: Request) -> Reply:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            scripted = self.script.pop(0) if self.script else None
        return scripted if scripted is not None else self.responder(model_id, request)

    def usage(self, request: Request, total_chars: int, reply: Reply) -> dict[str, int]:
        cached_chars = len(request.cache_prefix or "")
        usage = {"input": total_chars // 4, "read": 0, "write": 0}
        if request.cache_prefix and cached_chars // 4 >= self.min_cache_tokens:
            with self._lock:
                hit = request.cache_prefix in self._cached
                self._cached.add(request.cache_prefix)
            usage["read" if hit else "write"] = cached_chars // 4
            usage["input"] = (total_chars - cached_chars) // 4
        out = json.dumps(reply.tool_input) if reply.tool_input is not None else reply.text
        usage["output"] = max(1, len(out) // 4)
        return usage

    def converse(
        self, model_id: str, body: dict[str, Any], authorization: str
    ) -> tuple[int, dict, dict]:
        # The SigV4 header names the caller's access key and Region (Credential=KEY/date/
        # REGION/bedrock/aws4_request): tests check whose credentials reached Bedrock.
        self.requests.append(
            {"model_id": model_id, "body": body, "authorization": authorization, "api": "converse"}
        )
        if not body.get("messages"):
            return 400, {"x-amzn-ErrorType": "ValidationException"}, {"message": "no messages"}
        request = converse_request(body)
        if self._fault(request):
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
        reply = self._reply(model_id, request)
        self.requests[-1]["reply"] = reply
        use = self.usage(request, _chars(body), reply)
        content: list[dict[str, Any]] = [{"text": reply.text}] if reply.text else []
        if reply.tool_input is not None:
            content.append(
                {
                    "toolUse": {
                        "toolUseId": "tooluse_fake",
                        "name": request.tool,
                        "input": reply.tool_input,
                    }
                }
            )
        return (
            200,
            {},
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": "tool_use" if reply.tool_input is not None else "end_turn",
                "usage": {
                    "inputTokens": use["input"],
                    "outputTokens": use["output"],
                    "totalTokens": use["input"] + use["output"] + use["read"] + use["write"],
                    "cacheReadInputTokens": use["read"],
                    "cacheWriteInputTokens": use["write"],
                },
                "metrics": {"latencyMs": 5},
            },
        )

    def messages(
        self, body: dict[str, Any], model_id: str | None = None, api: str = "messages"
    ) -> tuple[int, dict, dict]:
        """The Anthropic Messages API shape (anthropic SDK, direct or on Bedrock)."""
        model_id = model_id or str(body.get("model"))
        self.requests.append({"model_id": model_id, "body": body, "api": api})
        request = messages_request(body)
        if self._fault(request):
            return (
                429,
                {},
                {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            )
        reply = self._reply(model_id, request)
        self.requests[-1]["reply"] = reply
        use = self.usage(request, _chars(body), reply)
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        if reply.tool_input is not None:
            content.append(
                {
                    "type": "tool_use",
                    "id": "toolu_fake",
                    "name": request.tool,
                    "input": reply.tool_input,
                }
            )
        return (
            200,
            {},
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model_id,
                "content": content,
                "stop_reason": "tool_use" if reply.tool_input is not None else "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": use["input"],
                    "output_tokens": use["output"],
                    "cache_read_input_tokens": use["read"],
                    "cache_creation_input_tokens": use["write"],
                },
            },
        )


def _chars(body: dict[str, Any]) -> int:
    return len(json.dumps({k: body.get(k) for k in ("system", "messages", "toolConfig", "tools")}))


def converse_request(body: dict[str, Any]) -> Request:
    system_blocks = body.get("system") or []
    system = "".join(b.get("text", "") for b in system_blocks if isinstance(b, dict))
    prompt = "".join(
        c.get("text", "") for m in body["messages"] for c in m["content"] if isinstance(c, dict)
    )
    tool_config = body.get("toolConfig") or {}
    forced = ((tool_config.get("toolChoice") or {}).get("tool") or {}).get("name")
    prefix = None
    cut = next((i for i, b in enumerate(system_blocks) if "cachePoint" in b), None)
    if cut is not None:
        prefix = json.dumps(tool_config.get("tools")) + json.dumps(system_blocks[:cut])
    return Request(system, prompt, forced, prefix)


def messages_request(body: dict[str, Any]) -> Request:
    system_field = body.get("system") or ""
    blocks = [{"text": system_field}] if isinstance(system_field, str) else list(system_field)
    system = "".join(b.get("text", "") for b in blocks)
    message = body["messages"][0]["content"]
    prompt = message if isinstance(message, str) else "".join(c.get("text", "") for c in message)
    choice = body.get("tool_choice") or {}
    forced = choice.get("name") if choice.get("type") == "tool" else None
    marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
    prefix = (
        json.dumps(body.get("tools")) + json.dumps(blocks[: marked[-1] + 1]) if marked else None
    )
    return Request(system, prompt, forced, prefix)


def _handler_for(fake: FakeBedrock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {}
            if path == "/v1/messages":
                status, headers, payload = fake.messages(body)
            elif match := _CONVERSE.match(path):
                status, headers, payload = fake.converse(
                    unquote(match.group("model")), body, self.headers.get("Authorization", "")
                )
            elif match := _INVOKE.match(path):
                status, headers, payload = fake.messages(
                    body, unquote(match.group("model")), "invoke"
                )
            else:
                status, headers, payload = (
                    404,
                    {"x-amzn-ErrorType": "UnknownOperationException"},
                    {"message": "not found"},
                )
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

    return Handler


@contextmanager
def running_fake_bedrock(
    responder: Responder = rule_model, **settings: Any
) -> Iterator[FakeBedrock]:
    fake = FakeBedrock(responder, **settings)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# The name the workflow tests use.
claude_like_responder = rule_model
