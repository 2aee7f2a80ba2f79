"""Fails loudly when a moto upgrade moves a symbol the embedded mode patches."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from infra.local import moto_patches


@pytest.mark.parametrize(("module", "attr"), moto_patches.PATCH_TARGETS, ids=lambda v: str(v))
def test_patch_target_exists(module: str, attr: str) -> None:
    value = moto_patches.resolve_target(module, attr)[2]  # MotoPatchTargetMoved when gone
    # Every target is a function or class we call, wrap or subclass, but the config dict.
    expected = dict if (module, attr) == moto_patches._USER_CONFIG else Callable
    assert isinstance(value, expected), f"{module}.{attr} is now {type(value).__name__}"


def test_the_sagemaker_service_overrides_moto_methods_with_their_signatures() -> None:
    """moto calls the overridden methods with keywords: a renamed parameter would break them."""
    service = moto_patches._sagemaker_task_service_class()
    overridden = [n for n, v in vars(service).items() if inspect.isfunction(v) and n != "__init__"]
    assert set(overridden) >= {"_eval_service_task", "_build_sync_resolver", "_from_error"}
    for name in overridden:
        ours = inspect.signature(getattr(service, name)).parameters
        base = inspect.signature(getattr(service.__mro__[1], name)).parameters
        assert list(ours) == list(base), name


def test_moto_is_the_pinned_version() -> None:
    import moto

    assert moto.__version__ == moto_patches.MOTO_VERSION_TESTED


def test_patched_signatures_are_the_ones_the_patches_expect() -> None:
    def params(target: tuple[str, str]) -> list[str]:
        return list(inspect.signature(moto_patches.resolve_target(*target)[2]).parameters)

    assert params(("moto.awslambda.models", "LambdaFunction.invoke")) == [
        "self", "body", "request_headers", "response_headers",
    ]  # fmt: skip
    assert params(moto_patches._TASK_SERVICE_FACTORY) == ["service_name"]
    assert params(moto_patches._RULE_SEND_TO_TARGETS) == [
        "self", "original_event", "transform_input",
    ]  # fmt: skip
    training = params(moto_patches._CREATE_TRAINING_JOB)
    assert training[:2] == ["self", "training_job_name"]
    assert "checkpoint_config" in training


def test_job_objects_carry_the_attributes_the_runner_sets() -> None:
    from moto.sagemaker.models import FakeTrainingJob, FakeTransformJob

    training_init = inspect.getsource(FakeTrainingJob.__init__)
    for attribute in ("training_job_status", "secondary_status", "model_artifacts"):
        assert f"self.{attribute}" in training_init
    transform_init = inspect.getsource(FakeTransformJob.__init__)
    for attribute in ("transform_job_status", "failure_reason", "transform_end_time"):
        assert f"self.{attribute}" in transform_init


def test_sagemaker_is_still_unsupported_upstream() -> None:
    """If moto gains its own SageMaker integration, ours should be reconsidered."""
    factory = moto_patches.resolve_target(*moto_patches._TASK_SERVICE_FACTORY)[2]
    service = factory(service_name="sagemaker")
    assert type(service).__name__ == "StateTaskServiceUnsupported"


def test_a_moved_symbol_is_named_in_the_error() -> None:
    with pytest.raises(
        moto_patches.MotoPatchTargetMoved, match=r"moto\.events\.models\.Rule\.gone"
    ):
        moto_patches.resolve_target("moto.events.models", "Rule.gone")
    with pytest.raises(moto_patches.MotoPatchTargetMoved, match=r"moto\.nowhere\.thing"):
        moto_patches.resolve_target("moto.nowhere", "thing")


def test_install_and_uninstall_restore_the_originals() -> None:
    originals = [moto_patches.resolve_target(*t)[2] for t, _ in moto_patches._PATCHES]

    class Hooks:
        def invoke_lambda(self, function_name, event):  # pragma: no cover - not called
            raise AssertionError

        start_training_job = start_transform_job = start_execution = invoke_lambda

    moto_patches.install(Hooks())
    try:
        patched = [moto_patches.resolve_target(*t)[2] for t, _ in moto_patches._PATCHES]
        assert all(p is not o for p, o in zip(patched, originals, strict=True))
    finally:
        moto_patches.uninstall()
    restored = [moto_patches.resolve_target(*t)[2] for t, _ in moto_patches._PATCHES]
    assert all(r is o for r, o in zip(restored, originals, strict=True))


# ------------------------------------------------------------------ Distributed Map (issue 10)


def _map(name: str = "M", **fields) -> dict:
    return {
        "Type": "Map",
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
            "StartAt": "In",
            "States": {"In": {"Type": "Pass", "End": True}},
        },
        "End": True,
        **fields,
    }


def test_item_batchers_are_taken_out_by_path_nested_ones_included() -> None:
    import json

    inner = _map(ItemBatcher={"MaxItemsPerBatch": 2})
    outer = _map(ItemBatcher={"MaxItemsPerBatch": 5})
    outer["ItemProcessor"]["States"] = {"Inner": inner}
    outer["ItemProcessor"]["StartAt"] = "Inner"
    text = json.dumps({"StartAt": "Outer", "States": {"Outer": outer}})
    stripped, found = moto_patches.strip_item_batchers(text)
    assert "ItemBatcher" not in stripped
    assert found == {
        ("Outer",): {"MaxItemsPerBatch": 5},
        ("Outer", "Inner"): {"MaxItemsPerBatch": 2},
    }
    plain = json.dumps({"StartAt": "M", "States": {"M": _map()}})
    assert moto_patches.strip_item_batchers(plain) == (plain, {})


def test_what_the_batcher_emulation_does_not_do_is_refused_by_name() -> None:
    import json

    selector = _map(ItemBatcher={"MaxItemsPerBatch": 2}, ItemSelector={"a.$": "$.a"})
    with pytest.raises(ValueError, match="ItemSelector"):
        moto_patches.strip_item_batchers(json.dumps({"StartAt": "M", "States": {"M": selector}}))
    unknown = _map(ItemBatcher={"MaxItemsPerBatch": 2, "Other": 1})
    with pytest.raises(ValueError, match="Other"):
        moto_patches.strip_item_batchers(json.dumps({"StartAt": "M", "States": {"M": unknown}}))


def _extract(path: str, data: dict):
    return data[path.removeprefix("$.")]


def test_batches_follow_the_item_and_byte_limits_and_carry_the_batch_input() -> None:
    items = [{"shard": i} for i in range(5)]  # 12 bytes of JSON each
    by_count = moto_patches.batch_items(
        items, {"MaxItemsPerBatchPath": "$.n", "BatchInput": {"run.$": "$.run"}},
        {"n": 2, "run": "r"}, _extract,
    )  # fmt: skip
    assert [len(b["Items"]) for b in by_count] == [2, 2, 1]
    assert all(b["BatchInput"] == {"run": "r"} for b in by_count)
    by_bytes = moto_patches.batch_items(items, {"MaxInputBytesPerBatch": 30}, {}, _extract)
    assert [len(b["Items"]) for b in by_bytes] == [2, 2, 1] and "BatchInput" not in by_bytes[0]
    with pytest.raises(ValueError, match="MaxItemsPerBatch"):
        moto_patches.batch_items(items, {"BatchInput": {}}, {}, _extract)
    with pytest.raises(ValueError, match="only paths into the state input"):
        moto_patches.batch_items(
            items, {"MaxItemsPerBatch": 1, "BatchInput": {"x.$": "$$.Execution.Id"}}, {}, _extract
        )
