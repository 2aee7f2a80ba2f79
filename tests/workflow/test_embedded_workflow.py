"""The real ASL end to end in the embedded mode, with the real model (small budgets).

``saeflow run`` as a user runs it (a subprocess): a good file gives a report with
highlighted tokens and labelled features; a second run reuses the SAE; an invalid file
exits 2 with error.json; a training job that fails puts its reason in error.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

# A developer may reuse an earlier session's state (conftest): its SAE is then cached and its
# label registry may already hold LLM labels, which later runs reuse. ``fresh_state`` says
# which case this session is; labels made by a run itself are offline ones either way.


def _labels_made_here_are_heuristic(features: list[dict]) -> bool:
    return all("heuristic" in f["label_source"] for f in features if not f["label_reused"])


def _report_folder(result: Any) -> Path:
    index = Path(result.stdout.strip().splitlines()[-1])
    assert index.name == "index.html", result.stdout
    return index.parent


def test_good_file_gives_a_report(first_run: Any, fresh_state: bool) -> None:
    assert first_run.exit_code == 0, first_run.stderr
    folder = _report_folder(first_run)
    assert {p.name for p in folder.iterdir()} >= {"index.html", "report.json", "summary.md"}
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "succeeded"
    assert report["sae"]["metrics"]["explained_variance"] is not None
    # Highlighted tokens: every prompt shown token by token with its top features.
    prompts = report["prompts"]
    assert len(prompts) == 42
    assert any(token["features"] for token in prompts[0]["tokens"])
    # Labelled features, and the labeller says it is a heuristic.
    labelled = [f for f in report["features"] if f.get("label")]
    assert labelled, report["features"][:3]
    assert _labels_made_here_are_heuristic(labelled)
    # A fresh session trains a new SAE: nothing can be reused for it.
    assert not (fresh_state and any(f["label_reused"] for f in labelled))
    html = (folder / "index.html").read_text()
    assert "<script src=" not in html and prompts[0]["text"].split()[0] in html
    # Progress: the steps and their timings, training included when the SAE is new.
    assert "step timings:" in first_run.stderr
    assert report["sae"]["mode"] == ("train" if fresh_state else "cached")
    assert ("TrainSae" in first_run.stderr) == (report["sae"]["mode"] == "train")
    assert "Traceback" not in first_run.stderr


def test_second_run_reuses_the_sae(
    first_run: Any,
    cli: Any,
    examples: Path,
    small_training: Any,
    state_dir: Path,
    out_dir: Path,
    fresh_state: bool,
) -> None:
    assert first_run.exit_code == 0, first_run.stderr
    settings = [arg for item in small_training for arg in ("--set", item)]
    second = cli(
        "run",
        str(examples / "prompts.jsonl"),
        "--contrast",
        str(examples / "contrast.jsonl"),
        "--out",
        str(out_dir),
        "--state-dir",
        str(state_dir),
        *settings,
        # What `make demo` adds: the demo's first report has no empty section.
        "--set",
        "steer=auto",
    )
    assert second.exit_code == 0, second.stderr
    assert "TrainSae" not in second.stderr  # no training job this time
    report = json.loads((_report_folder(second) / "report.json").read_text())
    first = json.loads((_report_folder(first_run) / "report.json").read_text())
    assert report["sae"]["sae_id"] == first["sae"]["sae_id"]
    _assert_the_demo_report_has_every_section(report)
    # No labeller named: offline (no credentials in the test environment), and the labels
    # stored by the first run are reused from the registry.
    labelled = [f for f in report["features"] if f.get("label")]
    assert labelled and _labels_made_here_are_heuristic(labelled)
    if fresh_state:  # the registry holds only the first run's offline labels
        assert all("heuristic" in f["label_source"] for f in labelled)
        assert any(f["label_reused"] for f in labelled)


def _assert_the_demo_report_has_every_section(report: dict) -> None:
    """Contrast with statistics, automatic steering, specific features, first-token
    features set apart, scored labels, the SAE's quality on the prompts."""
    contrast = report["contrast"]
    assert contrast["test"].startswith("Fisher") and contrast["n_tested"] > 0
    rows = contrast["more_in_main"] + contrast["more_in_contrast"]
    assert rows and all(r["q_value"] is not None and r["effect_size"] for r in rows)
    assert report["steering"], "steer=auto steered nothing"
    ranked = report["ranking"]["views"]["specific"]
    assert report["ranking"]["method"] == "specificity" and ranked
    by_id = {f["id"]: f for f in report["features"]}
    assert not any(by_id[f]["first_token"] for f in ranked)
    assert {s["feature"] for s in report["steering"]} <= set(ranked[:3])
    assert report["first_token_features"]["note"]
    labeling = report["labeling"]
    assert labeling["n_scored"] > 0 and labeling["verdict"]
    # Offline labels cost nothing: every feature of the default view has one.
    assert all(by_id[f].get("label") for f in ranked), [by_id[f]["label"] for f in ranked]
    on_prompts = report["sae"]["on_prompts"]
    assert on_prompts["explained_variance"] is not None
    assert on_prompts["ce_loss_recovered"] is not None  # 62 prompts: measured by default
    assert all(p["top_features"] is not None for p in report["prompts"])


