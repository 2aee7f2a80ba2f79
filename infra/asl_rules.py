"""House rules for the state machine that no ASL validator knows (statelint and
asl-validator check the language itself; see infra/asl_check.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
HARD_CODED_ARN = re.compile(r"arn:aws[a-z-]*:(?!states:::)[a-z0-9-]+:[a-z0-9-]*:\d{12}:")
# Optimised integrations this project may use; anything else is a typo or a new need.
INTEGRATION = re.compile(
    r"^arn:aws:states:::(sagemaker:(createTrainingJob|createTransformJob|createModel|deleteModel)(\.sync)?"
    r"|events:putEvents|lambda:invoke|aws-sdk:[a-z0-9]+:[A-Za-z0-9]+)$"
)
CAN_FAIL = {"Task", "Map", "Parallel"}
PAYLOADS = ("Parameters", "ResultSelector", "ItemSelector")


def placeholders(text: str) -> set[str]:
    """The ``${Name}`` DefinitionSubstitutions keys a definition uses."""
    return set(PLACEHOLDER.findall(text))


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and (value == "$" or value.startswith(("$.", "$[", "$$")))


def _states(machine: dict[str, Any], top: bool = True) -> Iterator[tuple[str, dict, bool]]:
    """(name, state, at top level) for every state, nested Map/Parallel graphs included."""
    for name, state in (machine.get("States") or {}).items():
        yield name, state, top
        inner = [state.get("ItemProcessor") or state.get("Iterator"), *state.get("Branches", [])]
        for graph in filter(None, inner):
            yield from _states(graph, top=False)


def _paths_without_dollar_key(payload: Any, where: str) -> Iterator[str]:
    """A plain key holding a path: the author forgot the '.$' (it would pass the text on)."""
    if not isinstance(payload, dict | list):
        return
    for key, value in payload.items() if isinstance(payload, dict) else enumerate(payload):
        if isinstance(key, str) and key.endswith(".$"):
            continue
        if _is_path(value):
            yield f"{where}/{key}: {value!r} looks like a path but the key lacks '.$'"
        elif isinstance(value, dict | list):
            yield from _paths_without_dollar_key(value, f"{where}/{key}")


def house_problems(definition: dict[str, Any]) -> list[str]:
    """Every house-rule problem of a parsed definition (empty when it is clean)."""
    text = json.dumps(definition)
    problems = [
        f"hard-coded ARN {m.group(0)!r}: use a ${{...}}" for m in HARD_CODED_ARN.finditer(text)
    ]
    languages = [(n, s) for n, s, _ in _states(definition)] + [("(machine)", definition)]
    for name, holder in languages:
        if holder.get("QueryLanguage", "JSONPath") != "JSONPath":
            problems.append(f"{name}: JSONPath only (moto's interpreter lacks JSONata)")
    for name, state, top in _states(definition):
        kind, resource = state.get("Type"), state.get("Resource", "")
        if kind == "Task" and not (PLACEHOLDER.fullmatch(resource) or INTEGRATION.match(resource)):
            problems.append(f"{name}: Resource is neither a ${{...}} nor a known integration")
        catches = [c.get("ErrorEquals", []) for c in state.get("Catch", [])]
        if top and kind in CAN_FAIL and not any("States.ALL" in errors for errors in catches):
            problems.append(f"{name}: can fail but has no Catch for States.ALL")
        if kind == "Choice" and "Default" not in state:
            problems.append(f"{name}: a Choice without Default fails when nothing matches")
        for field in PAYLOADS:
            problems += _paths_without_dollar_key(state.get(field), f"{name}/{field}")
    return problems
