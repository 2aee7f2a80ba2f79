"""Static checks of an Amazon States Language definition (JSONPath) before it is deployed.

There is no ASL validator on PyPI (statelint is Ruby, asl-validator is npm), so this
module does three things, each catching what the others miss:

1. ``check_definition``: the graph and house rules - every ``Next``/``Default``/
   ``Choices``/``Catch`` target exists in its scope, every state is reachable, a
   terminal state is reachable, Retry/Catch are well formed (``States.ALL`` alone and
   last), every Task/Map/Parallel catches ``States.ALL``, Task resources are known
   integrations or ``${...}`` placeholders, no ARN or account id is hard-coded,
   ``.$`` keys hold paths or intrinsics and plain keys hold no paths, JSONPath only.
2. cfn-lint's state-machine schema (rule E3601), run on a throwaway template that
   embeds the definition (``--cfn-lint``).
3. moto's port of the Step Functions interpreter parses it (what the embedded mode
   executes), when moto is importable.

``python -m infra.asl_check statemachine/pipeline.asl.json`` exits 1 and lists the
problems, 0 when it is clean.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
STATE_TYPES = {"Task", "Pass", "Choice", "Wait", "Succeed", "Fail", "Parallel", "Map"}
TERMINAL_TYPES = {"Succeed", "Fail"}
CAN_FAIL_TYPES = {"Task", "Map", "Parallel"}
JITTER_STRATEGIES = {"FULL", "NONE"}
# Optimised integrations this project may use; anything else is a typo or a new need.
KNOWN_INTEGRATIONS = re.compile(
    r"^arn:aws:states:::("
    r"sagemaker:(createTrainingJob|createTransformJob|createModel|deleteModel|createProcessingJob)(\.sync)?"
    r"|events:putEvents|lambda:invoke|s3:putObject|s3:getObject|aws-sdk:[a-z0-9]+:[A-Za-z0-9]+"
    r")$"
)
HARD_CODED_ARN = re.compile(r"arn:aws[a-z-]*:(?!states:::)[a-z0-9-]+:[a-z0-9-]*:\d{12}:")
PATH_FIELDS = ("InputPath", "OutputPath", "ResultPath", "ItemsPath")
CHOICE_OPERATORS = {
    "And",
    "Or",
    "Not",
    *(
        f"{kind}{op}{suffix}"
        for kind in ("String", "Numeric", "Timestamp")
        for op in ("Equals", "LessThan", "GreaterThan", "LessThanEquals", "GreaterThanEquals")
        for suffix in ("", "Path")
    ),
    "StringMatches",
    "BooleanEquals",
    "BooleanEqualsPath",
    "IsNull",
    "IsPresent",
    "IsNumeric",
    "IsString",
    "IsBoolean",
    "IsTimestamp",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the definition, at a JSON-pointer-like location."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def placeholders(text: str) -> set[str]:
    """The ``${Name}`` DefinitionSubstitutions keys a definition uses."""
    return set(PLACEHOLDER_RE.findall(text))


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and (value == "$" or value.startswith(("$.", "$[", "$$")))


def _is_intrinsic(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("States.") and value.endswith(")")


def _check_payload(obj: Any, where: str) -> Iterator[Problem]:
    """Parameters / ResultSelector / ItemSelector: `.$` keys take paths, others do not."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{where}/{key}"
            if key.endswith(".$"):
                if not (_is_path(value) or _is_intrinsic(value)):
                    yield Problem(here, f"a '.$' key needs a JSONPath or intrinsic, got {value!r}")
            else:
                if _is_path(value):
                    yield Problem(here, f"{value!r} looks like a path but the key lacks '.$'")
                yield from _check_payload(value, here)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _check_payload(item, f"{where}/{i}")


