"""Run the Lambda handlers in ``functions/<name>/app.py`` in this process.

moto's Lambda would start a Docker container per invocation; the embedded mode instead
imports the handler module (once) and calls it with the event, under the function's own
environment (from template.yaml), the way the Lambda runtime would. An exception escaping a
handler becomes the Lambda error payload (``errorType`` = exception class name), which is
what Step Functions' Retry/Catch match on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from infra.local.moto_patches import LambdaOutcome

LOG = logging.getLogger(__name__)

# Handlers read their settings from os.environ (once, at import, or per call), and the
# environment is process-wide: invocations take turns.
_ENV_LOCK = threading.RLock()


@dataclass(frozen=True)
class LocalFunction:
    """One function of the template: where its code is and the environment it runs with."""

    logical_id: str
    function_name: str
    arn: str
    code_dir: Path
    handler: str  # "app.lambda_handler"
    environment: Mapping[str, str]
    timeout_s: int = 900
    memory_mb: int = 512


@dataclass
class LambdaContext:
    """The attributes of the Lambda runtime's context object that handlers and Powertools use."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: int
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_s * 1000


class FunctionOutput(io.TextIOBase):
    """The functions' stdout: a file while the stack runs (Powertools keeps a reference to
    the stream it found at import, so this object outlives the file it writes to)."""

    def __init__(self, path: Path | None, echo: TextIO | None = None) -> None:
        super().__init__()
        self._file: TextIO | None = path.open("a") if path is not None else None
        self._echo = echo
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            if self._file is not None:
                self._file.write(text)
                self._file.flush()
            if self._echo is not None:
                self._echo.write(text)
        return len(text)

    def close_file(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class Invocation:
    """One record of what ran (the CLI shows step timings from the execution history)."""

    function_name: str
    error_type: str | None


class LambdaDispatcher:
    """Maps function names to handlers and runs them in-process."""

    def __init__(
        self,
        functions: list[LocalFunction],
        base_environment: Mapping[str, str],
        forced_environment: Mapping[str, str] | None = None,
        log_sink: FunctionOutput | None = None,
        environment_source: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._by_name = {f.function_name: f for f in functions}
        # base < the function's own (template) < forced (log level of the local run) <
        # environment_source, read at each invocation (credentials that refresh themselves).
        self._base_environment = dict(base_environment)
        self._forced_environment = dict(forced_environment or {})
        self._environment_source = environment_source
        self._handlers: dict[str, Callable[[Any, Any], Any]] = {}
        self.invocations: list[Invocation] = []
        self._output = log_sink or FunctionOutput(None)

    @property
    def functions(self) -> list[LocalFunction]:
        return list(self._by_name.values())

    def function(self, name_or_logical_id: str) -> LocalFunction:
        for function in self._by_name.values():
            if name_or_logical_id in (function.function_name, function.logical_id, function.arn):
                return function
        raise KeyError(f"no function {name_or_logical_id!r} in the local stack")

    def invoke_lambda(self, function_name: str, event: Any) -> LambdaOutcome:
        """Run the handler; the outcome is what Lambda's Invoke API would answer."""
        function = self.function(function_name)
        context = LambdaContext(
            function_name=function.function_name,
            invoked_function_arn=function.arn,
            memory_limit_in_mb=function.memory_mb,
            timeout_s=function.timeout_s,
            log_group_name=f"/aws/lambda/{function.function_name}",
        )
        layers = (
            self._base_environment,
            function.environment,
            self._forced_environment,
            self._environment_source() if self._environment_source else {},
        )
        # What a handler prints (Powertools' JSON logs and metrics) goes where CloudWatch
        # would have it: the stack's function log, not the CLI's stdout.
        with _ENV_LOCK, _environment(*layers), contextlib.redirect_stdout(self._output):
            try:
                handler = self._handler(function)
                result = handler(event, context)
            except Exception as exc:  # the Lambda runtime turns any exception into a payload
                LOG.info("%s raised %s: %s", function.logical_id, type(exc).__name__, exc)
                self.invocations.append(Invocation(function.function_name, type(exc).__name__))
                return LambdaOutcome(
                    payload=json.dumps(_error_payload(exc, context)).encode(),
                    error_type=type(exc).__name__,
                )
        self.invocations.append(Invocation(function.function_name, None))
        return LambdaOutcome(payload=json.dumps(result, default=str).encode())

    def _handler(self, function: LocalFunction) -> Callable[[Any, Any], Any]:
        cached = self._handlers.get(function.function_name)
        if cached is not None:
            return cached
        module_name, _, attr = function.handler.rpartition(".")
        module = _import_handler_module(function, module_name)
        handler = getattr(module, attr)
        self._handlers[function.function_name] = handler
        return handler


def _import_handler_module(function: LocalFunction, module_name: str) -> ModuleType:
    path = function.code_dir / (module_name.replace(".", "/") + ".py")
    if not path.exists():
        raise FileNotFoundError(f"{function.logical_id}: handler module {path} not found")
    unique_name = f"saeflow_local_functions.{function.logical_id}.{module_name}"
    spec = importlib.util.spec_from_file_location(unique_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as an import would: dataclasses and typing look the
    # module up in sys.modules while it executes.
    sys.modules[unique_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(unique_name, None)
        raise
    return module


def _error_payload(exc: BaseException, context: LambdaContext) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": context.aws_request_id,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


@contextlib.contextmanager
def _environment(*layers: Mapping[str, str]) -> Iterator[None]:
    """Overlay ``layers`` on os.environ for one invocation, touching only their keys.

    Other threads (moto's server, job runners) read os.environ meanwhile, so the rest of it
    is never cleared, not even for a moment.
    """
    overlay = {k: str(v) for layer in layers for k, v in layer.items()}
    saved = {k: os.environ.get(k) for k in overlay}
    os.environ.update(overlay)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
