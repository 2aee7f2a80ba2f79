"""The batch-transform HTTP server: ``GET /ping`` and ``POST /invocations``.

SageMaker batch transform (and the embedded mode) posts JSON Lines payloads of
extraction and steer records; every input line gets exactly one output line, in
the same order. A bad line gets an error object on its line, never a 500 for
the whole batch. The model loads in the background; ``/ping`` says 200 only
once it is ready, so the caller knows when to start sending.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from gpu_worker.records import (
    ExtractionRecord,
    InvalidRecord,
    SteerRecord,
    error_line,
    parse_record,
)
from saeflow.core.errors import SaeflowError

logger = logging.getLogger(__name__)
T = TypeVar("T")
ModelCall = Callable[[Callable[[], T]], T]

DEFAULT_PORT = 8080
DEFAULT_MAX_PAYLOAD_MB = 6
JSONLINES = "application/jsonlines"
ACCEPTED_CONTENT_TYPES = (
    "application/jsonlines",
    "application/x-jsonlines",
    "application/json",
    "text/plain",
)
# A body this much over the limit is not drained before answering 413 (the connection is
# closed instead): draining protects well-behaved clients, not a flood.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


class TransformBackend(Protocol):
    """What the server needs from the loaded model + SAE."""

    def extract(self, records: Sequence[ExtractionRecord]) -> list[dict[str, Any]]:
        """One output object per record, same order (errors as per-record objects)."""
        ...

    def steer_many(self, records: Sequence[SteerRecord]) -> list[dict[str, Any] | SaeflowError]:
        """``{"steer", "baseline", "steered"}`` per record, same order (a bad record: its error)."""
        ...


@dataclass(frozen=True)
class ServeSettings:
    """How the server listens and what it accepts."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.max_payload_mb < 1:
            raise ValueError(f"max payload must be >= 1 MB, got {self.max_payload_mb}")

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    def execution_parameters(self) -> dict[str, Any]:
        return {
            "MaxConcurrentTransforms": 1,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": self.max_payload_mb,
        }


def process_payload(
    body: bytes,
    backend: TransformBackend,
    on_model_thread: ModelCall[Any] | None = None,
) -> bytes:
    """Turn a JSON Lines payload into the JSON Lines answer (one line per input line).

    ``on_model_thread`` runs the model calls only (parsing and encoding JSON of one request
    overlap the model's work on another, MaxConcurrentTransforms > 1); by default they run
    on the calling thread."""
    call: ModelCall[Any] = on_model_thread or (lambda fn: fn())
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord(f"payload is not UTF-8 (byte {exc.start})") from exc
    # Only "\n" separates records (as SageMaker's line splitter does): str.splitlines would
    # also cut at U+2028 and friends, which JSON allows raw inside strings.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    # A trailing newline is not an extra record; blank lines inside the payload are.
    while lines and not lines[-1].strip():
        lines.pop()
    outputs: list[dict[str, Any] | None] = [None] * len(lines)
    extraction: list[tuple[int, ExtractionRecord]] = []
    steering: list[tuple[int, SteerRecord]] = []
    for position, line in enumerate(lines):
        try:
            record = parse_record(line)
        except InvalidRecord as err:
            outputs[position] = error_line(err, _header_guess(line))
            continue
        if isinstance(record, SteerRecord):
            steering.append((position, record))
        else:
            extraction.append((position, record))
    if extraction:
        # All extraction records of the payload go to the model together: one sorted,
        # batched pass is much faster than one pass per line.
        results = call(lambda: backend.extract([record for _, record in extraction]))
        for (position, _), result in zip(extraction, results, strict=True):
            outputs[position] = result
    if steering:
        answers = call(lambda: backend.steer_many([record for _, record in steering]))
        for (position, record), answer in zip(steering, answers, strict=True):
            outputs[position] = (
                error_line(answer, {"steer": record.raw})
                if isinstance(answer, SaeflowError)
                else answer
            )
    return "".join(json.dumps(out, ensure_ascii=False) + "\n" for out in outputs).encode()