def _check_retry_catch(state: dict[str, Any], where: str) -> Iterator[Problem]:
    for field in ("Retry", "Catch"):
        rules = state.get(field, [])
        if not isinstance(rules, list):
            yield Problem(f"{where}/{field}", "must be a list")
            continue
        for i, rule in enumerate(rules):
            here = f"{where}/{field}/{i}"
            errors = rule.get("ErrorEquals")
            if not isinstance(errors, list) or not errors:
                yield Problem(here, "ErrorEquals must be a non-empty list")
                continue
            if "States.ALL" in errors and (len(errors) > 1 or i != len(rules) - 1):
                yield Problem(here, "States.ALL must be alone and in the last rule")
            if field == "Retry":
                yield from _check_retry_numbers(rule, here)
            elif "Next" not in rule:
                yield Problem(here, "a Catch rule needs Next")


def _check_retry_numbers(rule: dict[str, Any], where: str) -> Iterator[Problem]:
    checks = (
        ("IntervalSeconds", lambda v: isinstance(v, int) and v >= 1),
        ("MaxAttempts", lambda v: isinstance(v, int) and v >= 0),
        ("BackoffRate", lambda v: isinstance(v, int | float) and v >= 1.0),
        ("MaxDelaySeconds", lambda v: isinstance(v, int) and v >= 1),
        ("JitterStrategy", lambda v: v in JITTER_STRATEGIES),
    )
    for name, ok in checks:
        if name in rule and not ok(rule[name]):
            yield Problem(f"{where}/{name}", f"invalid value {rule[name]!r}")


