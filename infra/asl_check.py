"""Static checks of the state machine definition: ``python -m infra.asl_check FILE``.

Four checkers; each catches mistakes the others let through (tests/unit/test_asl.py):

- statelint (PyPI), on the substituted definition: the field rules of the States Language,
  ``States.ALL`` alone and last, Retry numbers and ``JitterStrategy``, reachability.
- asl-validator (npm, pinned in infra/package.json; ``npm ci --prefix infra``): the JSON
  schema, JSONPath and intrinsic syntax, Choice ``Variable`` paths, a ``key`` and a
  ``key.$`` that collide.
- moto's parser: what the embedded mode can execute. Its grammar lacks ``ItemBatcher``,
  which the embedded mode takes out and applies itself (infra/local/moto_patches.py), so the
  check parses what the embedded mode parses.
- infra.asl_rules: the house rules no validator knows.

Exits 1 listing the problems, 0 when the definition is clean.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from infra.asl_rules import PLACEHOLDER, house_problems

ASL_VALIDATOR = Path(__file__).resolve().parent / "node_modules" / ".bin" / "asl-validator"


def substituted(text: str) -> str:
    """The definition with every ``${Name}`` replaced by a plausible value, as CloudFormation would."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.endswith("Arn"):
            return f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        return "4" if name.endswith("Concurrency") else name

    return PLACEHOLDER.sub(value, text)


def statelint_problems(text: str) -> list[str]:
    from statelint.config import Config
    from statelint.linter import Linter
    from statelint.problem import ProblemType

    # AWS takes an integer BackoffRate; statelint asks for a float.
    config = Config(ignored_problem_types={ProblemType.FLOAT})
    problems = Linter.validate(json.loads(substituted(text)), config)
    return [f"statelint: {p}" for p in problems if not _outdated_statelint_rule(str(p))]


def _outdated_statelint_rule(problem: str) -> bool:
    """statelint 3.1.0 predates ItemReader's ``ReaderConfig.InputType`` (CSV | JSON | ...),
    which Step Functions requires for an ``s3:getObject`` reader; asl-validator checks it."""
    return 'Field "InputType" not allowed' in problem and problem.endswith(
        ".ItemReader.ReaderConfig"
    )


def asl_validator_problems(text: str, executable: Path = ASL_VALIDATOR) -> list[str]:
    if not executable.exists():
        return [f"asl-validator: {executable} is missing (run: npm ci --prefix infra)"]
    with tempfile.NamedTemporaryFile("w", suffix=".asl.json", encoding="utf-8") as file:
        file.write(substituted(text))
        file.flush()
        done = subprocess.run(
            [str(executable), "--json-path", file.name], capture_output=True, text=True
        )
    if done.returncode == 0:
        return []
    lines = (done.stdout + done.stderr).splitlines()[1:]  # the first line only says "invalid"
    return [f"asl-validator: {line.strip()}" for line in lines if line.strip()]


def moto_problems(text: str) -> list[str]:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.static_analyser.static_analyser import StaticAnalyser

    from infra.local.moto_patches import strip_item_batchers

    # moto warns that it cannot run SageMaker tasks itself: expected (the embedded mode
    # answers them with the local worker), so only its errors are shown while parsing.
    moto_logger = logging.getLogger("moto.stepfunctions")
    level = moto_logger.level
    moto_logger.setLevel(logging.ERROR)
    try:
        # What the embedded mode hands moto: the definition without its ItemBatchers.
        definition, _ = strip_item_batchers(substituted(text))
        StaticAnalyser().analyse(definition)
        AmazonStateLanguageParser.parse(definition)
    except Exception as exc:  # the parser raises many kinds; any of them is a finding
        return [f"moto: {type(exc).__name__}: {str(exc)[:500]}"]
    finally:
        moto_logger.setLevel(level)
    return []


def problems(text: str) -> list[str]:
    """Every problem the four checkers find in a definition's text."""
    try:
        definition = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    found = house_problems(definition) + statelint_problems(text)
    return found + asl_validator_problems(text) + moto_problems(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("definition", type=Path, help="the .asl.json file")
    path = parser.parse_args(argv).definition
    found = problems(path.read_text(encoding="utf-8"))
    for problem in found:
        print(problem, file=sys.stderr)
    checks = "house rules, statelint, asl-validator, moto parser"
    print(f"{path}: {'FAILED' if found else 'ok'} ({len(found)} problems; checks: {checks})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
