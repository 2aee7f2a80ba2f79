"""One feature's conversation with the labeller: spend, time, repair, and what was spent.

Every request goes through :meth:`LabelSession.ask_checked`, which

- stops before a request that the run's spending cap cannot cover: the request's worst
  case is reserved on the run's :class:`~saeflow.ports.SpendLedger` (an atomic, conditional
  add shared by every Map item), and settled to what the service reports it used;
- stops before a request that could outlast the invocation (:class:`LabelerOutOfTime`,
  retried by the state machine from the saved progress);
- validates the tool input against its schema and asks once for a repair;
- records every request's usage (tokens, cache reads and writes, USD).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from saeflow.core.errors import LabelerError, LabelerOutOfTime
from saeflow.core.labeling.answers import InvalidAnswer
from saeflow.core.labeling.pricing import micro_usd, request_ceiling_usd, usage_usd
from saeflow.core.labeling.prompts import repair_request
from saeflow.ports import Labeler, SpendLedger, ToolAnswer, ToolRequest

logger = logging.getLogger(__name__)

T = TypeVar("T")
# A tool answer that fails its schema is asked for again this many times.
REPAIRS = 1


class UnusableAnswer(LabelerError):
    """The model answered, but never with a tool input that passed its schema."""


class BudgetReached(LabelerError):
    """The run's label.max_usd cannot cover the next request (caught by the caller)."""


@dataclass
class Usage:
    """What one feature's requests used, across invocations (it is saved with progress)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    usd: float = 0.0
    model_id: str | None = None
    per_request: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, answer: ToolAnswer, usd: float) -> None:
        u = answer.usage
        self.input_tokens += u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
        self.output_tokens += u.output_tokens
        self.cache_read_tokens += u.cache_read_tokens
        self.cache_write_tokens += u.cache_write_tokens
        self.requests += 1
        self.usd += usd
        self.model_id = self.model_id or answer.model_id
        self.per_request.append(
            {
                "kind": kind,
                "input_tokens": u.input_tokens,
                "cache_read_tokens": u.cache_read_tokens,
                "cache_write_tokens": u.cache_write_tokens,
                "output_tokens": u.output_tokens,
                "usd": round(usd, 8),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """``input_tokens`` counts every input token (cached or not); ``usd`` is the cost."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "requests": self.requests,
            "usd": round(self.usd, 8),
            "model_id": self.model_id,
            "per_request": list(self.per_request),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        data = data or {}
        return cls(
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            cache_read_tokens=int(data.get("cache_read_tokens") or 0),
            cache_write_tokens=int(data.get("cache_write_tokens") or 0),
            requests=int(data.get("requests") or 0),
            usd=float(data.get("usd") or 0.0),
            model_id=data.get("model_id"),
            per_request=list(data.get("per_request") or ()),
        )


class InMemoryLedger:
    """A :class:`~saeflow.ports.SpendLedger` in one process (tests, no registry table)."""

    def __init__(self) -> None:
        self.spent: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve(self, run_id: str, amount: int, cap: int) -> bool:
        with self._lock:
            if self.spent.get(run_id, 0) + amount > cap:
                return False
            self.spent[run_id] = self.spent.get(run_id, 0) + amount
            return True

    def settle(self, run_id: str, delta: int, usage: Mapping[str, int]) -> None:
        with self._lock:
            self.spent[run_id] = self.spent.get(run_id, 0) + delta
            self.requests[run_id] = self.requests.get(run_id, 0) + int(usage.get("requests", 0))


@dataclass(frozen=True)
class Limits:
    """The run's spending cap and this invocation's clock."""

    run_id: str
    ledger: SpendLedger
    max_usd: float | None = None
    remaining_s: Callable[[], float] | None = None
    """Seconds left in this invocation (the Lambda context), None: no limit."""
    request_worst_s: float = 0.0
    """The longest one request can take with the client's timeouts and retries."""


class LabelSession:
    """Requests for one feature, within the run's limits; ``progress`` is called after each."""

    def __init__(
        self,
        labeler: Labeler,
        limits: Limits,
        usage: Usage | None = None,
        progress: Callable[[Usage], None] | None = None,
    ) -> None:
        self.labeler = labeler
        self.limits = limits
        self.usage = usage or Usage()
        self.progress = progress

    def ask_checked(self, kind: str, request: ToolRequest, check: Callable[[Any], T]) -> T:
        """The checked tool input, after at most one repair; else :class:`UnusableAnswer`."""
        current = request
        for attempt in range(REPAIRS + 1):
            answer = self._send(kind if not attempt else f"{kind}-repair", current)
            try:
                return check(answer.tool_input)
            except InvalidAnswer as exc:
                logger.warning("%s answer rejected (attempt %d): %s", kind, attempt + 1, exc)
                last = exc
                current = repair_request(request, exc.message)
        raise UnusableAnswer(
            f"no valid {kind} answer in {REPAIRS + 1} attempts: {last.message}"
        ) from last

    def _send(self, kind: str, request: ToolRequest) -> ToolAnswer:
        limits = self.limits
        if limits.remaining_s is not None and limits.remaining_s() < limits.request_worst_s:
            raise LabelerOutOfTime(
                f"{limits.remaining_s():.0f} s left in this invocation, the {kind} request may "
                f"take {limits.request_worst_s:.0f} s: continuing in a retry"
            )
        model = self.labeler.model_id
        reserved = micro_usd(request_ceiling_usd(model, request))
        cap = micro_usd(limits.max_usd) if limits.max_usd is not None else None
        if cap is not None and not limits.ledger.reserve(limits.run_id, reserved, cap):
            raise BudgetReached(
                f"label.max_usd={limits.max_usd:g} reached: the run's spend so far leaves "
                f"too little for the {kind} request (up to {reserved / 1e6:.4f} USD)"
            )
        try:
            answer = self.labeler.ask(request)
        except BaseException:
            if cap is not None:  # nothing was spent: give the reservation back
                limits.ledger.settle(limits.run_id, -reserved, {})
            raise
        usd = usage_usd(model, answer.usage)
        self.usage.add(kind, answer, usd)
        counted = {
            "requests": 1,
            "input_tokens": answer.usage.input_tokens,
            "output_tokens": answer.usage.output_tokens,
        }
        limits.ledger.settle(
            limits.run_id, micro_usd(usd) - (reserved if cap is not None else 0), counted
        )
        if self.progress is not None:
            self.progress(self.usage)
        return answer
