"""The capacity gate: runs past it in the order they started, at most the limit at once."""

from __future__ import annotations

import pytest

from saeflow.core.errors import RunQueued
from saeflow.steps import wait_for_capacity
from saeflow.steps.wait_for_capacity import CapacitySettings

MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:s-pipeline"


def arn(name: str) -> str:
    return f"arn:aws:states:us-east-1:123456789012:execution:s-pipeline:{name}"


RUNNING = [
    ("2026-01-01T00:00:03+00:00", arn("c")),
    ("2026-01-01T00:00:01+00:00", arn("a")),
    ("2026-01-01T00:00:02+00:00", arn("b")),
]


def gate(me: str, limit: int, running=RUNNING) -> dict:
    return wait_for_capacity.run(
        {"execution_arn": arn(me), "state_machine_arn": MACHINE},
        running=lambda machine: list(running) if machine == MACHINE else [],
        settings=CapacitySettings(max_concurrent_runs=limit),
    )


def test_the_earliest_runs_go_on():
    assert gate("a", 2) == {"position": 1, "running": 3, "limit": 2}
    assert gate("b", 2)["position"] == 2


def test_a_later_run_waits_and_says_how_many_are_ahead():
    with pytest.raises(RunQueued, match="1 run\\(s\\) ahead"):
        gate("c", 2)


def test_a_run_not_listed_yet_counts_as_the_last():
    with pytest.raises(RunQueued):
        gate("d", 3)
    assert gate("d", 4)["position"] == 4


def test_never_more_than_the_limit_past_the_gate():
    """Simulated: runs start, pass when admitted, end later; admissions never exceed."""
    limit, started, passed, done = 2, [], set(), set()
    for step in range(12):
        started.append((f"2026-01-01T00:00:{step:02d}+00:00", arn(f"r{step}")))
        if step % 3 == 2 and passed:
            done.add(min(passed))  # one admitted run ends now and then
            passed.discard(min(passed))
        running = [s for s in started if s[1] not in done]
        for _, execution in running:
            try:
                gate(execution.rsplit(":", 1)[1], limit, running)
                passed.add(execution)
            except RunQueued:
                pass
        assert len(passed) <= limit
