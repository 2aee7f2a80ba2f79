"""wait_for_capacity: at most ``MaxConcurrentRuns`` runs past this step at once.

A run over the limit waits, in the order runs started; it does not fail. This step raises
:class:`RunQueued` while the run must wait, and the state machine retries it with backoff
(a queue without a queue service). It sits after validate and resolve_sae, so bad input
fails at once, and before any GPU or LLM work.

Input (the state's Parameters): ``{"execution_arn": $$.Execution.Id,
"state_machine_arn": $$.StateMachine.Id}``. A run goes on when it is among the first
``limit`` RUNNING executions ordered by start time (ties by ARN). Every run that went on
still ranks within the limit until it ends: runs ahead of it can only leave, later runs
rank behind it, so at most ``limit`` runs are ever past this step. Executions that ended in
any way (failed, aborted, timed out) are simply no longer RUNNING: nothing leaks.

Returns ``$.capacity`` = ``{"position", "running", "limit"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saeflow.core.errors import RunQueued

logger = logging.getLogger(__name__)

RunningExecutions = Callable[[str], list[tuple[str, str]]]
"""state machine ARN -> ``(start time ISO 8601, execution ARN)`` of its RUNNING executions."""


@dataclass(frozen=True)
class CapacitySettings:
    max_concurrent_runs: int = 10
    """Template parameter MaxConcurrentRuns."""


def run(
    event: dict[str, Any], *, running: RunningExecutions, settings: CapacitySettings
) -> dict[str, Any]:
    me = event["execution_arn"]
    ranked = sorted(running(event["state_machine_arn"]))
    arns = [arn for _, arn in ranked]
    # Not listed yet (list results lag a fresh start by a moment): behind everyone listed.
    position = arns.index(me) + 1 if me in arns else len(arns) + 1
    limit = settings.max_concurrent_runs
    if position > limit:
        raise RunQueued(
            f"{position - limit} run(s) ahead of this one in line: {len(arns)} running, "
            f"at most {limit} at once (template parameter MaxConcurrentRuns)"
        )
    logger.info("run admitted: position %d of %d running (limit %d)", position, len(arns), limit)
    return {"position": position, "running": len(arns), "limit": limit}
