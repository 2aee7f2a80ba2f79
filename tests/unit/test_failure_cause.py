import json

from saeflow.steps.record_failure import explain_failure, render_failure_report


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
    page, summary = render_failure_report(
        "r-0123456789ab",
        {"error": "InvalidPromptSet", "message": "<script>alert(1)</script>", "line": 2},
    )
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "line 2" in page
    assert "InvalidPromptSet" in summary
    assert "http" not in page  # self-contained: no external resources