def _targets(state: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, target state name) for every transition out of a state."""
    if "Next" in state:
        yield "Next", state["Next"]
    if "Default" in state:
        yield "Default", state["Default"]
    for i, choice in enumerate(state.get("Choices", [])):
        if "Next" in choice:
            yield f"Choices/{i}/Next", choice["Next"]
    for i, catch in enumerate(state.get("Catch", [])):
        if "Next" in catch:
            yield f"Catch/{i}/Next", catch["Next"]


def _check_choice_rule(rule: Any, where: str, top: bool) -> Iterator[Problem]:
    if not isinstance(rule, dict):
        yield Problem(where, "a choice rule must be an object")
        return
    operators = [k for k in rule if k in CHOICE_OPERATORS]
    if len(operators) != 1:
        yield Problem(where, f"needs exactly one comparison operator, has {operators}")
        return
    op = operators[0]
    if op in ("And", "Or"):
        for i, sub in enumerate(rule[op]):
            yield from _check_choice_rule(sub, f"{where}/{op}/{i}", top=False)
    elif op == "Not":
        yield from _check_choice_rule(rule[op], f"{where}/Not", top=False)
    elif not _is_path(rule.get("Variable")):
        yield Problem(where, "Variable must be a JSONPath")
    if top and "Next" not in rule:
        yield Problem(where, "a top-level choice rule needs Next")


def _check_state(name: str, state: Any, where: str, require_catch_all: bool) -> Iterator[Problem]:
    if not isinstance(state, dict):
        yield Problem(where, "a state must be an object")
        return
    kind = state.get("Type")
    if kind not in STATE_TYPES:
        yield Problem(where, f"unknown Type {kind!r}")
        return
    if state.get("QueryLanguage", "JSONPath") != "JSONPath":
        yield Problem(where, "JSONPath only (moto's interpreter lacks JSONata)")
    if len(name) > 80:
        yield Problem(where, "state names are at most 80 characters")
    has_next, has_end = "Next" in state, state.get("End") is True
    if kind in ("Choice", "Succeed", "Fail"):
        if has_next or has_end:
            yield Problem(where, f"a {kind} state has neither Next nor End")
    elif has_next == has_end:
        yield Problem(where, "needs exactly one of Next or End: true")
    for field in PATH_FIELDS:
        if field in state and state[field] is not None and not _is_path(state[field]):
            yield Problem(f"{where}/{field}", f"must be a JSONPath or null, got {state[field]!r}")
    for field in ("Parameters", "ResultSelector", "ItemSelector"):
        if field in state:
            yield from _check_payload(state[field], f"{where}/{field}")
    yield from _check_retry_catch(state, where)
    if kind in CAN_FAIL_TYPES and require_catch_all:
        catches = state.get("Catch", [])
        if not any("States.ALL" in c.get("ErrorEquals", []) for c in catches):
            yield Problem(where, "can fail but has no Catch for States.ALL")
    if kind == "Task":
        resource = state.get("Resource", "")
        if not (PLACEHOLDER_RE.fullmatch(resource) or KNOWN_INTEGRATIONS.match(resource)):
            yield Problem(
                f"{where}/Resource",
                f"neither a ${{...}} placeholder nor a known integration: {resource!r}",
            )
    if kind == "Choice":
        choices = state.get("Choices")
        if not isinstance(choices, list) or not choices:
            yield Problem(where, "a Choice needs a non-empty Choices list")
        else:
            for i, rule in enumerate(choices):
                yield from _check_choice_rule(rule, f"{where}/Choices/{i}", top=True)
        if "Default" not in state:
            yield Problem(where, "a Choice without Default fails at run time when nothing matches")
    if kind == "Fail":
        for a, b in (("Error", "ErrorPath"), ("Cause", "CausePath")):
            if a in state and b in state:
                yield Problem(where, f"{a} and {b} exclude each other")
    if kind == "Map":
        if "MaxConcurrency" in state and "MaxConcurrencyPath" in state:
            yield Problem(where, "MaxConcurrency and MaxConcurrencyPath exclude each other")
        if "MaxConcurrency" in state and not isinstance(state["MaxConcurrency"], int):
            yield Problem(where, "MaxConcurrency must be an integer")


def _check_scope(machine: Any, where: str, require_catch_all: bool) -> Iterator[Problem]:
    """One state graph: the top level, a Map's ItemProcessor or a Parallel branch."""
    if not isinstance(machine, dict):
        yield Problem(where, "must be an object")
        return
    states = machine.get("States")
    start = machine.get("StartAt")
    if not isinstance(states, dict) or not states:
        yield Problem(where, "States must be a non-empty object")
        return
    if start not in states:
        yield Problem(f"{where}/StartAt", f"{start!r} is not a state")
        return
    for name, state in states.items():
        here = f"{where}/States/{name}"
        yield from _check_state(name, state, here, require_catch_all)
        if not isinstance(state, dict):
            continue
        for field, target in _targets(state):
            if target not in states:
                yield Problem(f"{here}/{field}", f"{target!r} is not a state in this scope")
        if state.get("Type") == "Map":
            processor = state.get("ItemProcessor") or state.get("Iterator")
            yield from _check_scope(processor, f"{here}/ItemProcessor", require_catch_all=False)
        for i, branch in enumerate(
            state.get("Branches", []) if state.get("Type") == "Parallel" else []
        ):
            yield from _check_scope(branch, f"{here}/Branches/{i}", require_catch_all=False)

    reached, frontier = {start}, [start]
    while frontier:
        state = states.get(frontier.pop())
        if not isinstance(state, dict):
            continue
        for _, target in _targets(state):
            if target in states and target not in reached:
                reached.add(target)
                frontier.append(target)
    for name in states:
        if name not in reached:
            yield Problem(f"{where}/States/{name}", f"unreachable from StartAt {start!r}")
    if not any(
        isinstance(states[n], dict)
        and (states[n].get("Type") in TERMINAL_TYPES or states[n].get("End") is True)
        for n in reached
    ):
        yield Problem(where, "no terminal state (Succeed, Fail or End) is reachable")


def check_definition(definition: Any, *, require_catch_all: bool = True) -> list[Problem]:
    """Every problem found in a parsed definition (an empty list when it is clean).

    ``require_catch_all`` applies to the top level: every Task/Map/Parallel there must
    catch ``States.ALL`` (inside a Map, a failure reaches the Map's own Catch).
    """
    problems = list(_check_scope(definition, "", require_catch_all))
    text = json.dumps(definition)
    for match in HARD_CODED_ARN.finditer(text):
        problems.append(
            Problem("", f"hard-coded ARN {match.group(0)!r}: use a ${{...}} substitution")
        )
    return problems