def _header_guess(line: str) -> dict[str, Any]:
    """Echo what identifies a bad line, when it is readable, so the caller can match it."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return {}
    if not isinstance(obj, dict):
        return {}
    if "steer" in obj:
        return {"steer": obj["steer"]}
    return {key: obj.get(key) for key in ("prompt_index", "id", "set") if key in obj}


class WorkerServer(ThreadingHTTPServer):
    """The HTTP server plus the state the handlers share."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__((settings.host, settings.port), _Handler)
        self.settings = settings
        self.backend: TransformBackend | None = None
        self.load_error: str | None = None
        # Every model call runs on this one thread, whatever thread handles the request:
        # the model is not thread-safe (one call at a time, whatever MaxConcurrentTransforms
        # sends; requests are parsed and encoded outside it), and torch's OpenMP binds a
        # team of worker threads to each calling thread, so a thread per connection would
        # build a new team for every request.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saeflow-model")

    def on_model_thread(self, fn: Callable[[], T]) -> T:
        return self._model_thread.submit(fn).result()

    def server_close(self) -> None:
        super().server_close()
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    def load_in_background(self, load: Callable[[], TransformBackend]) -> threading.Thread:
        """Start loading; ``/ping`` turns 200 when done. A load failure stops the server."""

        def _load() -> None:
            try:
                self.backend = load()
                logger.info("model and SAE loaded; serving on port %d", self.server_address[1])
            except Exception as exc:  # report any load failure through /ping and the log
                self.load_error = f"{type(exc).__name__}: {exc}"
                logger.error("loading failed: %s", self.load_error)
                threading.Thread(target=self.shutdown, daemon=True).start()

        thread = threading.Thread(target=_load, name="saeflow-load", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: WorkerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if self.path == "/ping":
            if self.server.backend is not None:
                self._send(HTTPStatus.OK, b"{}", "application/json")
            elif self.server.load_error is not None:
                self._send_error(
                    HTTPStatus.INTERNAL_SERVER_ERROR, "LoadFailed", self.server.load_error
                )
            else:
                self._send_error(HTTPStatus.SERVICE_UNAVAILABLE, "Loading", "model is loading")
        elif self.path == "/execution-parameters":
            body = json.dumps(self.server.settings.execution_parameters()).encode()
            self._send(HTTPStatus.OK, body, "application/json")
        else:
            self._send_error(HTTPStatus.NOT_FOUND, "NotFound", f"no route {self.path}")

    def do_POST(self) -> None:
        if self.path != "/invocations":
            self._drain_and_close()
            self._send_error(HTTPStatus.NOT_FOUND, "NotFound", f"no route {self.path}")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._send_error(
                HTTPStatus.LENGTH_REQUIRED, "LengthRequired", "Content-Length is required"
            )
            return
        length = int(length_header)
        limit = self.server.settings.max_payload_bytes
        if length > limit:
            self._drain_and_close(length)
            self._send_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "PayloadTooLarge",
                f"payload is {length} bytes; the limit is {limit} bytes "
                f"(MaxPayloadInMB={self.server.settings.max_payload_mb}); "
                "use a smaller MaxPayloadInMB or fewer records per request",
            )
            return
        body = self.rfile.read(length)
        content_type = (self.headers.get("Content-Type") or JSONLINES).split(";")[0].strip()
        if content_type not in ACCEPTED_CONTENT_TYPES:
            self._send_error(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                f"content type {content_type!r} is not supported; send {JSONLINES}",
            )
            return
        backend = self.server.backend
        if backend is None:
            self._send_error(HTTPStatus.SERVICE_UNAVAILABLE, "Loading", "model is not loaded yet")
            return
        try:
            answer = process_payload(body, backend, self.server.on_model_thread)
        except InvalidRecord as err:
            self._send_error(HTTPStatus.BAD_REQUEST, err.name, err.message)
            return
        except Exception as exc:  # a model failure fails this request, not the server
            logger.exception("invocation failed")
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, type(exc).__name__, str(exc))
            return
        self._send(HTTPStatus.OK, answer, JSONLINES)

    def _drain_and_close(self, length: int | None = None) -> None:
        """Read (and drop) the body so the client sees our answer, then close."""
        self.close_connection = True
        if length is None:
            header = self.headers.get("Content-Length", "0")
            length = int(header) if header.isdigit() else 0
        if length > _DRAIN_LIMIT_BYTES:
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1024 * 1024))
            if not chunk:
                break
            remaining -= len(chunk)

    def _send_error(self, status: HTTPStatus, name: str, message: str) -> None:
        body = json.dumps({"error": name, "message": message}).encode()
        self._send(status, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def serve(settings: ServeSettings, load: Callable[[], TransformBackend]) -> int:
    """Serve until stopped; return 0, or 1 when loading the model failed."""
    server = WorkerServer(settings)
    logger.info("listening on %s:%d", settings.host, server.server_address[1])
    server.load_in_background(load)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 1 if server.load_error is not None else 0
