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
