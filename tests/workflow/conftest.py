"""Shared fixtures of the embedded-mode workflow tests.

One state dir for the whole session: the first good run trains the SAE (small budget),
every later test reuses it, as a user's second run would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# Small enough for a 2-core CI box; the gate is relaxed because 30k tokens make a weak SAE
# (the gate itself is tested in tests/unit/test_quality_gate.py).
SMALL_TRAINING = (
    "train.training_tokens=30000",
    "train.expansion_factor=2",
    "train.eval_tokens=4000",
    "train.batch_size_tokens=1024",
    "gate.min_explained_variance=-100",
    "gate.min_ce_loss_recovered=-100",
    "gate.max_dead_fraction=1",
    "label.max_features=4",
)


def small_training_options() -> dict:
    """The same settings as a file's options line (so uploads reuse the session's SAE)."""
    options: dict = {}
    for item in SMALL_TRAINING:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        options.setdefault(section, {})[name] = json.loads(value)
    return options


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str, timeout: float = 1500, env: dict | None = None) -> CliResult:
    completed = subprocess.run(
        [sys.executable, "-m", "saeflow.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**_without_llm_credentials(os.environ), **(env or {})},
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def _without_llm_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """The labeller default depends on credentials; the tests want the offline one unless
    a test passes its own (a developer's real AWS credentials must never reach a test)."""
    hidden = (
        "ANTHROPIC_API_KEY",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    )
    kept = {k: v for k, v in environ.items() if k not in hidden}
    return {
        **kept,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    """Run the ``saeflow`` command as a user would (a subprocess)."""
    return run_cli


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def small_training() -> tuple[str, ...]:
    return SMALL_TRAINING


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A developer may point this at a previous session's state to skip the training.
    reused = os.environ.get("SAEFLOW_WORKFLOW_TEST_STATE_DIR")
    return Path(reused) if reused else tmp_path_factory.mktemp("saeflow-state")


@pytest.fixture(scope="session")
def fresh_state(state_dir: Path) -> bool:
    """Whether the session started from an empty state (no SAE, no label registry yet).

    Measured on the folder, not read from the environment: a reused but empty folder is
    fresh, and only a folder that holds an earlier session makes the checks relax."""
    return not state_dir.exists() or not any(state_dir.iterdir())


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("saeflow-runs")


@pytest.fixture(scope="session")
def first_run(state_dir: Path, out_dir: Path, fresh_state: bool) -> CliResult:
    """``saeflow run examples/prompts.jsonl``, training the session's SAE (when fresh:
    ``fresh_state`` is measured before this run writes anything)."""
    settings = [arg for item in SMALL_TRAINING for arg in ("--set", item)]
    return run_cli(
        "run",
        str(EXAMPLES / "prompts.jsonl"),
        "--out",
        str(out_dir),
        "--state-dir",
        str(state_dir),
        "--label",
        "offline",
        *settings,
    )
