"""Progress of one execution: which step runs, bars with ETA for the worker jobs, timings
(drawn by rich on a terminal; plain lines elsewhere).

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

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table

# State types whose time is worth showing (Choice/Pass/Succeed/Fail take no time).
_TIMED_TYPES = {"Task", "Map", "Parallel", "Wait"}


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


def job_detail(job: Any, *, percent: bool = False) -> str:
    """A running job as text: "train 15k/30k tokens ETA 42.0s" (with "50%" after the stage)."""
    parts = [job.stage]
    if job.total:
        if percent:
            parts.append(f"{job.done / job.total:.0%}")
        parts.append(f"{_count(job.done)}/{_count(job.total)} {job.unit}".strip())
        if job.eta_s is not None:
            parts.append(f"ETA {format_duration(job.eta_s)}")
    elif job.done:
        parts.append(f"{_count(job.done)} {job.unit}".strip())
    return " ".join(parts)


JobProgressSource = Callable[[], list[Any]]


class ProgressPrinter:
    """Progress on a stream: rich's live bar on a terminal, plain lines otherwise (CI, pipes).

    ``terminal`` overrides the detection (tests).
    """

    def __init__(
        self, stream: TextIO | None = None, interval_s: float = 10.0, terminal: bool | None = None
    ) -> None:
        self._console = Console(
            file=stream or sys.stderr,
            force_terminal=terminal,
            markup=False,
            highlight=False,
            emoji=False,
            soft_wrap=True,
        )
        self._bar: Progress | None = None
        if self._console.is_terminal:
            self._bar = Progress(
                TextColumn("> {task.description:<22} {task.fields[elapsed]:>7}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self._console,
                transient=True,
            )
        self._task: TaskID | None = None
        self._interval_s = interval_s
        self._last_step: str | None = None
        self._last_print = 0.0
        self._reported: set[str] = set()

    def update(self, progress: ExecutionProgress, jobs: list[Any]) -> None:
        for step in progress.steps:
            if step.ended is not None and step.name not in self._reported:
                self._reported.add(step.name)
                self.note(f"  {step.name:<22} done in {format_duration(step.seconds)}")
        current = progress.current
        if current is None:
            return
        running = [j for j in jobs if getattr(j, "status", "") == "InProgress"]
        job = running[-1] if running else None
        elapsed = (datetime.now(current.started.tzinfo) - current.started).total_seconds()
        if self._bar is not None:
            self._show_bar(current.name, format_duration(elapsed), job)
        elif current.name != self._last_step or (
            job and time.monotonic() - self._last_print >= self._interval_s
        ):
            detail = f"  {job_detail(job, percent=True)}" if job else ""
            self.note(f"> {current.name:<22} {format_duration(elapsed):>7}{detail}")
        self._last_step = current.name

    def _show_bar(self, step: str, elapsed: str, job: Any) -> None:
        assert self._bar is not None
        total = job.total if job and job.total else None  # None: rich pulses the bar
        fields = {"completed": job.done if job else 0, "elapsed": elapsed}
        fields["detail"] = job_detail(job) if job else ""
        if step == self._last_step and self._task is not None:
            self._bar.update(self._task, total=total, **fields)
            return
        if self._task is not None:  # a new step: a new bar (rich cannot unset a total)
            self._bar.remove_task(self._task)
        self._bar.start()
        self._task = self._bar.add_task(step, total=total, **fields)

    def note(self, text: str) -> None:
        self._console.print(text)
        self._last_print = time.monotonic()

    def close(self) -> None:
        """Ends the live bar (idempotent); the terminal is left as it was."""
        if self._bar is not None:
            self._bar.stop()

    def summary(self, progress: ExecutionProgress) -> None:
        self.close()
        table = Table(box=None, show_header=False)
        table.add_column("step")
        table.add_column("time", justify="right")
        for step in progress.steps:
            table.add_row(step.name, format_duration(step.seconds))
        table.add_row("total", format_duration(sum(s.seconds or 0.0 for s in progress.steps)))
        self._console.print("step timings:")
        self._console.print(table)


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
    try:
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
    finally:  # an error or Ctrl-C must not leave the live bar (and a hidden cursor) behind
        printer.close()
