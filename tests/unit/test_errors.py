import pytest

from saeflow.core import errors


def test_name_is_class_name_and_dict_carries_line():
    err = errors.InvalidPromptSet("bad JSON", line=3)
    assert err.name == "InvalidPromptSet"
    assert err.to_dict() == {"error": "InvalidPromptSet", "message": "bad JSON", "line": 3}
    assert str(err) == "line 3: bad JSON"


def test_dict_without_line():
    err = errors.SaeNotFound("no cfg.json")
    assert err.to_dict() == {"error": "SaeNotFound", "message": "no cfg.json"}
    assert str(err) == "no cfg.json"


def test_too_large_is_an_invalid_prompt_set():
    assert issubclass(errors.PromptSetTooLarge, errors.InvalidPromptSet)
    with pytest.raises(errors.InvalidPromptSet):
        raise errors.PromptSetTooLarge("too many")


@pytest.mark.parametrize(
    ("name", "invalid"),
    [
        ("InvalidPromptSet", True),
        ("PromptSetTooLarge", True),
        ("UnsupportedPromptFile", True),
        ("InvalidRunOptions", True),
        ("InvalidHook", True),
        ("PromptTooLong", True),
        ("SaeNotFound", True),
        ("QualityGateFailed", False),
        ("TrainingFailed", False),
        ("LabelerThrottled", False),
        ("States.Timeout", False),
    ],
)
def test_is_invalid_input(name, invalid):
    assert errors.is_invalid_input(name) is invalid


def test_every_named_error_is_registered():
    for name, cls in errors.ALL_ERRORS.items():
        assert cls.__name__ == name
        assert issubclass(cls, errors.SaeflowError)


def test_object_not_found_reads_like_a_message():
    err = errors.ObjectNotFound("s3://b/k does not exist")
    assert isinstance(err, KeyError)
    assert str(err) == "s3://b/k does not exist"
