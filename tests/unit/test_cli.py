"""The CLI's own logic: labeller default, overrides, exit status, progress text."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from saeflow.cli.labeler_choice import default_labeler
from saeflow.cli.main import main
from saeflow.cli.outcome import outcome_of
from saeflow.cli.progress import (
    ExecutionProgress,
    ProgressPrinter,
    StepTiming,
    format_duration,
    job_detail,
)
from saeflow.cli.run_command import (
    RunRequest,
    flat_overrides,
    local_parameters,
    resolve_overrides,
)
from saeflow.core.errors import InvalidRunOptions


def test_labeller_is_offline_unless_credentials_exist() -> None:
    assert default_labeler({}, bedrock_reachable=False) == "offline"
    assert default_labeler({}, bedrock_reachable=True) == "bedrock"
    # An explicit Anthropic key is the stronger signal.
    assert default_labeler({"ANTHROPIC_API_KEY": "k"}, bedrock_reachable=True) == "anthropic"


def _request(tmp_path: Path, text: str, **kwargs: object) -> RunRequest:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    return RunRequest(file=path, out_dir=tmp_path, state_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_overrides_from_set_label_and_contrast(tmp_path: Path) -> None:
    request = _request(
        tmp_path,
        '{"prompt": "x"}\n',
        settings=("train.k=16", "hook=blocks.3.hook_resid_post"),
        contrast=tmp_path / "other.jsonl",
    )
    overrides = flat_overrides(request, "offline")
    assert overrides == {
        "train.k": 16,
        "hook": "blocks.3.hook_resid_post",
        "label.backend": "offline",
        "contrast": "prompts/other.jsonl",
    }
    assert flat_overrides(request, "anthropic")["label.backend"] == "anthropic"
    explicit = _request(tmp_path, '{"prompt": "x"}\n', label="none")
    assert flat_overrides(explicit, "anthropic")["label.backend"] == "none"


def test_a_files_own_labeller_is_kept(tmp_path: Path) -> None:
    text = '{"saeflow": {"label": {"backend": "bedrock"}}}\n{"prompt": "x"}\n'
    assert "label.backend" not in flat_overrides(_request(tmp_path, text), "offline")


def test_the_labeller_in_effect(tmp_path: Path) -> None:
    plain = _request(tmp_path, '{"prompt": "x"}\n')
    assert resolve_overrides(plain, "bedrock")[1] == "bedrock"
    from_file = '{"saeflow": {"label": {"backend": "anthropic"}}}\n{"prompt": "x"}\n'
    assert resolve_overrides(_request(tmp_path, from_file), "offline")[1] == "anthropic"
    as_dict = _request(tmp_path, from_file, settings=('label={"backend": "none"}',))
    assert resolve_overrides(as_dict, "offline")[1] == "none"
    auto = _request(tmp_path, '{"prompt": "x"}\n', settings=("label.backend=auto",))
    overrides, backend = resolve_overrides(auto, "offline")
    assert overrides["label.backend"] == "auto" and backend == "offline"


def test_the_model_a_local_run_names_joins_the_local_allow_list(tmp_path: Path) -> None:
    # On the user's own machine the user is the deployer: the model they name is allowed.
    plain = _request(tmp_path, '{"prompt": "x"}\n')
    assert local_parameters(plain, flat_overrides(plain, "bedrock")) == {}
    named = _request(tmp_path, '{"prompt": "x"}\n', settings=("label.model_id=claude-x",))
    assert local_parameters(named, flat_overrides(named, "bedrock")) == {
        "LabelModelIds": "claude-x"
    }
    in_file = '{"saeflow": {"label": {"model_id": "anthropic.claude-y"}}}\n{"prompt": "x"}\n'
    request = _request(tmp_path, in_file)
    assert local_parameters(request, flat_overrides(request, "bedrock")) == {
        "LabelModelIds": "anthropic.claude-y"
    }


def test_malformed_set_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidRunOptions):
        flat_overrides(_request(tmp_path, "", settings=("no-equals-sign",)), "offline")


def test_exit_status_follows_error_json(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "error.json").write_text(
        json.dumps({"run_id": "r", "error": "InvalidPromptSet", "message": "bad", "line": 3})
    )
    invalid = outcome_of("r", folder, {"status": "FAILED"})
    assert invalid.exit_code == 2 and "InvalidPromptSet: bad (line 3)" in invalid.message
    (folder / "error.json").write_text(json.dumps({"error": "TrainingFailed", "message": "oom"}))
    assert outcome_of("r", folder, {"status": "FAILED"}).exit_code == 1
    (folder / "index.html").write_text("<html></html>")
    (folder / "error.json").unlink()
    ok = outcome_of("r", folder, {"status": "SUCCEEDED"})
    assert ok.exit_code == 0 and ok.message.endswith("index.html")


def test_missing_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", str(tmp_path / "absent.jsonl"), "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("saeflow: InvalidPromptSet")


def _job(**fields: object) -> SimpleNamespace:
    base = {"status": "InProgress", "stage": "train", "done": 15000, "total": 30000}
    return SimpleNamespace(**{**base, "unit": "tokens", "eta_s": 42, **fields})


def test_progress_text() -> None:
    assert format_duration(5.25) == "5.2s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 60) == "3h01m"
    assert job_detail(_job()) == "train 15k/30k tokens ETA 42.0s"
    assert job_detail(_job(), percent=True) == "train 50% 15k/30k tokens ETA 42.0s"
    assert job_detail(_job(stage="loading model", done=0, total=None, unit="")) == "loading model"


def _run_of_two_steps() -> tuple[ExecutionProgress, ExecutionProgress]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    validate = StepTiming("Validate", t0, t0 + timedelta(seconds=2))
    train = StepTiming("TrainSae", t0 + timedelta(seconds=2))
    running = ExecutionProgress(steps=[validate, train])
    done = ExecutionProgress(
        steps=[validate, StepTiming("TrainSae", train.started, t0 + timedelta(seconds=127))],
        status="SUCCEEDED",
    )
    return running, done


def test_progress_without_a_terminal_is_plain_lines() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream)
    running, done = _run_of_two_steps()
    printer.update(running, [_job()])
    printer.update(done, [])
    printer.summary(done)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "  Validate               done in 2.0s"
    assert lines[1].startswith("> TrainSae") and "train 50% 15k/30k tokens ETA 42.0s" in lines[1]
    assert lines[2] == "  TrainSae               done in 2m05s"
    assert lines[3] == "step timings:"
    table = "\n".join(lines[4:])
    assert re.search(r"Validate +2\.0s", table) and re.search(r"TrainSae +2m05s", table)
    assert re.search(r"total +2m07s", table)
    assert "\x1b" not in stream.getvalue()  # no terminal control codes in logs


def test_progress_on_a_terminal_draws_a_live_bar_and_clears_it() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, terminal=True)
    running, done = _run_of_two_steps()
    printer.update(running, [_job()])
    printer.close()
    drawn = stream.getvalue()
    assert "> TrainSae" in drawn and "━" in drawn and "50%" in drawn
    assert "15k/30k tokens ETA 42.0s" in drawn
    printer.summary(done)
    assert "step timings:" in stream.getvalue()


def test_local_status_without_a_server_lists_persisted_reports(tmp_path: Path) -> None:
    from saeflow.cli.serve_command import status

    (tmp_path / "s3" / "saeflow-local" / "reports" / "p-0123456789ab").mkdir(parents=True)
    (tmp_path / "s3" / "saeflow-local" / "reports" / "bad-0123456789ab").mkdir(parents=True)
    (tmp_path / "s3" / "saeflow-local" / "reports" / "bad-0123456789ab" / "error.json").write_text(
        "{}"
    )
    out = io.StringIO()
    assert status(tmp_path, out) == 0
    lines = out.getvalue().splitlines()
    assert any("p-0123456789ab" in line and "SUCCEEDED" in line for line in lines)
    assert any("bad-0123456789ab" in line and "FAILED" in line for line in lines)


def test_a_files_own_labeller_is_read_without_reading_the_whole_file(tmp_path: Path) -> None:
    from saeflow.cli.run_command import RunRequest, resolve_overrides

    big = tmp_path / "big.jsonl"
    lines = ['{"saeflow": {"label": {"backend": "none"}}}']
    lines += [json.dumps({"prompt": f"p {i}"}) for i in range(20_000)]  # over MaxPrompts
    big.write_text("\n".join(lines) + "\n")
    request = RunRequest(file=big, out_dir=tmp_path, state_dir=tmp_path)
    assert resolve_overrides(request, "offline") == ({}, "none")
    late = tmp_path / "late.json"  # a .json document may name its options last
    late.write_text(json.dumps({"prompts": ["a"], "saeflow": {"label": {"backend": "none"}}}))
    assert resolve_overrides(RunRequest(late, tmp_path, tmp_path), "offline")[1] == "none"