def test_invalid_file_exits_2_with_error_json(cli: Any, tmp_path: Path, state_dir: Path) -> None:
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n')
    result = cli("run", str(bad), "--out", str(tmp_path / "out"), "--state-dir", str(state_dir))
    assert result.exit_code == 2
    message = [line for line in result.stderr.splitlines() if line.startswith("saeflow:")]
    assert len(message) == 1 and "InvalidPromptSet" in message[0] and "line 2" in message[0]
    assert "Traceback" not in result.stderr
    (error_file,) = (tmp_path / "out").glob("*/error.json")
    error = json.loads(error_file.read_text())
    assert error["error"] == "InvalidPromptSet"
    assert error["line"] == 2
    assert error["run_id"] == error_file.parent.name


@pytest.mark.parametrize(
    ("label", "needs"), [("bedrock", "needs AWS credentials"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_a_labeller_without_credentials_is_invalid_input_at_once(
    cli: Any, examples: Path, tmp_path: Path, label: str, needs: str
) -> None:
    result = cli(
        "run", str(examples / "contrast.jsonl"), "--label", label, "--state-dir", str(tmp_path)
    )
    assert result.exit_code == 2
    assert needs in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("jobs/*")), "no job may start"


def test_missing_file_and_bad_set_exit_2_without_a_run(
    cli: Any, examples: Path, tmp_path: Path
) -> None:
    missing = cli("run", str(tmp_path / "nope.jsonl"), "--state-dir", str(tmp_path))
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    bad_set = cli(
        "run", str(examples / "prompts.jsonl"), "--set", "train.k", "--state-dir", str(tmp_path)
    )
    assert bad_set.exit_code == 2 and "InvalidRunOptions" in bad_set.stderr
    assert "Traceback" not in missing.stderr + bad_set.stderr


def test_settings_the_worker_would_refuse_are_invalid_input_before_any_job(
    cli: Any, examples: Path, tmp_path: Path
) -> None:
    # One train-settings type on both sides: a budget below one batch is refused at
    # validation (it used to pass and fail only in the training job).
    state = tmp_path / "state"
    result = cli(
        "run",
        str(examples / "contrast.jsonl"),
        "--out",
        str(tmp_path / "out"),
        "--state-dir",
        str(state),
        "--set",
        "train.training_tokens=2000",
        "--set",
        "train.batch_size_tokens=4096",
    )
    assert result.exit_code == 2, result.stderr
    assert "batch_size_tokens" in result.stderr and "TrainSae" not in result.stderr
    (error_file,) = (tmp_path / "out").glob("*/error.json")
    assert json.loads(error_file.read_text())["error"] == "InvalidRunOptions"
    assert not list(state.glob("jobs/*")), "no job may start"


def test_failing_training_job_puts_its_reason_in_error_json(
    cli: Any, examples: Path, tmp_path: Path, state_dir: Path
) -> None:
    # Valid as a run option, found wrong only by the worker: a model id that does not exist.
    result = cli(
        "run",
        str(examples / "contrast.jsonl"),
        "--out",
        str(tmp_path / "out"),
        "--state-dir",
        str(state_dir),
        "--set",
        "model=saeflow-test/no-such-model",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.exit_code == 1, result.stderr
    assert "TrainSae" in result.stderr
    (error_file,) = (tmp_path / "out").glob("*/error.json")
    error = json.loads(error_file.read_text())
    assert error["error"] == "TrainingFailed" and "saeflow-test/no-such-model" in error["message"]
    assert "Traceback" not in result.stderr


def _fake_bedrock_module() -> Any:
    """tests/functional's fake Bedrock runtime (real HTTP on 127.0.0.1)."""
    import importlib.util

    path = Path(__file__).parents[1] / "functional" / "fakes" / "bedrock_server.py"
    spec = importlib.util.spec_from_file_location("saeflow_test_fake_bedrock", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bedrock_labeller_with_the_users_credentials(
    first_run: Any,
    cli: Any,
    examples: Path,
    small_training: Any,
    state_dir: Path,
    tmp_path: Path,
    fresh_state: bool,
) -> None:
    """No --label: the user's AWS credentials make Bedrock the default, and Bedrock sees
    those credentials and that Region, not the local stack's fake ones."""
    assert first_run.exit_code == 0, first_run.stderr
    fake = _fake_bedrock_module()
    settings = [arg for item in small_training for arg in ("--set", item)]
    with fake.running_fake_bedrock(fake.claude_like_responder) as bedrock:
        result = cli(
            "run",
            str(examples / "contrast.jsonl"),
            "--out",
            str(tmp_path / "out"),
            "--state-dir",
            str(state_dir),
            *settings,
            env={
                "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
                "AWS_ACCESS_KEY_ID": "AKIAUSERSOWNKEY",
                "AWS_SECRET_ACCESS_KEY": "users-own-secret",
                "AWS_REGION": "eu-west-3",
            },
        )
    assert result.exit_code == 0, result.stderr
    assert "labeller: Bedrock in eu-west-3" in result.stderr
    if not fresh_state:
        pytest.skip("the reused label registry may already hold LLM labels for these features")
    assert bedrock.requests, "the labeller never reached the Bedrock endpoint"
    for request in bedrock.requests:
        assert "Credential=AKIAUSERSOWNKEY/" in request["authorization"]
        assert "/eu-west-3/bedrock/aws4_request" in request["authorization"]
    report = json.loads((_report_folder(result) / "report.json").read_text())
    labelled = [f for f in report["features"] if f.get("label")]
    assert labelled and not any("heuristic" in f["label_source"] for f in labelled)
    assert report["cost"]["llm_requests"] >= len(labelled)
