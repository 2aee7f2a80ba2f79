import json

from saeflow.core import layout
from saeflow.steps import record_failure

RUN_ID = "demo-0123456789ab"


def lambda_failure(error_type: str, message: str) -> dict:
    cause = {"errorMessage": message, "errorType": error_type, "stackTrace": [], "requestId": "1"}
    return {"Error": error_type, "Cause": json.dumps(cause)}


def test_invalid_input_before_run_json_exists(store):
    event = {
        "run_id": RUN_ID,
        "key": "prompts/demo.jsonl",
        "failure": lambda_failure("InvalidPromptSet", "line 3: invalid JSON: Expecting value"),
    }
    result = record_failure.run(event, store=store)
    assert result == {"error": "InvalidPromptSet", "message": "invalid JSON: Expecting value"}
    assert store.get_json(layout.error_key(RUN_ID)) == {
        "run_id": RUN_ID,
        "error": "InvalidPromptSet",
        "message": "invalid JSON: Expecting value",
        "line": 3,
    }
    page = store.get_bytes(layout.report_html_key(RUN_ID)).decode()
    assert "InvalidPromptSet" in page
    assert "line 3" in page
    assert "InvalidPromptSet" in store.get_bytes(layout.summary_key(RUN_ID)).decode()
    run_json = store.get_json(layout.run_json_key(RUN_ID))
    assert run_json["status"] == "failed"
    assert run_json["error"]["error"] == "InvalidPromptSet"


def test_training_failure_updates_existing_run_json(store):
    store.put_json(
        layout.run_json_key(RUN_ID), {"run_id": RUN_ID, "status": "running", "n_prompts": 4}
    )
    cause = {
        "TrainingJobName": "sf-0123456789ab-train",
        "TrainingJobStatus": "Failed",
        "FailureReason": "AlgorithmError: out of memory",
    }
    event = {
        "run_id": RUN_ID,
        "run": {"run_id": RUN_ID},
        "failure": {"Error": "States.TaskFailed", "Cause": json.dumps(cause)},
    }
    result = record_failure.run(event, store=store)
    assert result == {"error": "TrainingFailed", "message": "AlgorithmError: out of memory"}
    run_json = store.get_json(layout.run_json_key(RUN_ID))
    assert run_json["status"] == "failed"
    assert run_json["n_prompts"] == 4
    assert "failed_at" in run_json
    error = store.get_json(layout.error_key(RUN_ID))
    assert error["message"] == "AlgorithmError: out of memory"
    assert "line" not in error


def test_user_text_is_escaped_in_the_report(store):
    event = {
        "run": {"run_id": RUN_ID},
        "failure": lambda_failure("InvalidRunOptions", "unknown option <b>x</b>"),
    }
    record_failure.run(event, store=store)
    page = store.get_bytes(layout.report_html_key(RUN_ID)).decode()
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