def load_definition(path: Path) -> tuple[str, Any]:
    """The file's text and parsed JSON; raises ValueError naming line and column."""
    text = path.read_text(encoding="utf-8")
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc


def substituted(text: str, values: dict[str, str] | None = None) -> str:
    """The definition with every ``${Name}`` replaced (by ``values`` or a plausible dummy)."""
    values = values or {}

    def dummy(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        if name.endswith("FunctionArn"):
            return f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        if name.endswith("RoleArn"):
            return f"arn:aws:iam::123456789012:role/{name}"
        if name.endswith("Concurrency"):
            return "4"
        return name

    return PLACEHOLDER_RE.sub(dummy, text)


def cfn_lint_problems(definition: Any, keys: set[str], cfn_lint: str) -> list[Problem]:
    """cfn-lint's state-machine schema (E3601) on a template embedding the definition."""
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "Machine": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "RoleArn": "arn:aws:iam::123456789012:role/asl-check",
                    "Definition": definition,
                    "DefinitionSubstitutions": {key: "x" for key in sorted(keys)},
                },
            }
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "asl-check.json")
        path.write_text(json.dumps(template), encoding="utf-8")
        done = subprocess.run(
            [cfn_lint, "--format", "parseable", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode == 0:
        return []
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return [Problem("cfn-lint", line) for line in lines] or [
        Problem("cfn-lint", f"exit {done.returncode}")
    ]


def moto_problems(text: str) -> list[Problem]:
    """Whether moto's ASL interpreter parses the (substituted) definition."""
    try:
        from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
        from moto.stepfunctions.parser.asl.static_analyser.static_analyser import StaticAnalyser
    except ImportError:
        return []
    definition = substituted(text)
    # moto warns that it cannot run SageMaker tasks itself: expected (the embedded mode
    # answers them with the local worker), so only errors are shown while parsing.
    moto_logger = logging.getLogger("moto.stepfunctions")
    level = moto_logger.level
    moto_logger.setLevel(logging.ERROR)
    try:
        StaticAnalyser().analyse(definition)
        AmazonStateLanguageParser.parse(definition)
    except Exception as exc:  # the parser raises many kinds; any of them is a finding
        return [Problem("moto", f"{type(exc).__name__}: {exc}")]
    finally:
        moto_logger.setLevel(level)
    return []


def find_cfn_lint() -> str | None:
    """The project's pinned cfn-lint (.venv-tools), else one beside this Python or on PATH."""
    candidates = [
        str(Path(__file__).resolve().parents[1] / ".venv-tools" / "bin" / "cfn-lint"),
        str(Path(sys.executable).with_name("cfn-lint")),
        shutil.which("cfn-lint"),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("definition", type=Path, help="the .asl.json file")
    parser.add_argument("--cfn-lint", default=None, help="cfn-lint executable (default: found)")
    parser.add_argument("--no-cfn-lint", action="store_true", help="skip cfn-lint's schema check")
    args = parser.parse_args(argv)

    try:
        text, definition = load_definition(args.definition)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = check_definition(definition)
    checks = ["graph"]
    if not args.no_cfn_lint:
        cfn_lint = args.cfn_lint or find_cfn_lint()
        if cfn_lint is None:
            print("cfn-lint not found: install it or pass --no-cfn-lint", file=sys.stderr)
            return 1
        problems += cfn_lint_problems(definition, placeholders(text), cfn_lint)
        checks.append("cfn-lint E3601")
    moto = moto_problems(text)
    problems += moto
    checks.append("moto parser")
    for problem in problems:
        print(problem, file=sys.stderr)
    states = len(definition.get("States", {}))
    verdict = "FAILED" if problems else "ok"
    print(
        f"{args.definition}: {verdict} ({len(problems)} problems; {states} states; checks: {', '.join(checks)})"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
