import json
import re

from saeflow.steps.record_failure import explain_failure, failure_report_files


def lambda_cause(error_type: str, message: str) -> str:
    return json.dumps(
        {"errorMessage": message, "errorType": error_type, "requestId": "r", "stackTrace": ["x"]}
    )


def test_lambda_error_with_line():
    got = explain_failure(
        "InvalidPromptSet", lambda_cause("InvalidPromptSet", "line 4: invalid JSON")
    )
    assert got == {"error": "InvalidPromptSet", "message": "invalid JSON", "line": 4}


def test_lambda_error_name_from_error_type_when_error_is_generic():
    got = explain_failure("Lambda.Unknown", lambda_cause("SaeNotFound", "no cfg.json at s3://b/x"))
    assert got == {"error": "SaeNotFound", "message": "no cfg.json at s3://b/x"}


def test_unknown_lambda_error_keeps_its_name():
    got = explain_failure("KeyError", lambda_cause("KeyError", "'run'"))
    assert got == {"error": "KeyError", "message": "'run'"}


def test_sagemaker_training_failure_reason():
    cause = json.dumps(
        {
            "TrainingJobName": "sf-0123-train",
            "TrainingJobStatus": "Failed",
            "FailureReason": "AlgorithmError: CUDA out of memory",
        }
    )
    got = explain_failure("States.TaskFailed", cause)
    assert got == {"error": "TrainingFailed", "message": "AlgorithmError: CUDA out of memory"}


def test_sagemaker_failure_carrying_a_saeflow_error_name():
    cause = json.dumps(
        {
            "TrainingJobStatus": "Failed",
            "FailureReason": "AlgorithmError: InvalidHook: hook blocks.40.hook_resid_post names layer 40",
        }
    )
    got = explain_failure("States.TaskFailed", cause)
    assert got == {
        "error": "InvalidHook",
        "message": "hook blocks.40.hook_resid_post names layer 40",
    }


def test_transform_failure_is_extraction_failed():
    cause = json.dumps({"TransformJobName": "sf-x-extract", "TransformJobStatus": "Failed"})
    got = explain_failure("States.TaskFailed", cause)
    assert got["error"] == "ExtractionFailed"
    assert "sf-x-extract" in got["message"]


def test_plain_cause():
    got = explain_failure("States.Timeout", "task timed out")
    assert got == {"error": "States.Timeout", "message": "task timed out"}
    assert explain_failure(None, None) == {"error": "UnknownError", "message": "UnknownError"}


def test_failure_report_escapes_user_text():
    page, summary = failure_report_files(
        "r-0123456789ab",
        {"error": "InvalidPromptSet", "message": "<script>alert(1)</script>", "line": 2},
    )
    assert "<script>alert" not in page and page.count("<script") == 2  # only our two blocks
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "(line 2)" in page and '<section id="error">' in page
    assert "**Error InvalidPromptSet** (line 2)" in summary
    assert "<script>" not in summary and "&lt;script&gt;" in summary
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained
    assert "Content-Security-Policy" in page


def test_failure_report_shows_what_run_json_knew():
    run_json = {
        "run_id": "r-0123456789ab",
        "options": {"model": "smollm2-135m-instruct", "hook": "blocks.3.hook_resid_post"},
    }
    page, summary = failure_report_files(
        "r-0123456789ab", {"error": "TrainingFailed", "message": "out of memory"}, run_json
    )
    assert "blocks.3.hook_resid_post" in page and "blocks.3.hook\\_resid\\_post" in summary
    # A failed run has no results: no empty feature or steering sections pretend otherwise.
    assert '<section id="features">' not in page and "## Top features" not in summary
