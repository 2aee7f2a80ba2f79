"""``saeflow run FILE``: one run of the real workflow on this machine (the embedded mode)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeflow.adapters.sfn import start_execution
from saeflow.cli.bedrock_access import BedrockAccess, resolve_bedrock_access
from saeflow.cli.labeler_choice import default_labeler
from saeflow.cli.outcome import RunOutcome, download_report, outcome_of
from saeflow.cli.progress import ProgressPrinter, watch_execution
from saeflow.core import layout
from saeflow.core.errors import InvalidPromptSet, InvalidRunOptions, SaeflowError
from saeflow.core.options import merge_option_layers, parse_override_value, parse_set_overrides
from saeflow.core.promptset import (
    PromptLimits,
    PromptReader,
    parse_options_document,
    prompt_format,
)
from saeflow.steps.start_run import run_input_for

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    file: Path
    out_dir: Path
    state_dir: Path
    label: str | None = None
    contrast: Path | None = None
    settings: tuple[str, ...] = ()
    verbose: bool = False


def flat_overrides(request: RunRequest, default_label: str) -> dict[str, Any]:
    """The execution input's ``overrides`` ({dotted.key: value}) for this request."""
    return resolve_overrides(request, default_label)[0]


def resolve_overrides(request: RunRequest, default_label: str) -> tuple[dict[str, Any], str]:
    """The execution input's ``overrides`` ({dotted.key: value}) and the labeller in effect.

    ``--set`` items are checked here (a bad one is invalid input before anything starts);
    ``label.backend`` becomes ``default_label`` unless the request or the file's own
    options choose a labeller (the file is read at most once). ``auto`` in effect means
    ``default_label``: the local stack's label function resolves it so.
    """
    parse_set_overrides(list(request.settings))  # raises InvalidRunOptions
    overrides: dict[str, Any] = {}
    for item in request.settings:
        key, _, text = item.partition("=")
        overrides[key.strip()] = parse_override_value(text)
    if request.label is not None:
        overrides["label.backend"] = request.label
    backend = _label_in(overrides)
    if backend is None:
        backend = _file_label_backend(request.file)
        if backend in (None, "auto"):
            overrides["label.backend"] = backend = default_label
    if request.contrast is not None:
        overrides["contrast"] = f"{layout.PROMPTS_PREFIX}{request.contrast.name}"
    return overrides, default_label if backend == "auto" else backend


def _label_in(overrides: Mapping[str, Any], name: str = "backend") -> str | None:
    """The label option ``name`` set by ``label.<name>=...`` or ``label={"<name>": ...}``."""
    label = overrides.get("label")
    if f"label.{name}" in overrides:
        value = overrides[f"label.{name}"]
        return None if value is None else str(value)
    if isinstance(label, dict) and label.get(name) is not None:
        return str(label[name])
    return None


def _file_label_backend(path: Path, name: str = "backend") -> str | None:
    """The label option ``name`` the file (options line or sidecar) sets, if it parses."""
    try:
        file_options = _file_options(path)
        sidecar_path = _sidecar(path)
        sidecar = (
            parse_options_document(sidecar_path.read_bytes(), sidecar_path.name)
            if sidecar_path.exists()
            else None
        )
        merged = merge_option_layers(sidecar, file_options)
    except (SaeflowError, OSError):
        return None  # the workflow's validate step reports what is wrong
    label = merged.get("label")
    return str(label[name]) if isinstance(label, dict) and label.get(name) is not None else None


def local_parameters(request: RunRequest, overrides: Mapping[str, Any]) -> dict[str, str]:
    """Template parameters of the local stack for this run.

    On this machine the user is the deployer and Bedrock runs on their own account: the
    labeller model the run names joins the deployment's allow-list (LabelModelIds).
    """
    model = _label_in(overrides, "model_id") or _file_label_backend(request.file, "model_id")
    return {"LabelModelIds": model} if model else {}


