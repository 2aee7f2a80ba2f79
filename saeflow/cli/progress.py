"""Progress of one execution: which step runs, bars with ETA for the worker jobs, timings.

Steps come from the execution history (the same for the local stack and a deployed one);
the bars from the local job runner (training: the worker's progress.json; extraction:
records posted) when the stack is in this process.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

# State types whose time is worth showing (Choice/Pass/Succeed/Fail take no time).
_TIMED_TYPES = {"Task", "Map", "Parallel", "Wait"}
_BAR_WIDTH = 24


@dataclass
class StepTiming:
    name: str
    started: datetime
    ended: datetime | None = None

    @property
    def seconds(self) -> float | None:
        if self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


@dataclass
class ExecutionProgress:
    """The top-level steps of an execution as its history shows them."""

    steps: list[StepTiming] = field(default_factory=list)
    status: str = "RUNNING"

    @property
    def current(self) -> StepTiming | None:
        running = [s for s in self.steps if s.ended is None]
        return running[-1] if running else None


def timed_states(definition: str) -> set[str]:
    """Top-level states of the ASL that do work (Map iterations stay inside their Map)."""
    states = json.loads(definition).get("States", {})
    return {name for name, spec in states.items() if spec.get("Type") in _TIMED_TYPES}


def read_progress(sfn: Any, execution_arn: str, states: set[str]) -> ExecutionProgress:
    events: list[dict[str, Any]] = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        events.extend(page["events"])
    progress = ExecutionProgress()
    open_steps: dict[str, StepTiming] = {}
    for event in events:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            name = event["stateEnteredEventDetails"]["name"]
            if name in states and name not in open_steps:
                step = StepTiming(name=name, started=event["timestamp"])
                open_steps[name] = step
                progress.steps.append(step)
        elif kind.endswith("StateExited"):
            name = event["stateExitedEventDetails"]["name"]
            step = open_steps.pop(name, None) if name in states else None
            if step is not None:
                step.ended = event["timestamp"]
        elif kind in ("ExecutionSucceeded", "ExecutionFailed", "ExecutionAborted"):
            progress.status = kind.removeprefix("Execution").upper()
            for step in open_steps.values():  # a failed Task has no StateExited
                step.ended = event["timestamp"]
    return progress


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _count(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}"


def progress_bar(
    stage: str, done: float, total: float | None, unit: str, eta_s: float | None
) -> str:
    if not total:
        return f"{stage} {_count(done)} {unit}".strip() if done else stage
    fraction = min(1.0, max(0.0, done / total))
    filled = round(fraction * _BAR_WIDTH)
    bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
    eta = f" ETA {format_duration(eta_s)}" if eta_s is not None else ""
    return f"{stage} [{bar}] {fraction:4.0%} {_count(done)}/{_count(total)} {unit}{eta}"


JobProgressSource = Callable[[], list[Any]]


class ProgressPrinter:
    """Writes progress to a stream: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 10.0) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._interval_s = interval_s
        self._last_step: str | None = None
        self._last_line = ""
        self._last_print = 0.0
        self._reported: set[str] = set()

    def update(self, progress: ExecutionProgress, jobs: list[Any]) -> None:
        for step in progress.steps:
            if step.ended is not None and step.name not in self._reported:
                self._reported.add(step.name)
                self._line(f"  {step.name:<22} done in {format_duration(step.seconds)}", final=True)
        current = progress.current
        if current is None:
            return
        running = [j for j in jobs if getattr(j, "status", "") == "InProgress"]
        detail = ""
        if running:
            job = running[-1]
            detail = "  " + progress_bar(job.stage, job.done, job.total, job.unit, job.eta_s)
        elapsed = (datetime.now(current.started.tzinfo) - current.started).total_seconds()
        line = f"> {current.name:<22} {format_duration(elapsed):>7}{detail}"
        if self._tty:
            self._line(line, final=False)
        elif current.name != self._last_step or (
            detail and time.monotonic() - self._last_print >= self._interval_s
        ):
            self._line(line, final=True)
        self._last_step = current.name

    def note(self, text: str) -> None:
        self._line(text, final=True)

    def summary(self, progress: ExecutionProgress) -> None:
        self._clear()
        total = sum(s.seconds or 0.0 for s in progress.steps)
        self._stream.write("step timings:\n")
        for step in progress.steps:
            self._stream.write(f"  {step.name:<22} {format_duration(step.seconds):>8}\n")
        self._stream.write(f"  {'total':<22} {format_duration(total):>8}\n")
        self._stream.flush()

    def _line(self, text: str, *, final: bool) -> None:
        if self._tty:
            self._clear()
            self._stream.write(text + ("\n" if final else ""))
            self._last_line = "" if final else text
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
        self._last_print = time.monotonic()

    def _clear(self) -> None:
        if self._tty and self._last_line:
            self._stream.write("\r" + " " * len(self._last_line) + "\r")
            self._last_line = ""


def watch_execution(
    sfn: Any,
    execution_arn: str,
    definition: str,
    *,
    jobs: JobProgressSource | None = None,
    printer: ProgressPrinter | None = None,
    poll_s: float = 1.0,
    timeout_s: float = 6 * 3600,
) -> tuple[dict[str, Any], ExecutionProgress]:
    """Follow the execution to its end; returns (DescribeExecution, the step timings)."""
    states = timed_states(definition)
    printer = printer or ProgressPrinter()
    deadline = time.monotonic() + timeout_s
    while True:
        described = sfn.describe_execution(executionArn=execution_arn)
        progress = read_progress(sfn, execution_arn, states)
        if described["status"] != "RUNNING":
            printer.update(progress, [])
            printer.summary(progress)
            return described, progress
        printer.update(progress, jobs() if jobs else [])
        if time.monotonic() > deadline:
            raise TimeoutError(f"{execution_arn} still running after {timeout_s:.0f}s")
        time.sleep(poll_s)