def _file_options(path: Path) -> dict[str, Any] | None:
    """The file's own options, read no further than needed (a .jsonl's first line; a .json
    document whole, as its options may follow the prompts), whatever the file's size."""
    limits = PromptLimits(max_prompts=2**62, max_file_bytes=2**62)
    fmt = prompt_format(path.name)
    with path.open("rb") as handle:
        reader = PromptReader(iter(lambda: handle.read(1 << 20), b""), fmt, limits)
        prompts = iter(reader)
        if fmt == "json":
            for _ in prompts:
                pass
        else:
            next(prompts, None)
        return reader.options


def _sidecar(path: Path) -> Path:
    return path.with_name(Path(layout.sidecar_key(path.name)).name)


def check_files(request: RunRequest) -> None:
    """Files the CLI itself must read: missing ones are invalid input (exit 2)."""
    for path in (request.file, request.contrast):
        if path is not None and not path.is_file():
            raise InvalidPromptSet(f"{path}: no such file")


def check_labeller_credentials(backend: str, bedrock: BedrockAccess | None) -> None:
    """A labeller without credentials would fail only after training: say so now."""
    if backend == "bedrock" and bedrock is None:
        raise InvalidRunOptions(
            "label.backend=bedrock needs AWS credentials (environment, profile or SSO) or "
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME; none were found (--label offline needs none)"
        )
    if backend == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise InvalidRunOptions(
            "label.backend=anthropic needs ANTHROPIC_API_KEY (--label offline needs none)"
        )


def upload_inputs(
    s3: Any, bucket: str, request: RunRequest, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The prompt set (its sidecar, the contrast set) into the bucket; the execution input."""
    key = f"{layout.PROMPTS_PREFIX}{request.file.name}"
    uploaded = s3.put_object(Bucket=bucket, Key=key, Body=request.file.read_bytes())
    sidecar = _sidecar(request.file)
    if sidecar.exists():
        s3.put_object(Bucket=bucket, Key=layout.sidecar_key(key), Body=sidecar.read_bytes())
    if request.contrast is not None:
        s3.put_object(Bucket=bucket, Key=overrides["contrast"], Body=request.contrast.read_bytes())
    run_input = run_input_for(bucket, key, uploaded.get("VersionId"), uploaded.get("ETag"))
    run_input["overrides"] = overrides
    return run_input


def run_locally(request: RunRequest) -> RunOutcome:
    """Start the local stack, run the workflow on ``request.file``, copy the report out."""
    check_files(request)
    # Before the local stack replaces the credential variables with its fake ones.
    bedrock = resolve_bedrock_access(os.environ)
    default_label = default_labeler(os.environ, bedrock_reachable=bedrock is not None)
    overrides, backend = resolve_overrides(request, default_label)
    check_labeller_credentials(backend, bedrock)

    # Imported here: the local stack pulls in moto, which `saeflow submit` does not need.
    from infra.local.stack import LocalStack, StackSettings, local_definition

    settings = StackSettings(
        state_dir=request.state_dir,
        log_level="INFO" if request.verbose else "WARNING",
        echo_logs=request.verbose,
        # Runs started another way (a sidecar asking for "auto") mean the same labeller.
        function_environment={"SAEFLOW_AUTO_LABELER": default_label},
        # The user's credentials reach the functions only when this run labels on Bedrock.
        function_environment_source=(
            bedrock.environment if bedrock is not None and backend == "bedrock" else None
        ),
    )
    definition = local_definition(parameter_overrides=local_parameters(request, overrides))
    with LocalStack(definition, settings) as stack:
        bucket = stack.definition.bucket_name
        s3 = stack.client("s3")
        run_input = upload_inputs(s3, bucket, request, overrides)
        sfn = stack.client("stepfunctions")
        started = start_execution(sfn, stack.definition.state_machine_arn, run_input)
        run_id = run_input["run_id"]
        printer = ProgressPrinter()
        printer.note(f"run {run_id} (state in {request.state_dir})")
        if backend == "bedrock" and bedrock is not None:
            printer.note(f"labeller: {bedrock.describe()}; --label offline to skip")
        assert stack.jobs is not None
        execution, _timings = watch_execution(
            sfn,
            started["execution_arn"],
            stack.definition.definition,
            jobs=stack.jobs.progress,
            printer=printer,
        )
        folder = download_report(s3, bucket, run_id, request.out_dir)
    return outcome_of(run_id, folder, execution)
