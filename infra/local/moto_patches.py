"""Every change the embedded mode makes to moto's internals, in this one module.

moto (pinned ==5.2.5) emulates S3, DynamoDB, IAM, Lambda, SageMaker, EventBridge and Step
Functions (with real ASL execution), but four things the workflow needs are missing:

1. Lambda invocation needs Docker: ``LambdaFunction.invoke`` is replaced by a call to the
   in-process dispatcher (``functions/<name>/app.py``).
2. Step Functions has no SageMaker service integration: ``state_task_service_for`` (the
   factory the ASL parser calls per Task) answers ``sagemaker`` with ``SageMakerTaskService``
   below (``createTrainingJob[.sync]``, ``createModel``, ``createTransformJob[.sync]``,
   ``deleteModel``), which polls ``Describe*Job`` like Step Functions does.
3. SageMaker jobs are born "Completed": ``create_training_job`` / ``create_transform_job``
   are wrapped so the job starts "InProgress" and a local runner (the worker as a process)
   finishes it.
4. EventBridge rules deliver only to logs/SQS/buses: ``Rule.send_to_targets`` is wrapped to
   deliver to Lambda and Step Functions targets too (S3 -> EventBridge already works in moto).
5. Distributed Map: moto runs it (ItemReader ``s3:getObject`` with ``InputType: JSON``
   included) but its grammar has no ``ItemBatcher`` and a failed child execution only counts
   as failed while the Map succeeds. ``AmazonStateLanguageParser.parse`` is wrapped to take
   each Map's ``ItemBatcher`` out of the definition before moto's grammar sees it and attach
   it to the parsed Map; ``DistributedIterationComponent._map_run`` is wrapped to batch the
   items as Step Functions does (``{"Items": [...], "BatchInput": {...}}``, by
   ``MaxItemsPerBatch[Path]`` / ``MaxInputBytesPerBatch[Path]``) and to fail the Map with
   ``States.ExceedToleratedFailureThreshold`` when more children failed than tolerated.

Each target is looked up through ``resolve_target`` which raises ``MotoPatchTargetMoved``
naming the moto symbol when an upgrade moved it; ``tests/unit/test_moto_patches.py`` checks
every entry of ``PATCH_TARGETS``.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Final, Protocol

from botocore.exceptions import ClientError

LOG = logging.getLogger(__name__)

MOTO_VERSION_TESTED: Final = "5.2.5"

_LAMBDA_FUNCTION = ("moto.awslambda.models", "LambdaFunction.invoke")
_TASK_SERVICE_FACTORY = (
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_factory",
    "state_task_service_for",
)
_CREATE_TRAINING_JOB = ("moto.sagemaker.models", "SageMakerModelBackend.create_training_job")
_CREATE_TRANSFORM_JOB = ("moto.sagemaker.models", "SageMakerModelBackend.create_transform_job")
_RULE_SEND_TO_TARGETS = ("moto.events.models", "Rule.send_to_targets")
_DESCRIBE_MODEL = ("moto.sagemaker.models", "SageMakerModelBackend.describe_model")
_ASL_PARSE = ("moto.stepfunctions.parser.asl.parse.asl_parser", "AmazonStateLanguageParser.parse")
_MAP_ITERATION = "moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration"
_DISTRIBUTED_MAP_RUN = (
    f"{_MAP_ITERATION}.distributed_iteration_component",
    "DistributedIterationComponent._map_run",
)
# Not patched, but read or set: the server-mode config switch and what our service class uses.
_USER_CONFIG = ("moto.core.config", "default_user_config")
_ASL = "moto.stepfunctions.parser.asl"
_ERROR_NAME = f"{_ASL}.component.common.error_name"
_TASK_SERVICE = f"{_ASL}.component.state.exec.state_task.service"
_TASK_SERVICE_SYMBOLS: Final[dict[str, tuple[str, str]]] = {
    "base": (f"{_TASK_SERVICE}.state_task_service_callback", "StateTaskServiceCallback"),
    "ResourceCondition": (f"{_TASK_SERVICE}.resource", "ResourceCondition"),
    "HistoryEventType": ("moto.stepfunctions.parser.api", "HistoryEventType"),
    "TaskFailedEventDetails": ("moto.stepfunctions.parser.api", "TaskFailedEventDetails"),
    "CustomErrorName": (f"{_ERROR_NAME}.custom_error_name", "CustomErrorName"),
    "FailureEvent": (f"{_ERROR_NAME}.failure_event", "FailureEvent"),
    "FailureEventException": (f"{_ERROR_NAME}.failure_event", "FailureEventException"),
    "StatesErrorName": (f"{_ERROR_NAME}.states_error_name", "StatesErrorName"),
    "StatesErrorNameType": (f"{_ERROR_NAME}.states_error_name_type", "StatesErrorNameType"),
    "EventDetails": (f"{_ASL}.eval.event.event_detail", "EventDetails"),
    "boto_client_for": (f"{_ASL}.utils.boto_client", "boto_client_for"),
    "to_json_str": (f"{_ASL}.utils.encoding", "to_json_str"),
}
# What the Distributed Map patches read: the parsed Map state, JSONPath, the map-run failure.
_MAP_SYMBOLS: Final[dict[str, tuple[str, str]]] = {
    "StateMap": (f"{_ASL}.component.state.exec.state_map.state_map", "StateMap"),
    "extract_json": (f"{_ASL}.utils.json_path", "extract_json"),
    "MapRunFailedEventDetails": ("moto.stepfunctions.parser.api", "MapRunFailedEventDetails"),
}

PATCH_TARGETS: Final[tuple[tuple[str, str], ...]] = (
    _LAMBDA_FUNCTION,
    _TASK_SERVICE_FACTORY,
    _CREATE_TRAINING_JOB,
    _CREATE_TRANSFORM_JOB,
    _RULE_SEND_TO_TARGETS,
    _USER_CONFIG,
    _DESCRIBE_MODEL,
    _ASL_PARSE,
    _DISTRIBUTED_MAP_RUN,
    *_TASK_SERVICE_SYMBOLS.values(),
    *_MAP_SYMBOLS.values(),
)


class MotoPatchTargetMoved(RuntimeError):
    """A moto symbol the embedded mode patches is gone: moto changed; update moto_patches."""


def resolve_target(module_name: str, attr_path: str) -> tuple[Any, str, Any]:
    """(owner, attribute name, current value) for ``module_name:attr_path``, or a clear error."""
    symbol = f"{module_name}.{attr_path}"
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise MotoPatchTargetMoved(_moved_message(symbol)) from exc
    parts = attr_path.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            raise MotoPatchTargetMoved(_moved_message(symbol))
    if not hasattr(owner, parts[-1]):
        raise MotoPatchTargetMoved(_moved_message(symbol))
    return owner, parts[-1], getattr(owner, parts[-1])


def _moved_message(symbol: str) -> str:
    try:
        import moto

        installed = moto.__version__
    except ImportError:  # pragma: no cover - moto is a dependency of the local extra
        installed = "not installed"
    return (
        f"moto symbol {symbol} not found (moto {installed}; saeflow's embedded mode was "
        f"written against moto {MOTO_VERSION_TESTED}): update infra/local/moto_patches.py"
    )


# ---------------------------------------------------------------- what the patches call into


@dataclass(frozen=True)
class LambdaOutcome:
    """What an in-process Lambda invocation returned: JSON payload and error type, if any."""

    payload: bytes
    error_type: str | None = None


class LocalHooks(Protocol):
    """The local stack's side of the patches (see ``infra.local.stack``)."""

    def invoke_lambda(self, function_name: str, event: Any) -> LambdaOutcome: ...

    def start_training_job(self, job: Any) -> None: ...

    def start_transform_job(self, job: Any, model: dict[str, Any] | None) -> None: ...

    def start_execution(self, state_machine_arn: str, event: dict[str, Any]) -> None: ...


_hooks: LocalHooks | None = None
_install_lock = threading.Lock()
_installed: dict[tuple[str, str], Any] = {}


def _require_hooks() -> LocalHooks:
    if _hooks is None:
        raise RuntimeError("moto patches are installed but no local stack is running")
    return _hooks


# ---------------------------------------------------------------- 1. Lambda without Docker


def _invoke_in_process(
    self: Any, body: Any, request_headers: Any, response_headers: dict[str, str]
) -> bytes:
    event = json.loads(body) if body else {}
    invocation_type = request_headers.get("x-amz-invocation-type", "RequestResponse")
    if invocation_type == "Event":
        threading.Thread(
            target=_require_hooks().invoke_lambda,
            args=(self.function_name, event),
            name=f"lambda-{self.function_name}",
            daemon=True,
        ).start()
        return b""
    outcome = _require_hooks().invoke_lambda(self.function_name, event)
    if outcome.error_type is not None:
        # What Lambda answers for an exception escaping the handler; Step Functions takes the
        # error name from the payload's errorType.
        response_headers["x-amz-function-error"] = "Unhandled"
    return outcome.payload


# ---------------------------------------------------------------- 2. Step Functions -> SageMaker


# The parameters Step Functions passes through for each optimised SageMaker action.
_SUPPORTED_PARAMETERS: Final[dict[str, set[str]]] = {
    "createtrainingjob": {
        "AlgorithmSpecification",
        "CheckpointConfig",
        "DebugHookConfig",
        "DebugRuleConfigurations",
        "EnableInterContainerTrafficEncryption",
        "EnableManagedSpotTraining",
        "EnableNetworkIsolation",
        "Environment",
        "ExperimentConfig",
        "HyperParameters",
        "InputDataConfig",
        "OutputDataConfig",
        "ProfilerConfig",
        "ProfilerRuleConfigurations",
        "ResourceConfig",
        "RetryStrategy",
        "RoleArn",
        "StoppingCondition",
        "Tags",
        "TensorBoardOutputConfig",
        "TrainingJobName",
        "VpcConfig",
    },
    "createmodel": {
        "Containers",
        "EnableNetworkIsolation",
        "ExecutionRoleArn",
        "InferenceExecutionConfig",
        "ModelName",
        "PrimaryContainer",
        "Tags",
        "VpcConfig",
    },
    "createtransformjob": {
        "BatchDataCaptureConfig",
        "BatchStrategy",
        "DataCaptureConfig",
        "DataProcessing",
        "Environment",
        "ExperimentConfig",
        "MaxConcurrentTransforms",
        "MaxPayloadInMB",
        "ModelClientConfig",
        "ModelName",
        "Tags",
        "TransformInput",
        "TransformJobName",
        "TransformOutput",
        "TransformResources",
    },
    "deletemodel": {"ModelName"},
}
# .sync: which Describe call to poll, the name parameter, the status field.
_DESCRIBE_FOR: Final[dict[str, tuple[str, str, str]]] = {
    "createtrainingjob": ("describe_training_job", "TrainingJobName", "TrainingJobStatus"),
    "createtransformjob": ("describe_transform_job", "TransformJobName", "TransformJobStatus"),
}
_TERMINAL_JOB_STATUSES: Final = {"Completed", "Failed", "Stopped"}


def _moto_symbols() -> SimpleNamespace:
    """moto's Step Functions internals the service uses, each checked like a patch target."""
    return SimpleNamespace(
        **{name: resolve_target(*target)[2] for name, target in _TASK_SERVICE_SYMBOLS.items()}
    )


def _task_failed(m: SimpleNamespace, service: Any, env: Any, name: Any, cause: str) -> Any:
    """moto's FailureEvent for a failed Task, as Step Functions records it."""
    details = m.TaskFailedEventDetails(
        error=name.error_name,
        cause=cause,
        resource=service._get_sfn_resource(),
        resourceType=service._get_sfn_resource_type(),
    )
    return m.FailureEvent(
        env=env,
        error_name=name,
        event_type=m.HistoryEventType.TaskFailed,
        event_details=m.EventDetails(taskFailedEventDetails=details),
    )


def _sagemaker_client(m: SimpleNamespace, runtime_part: Any, credentials: Any) -> Any:
    return m.boto_client_for(
        region=runtime_part.region, service="sagemaker", state_credentials=credentials
    )


def _describe_when_finished(
    m: SimpleNamespace, service: Any, env: Any, client: Any, action: str, job_name: str
) -> dict | None:
    """One .sync poll: None while the job runs, its Describe* output once it completed."""
    describe, name_key, status_key = _DESCRIBE_FOR[action]
    described = getattr(client, describe)(**{name_key: job_name})
    described.pop("ResponseMetadata", None)
    if described.get(status_key) not in _TERMINAL_JOB_STATUSES:
        return None
    described = json.loads(m.to_json_str(described))  # datetimes -> strings
    if described[status_key] == "Completed":
        return described
    # As on AWS: States.TaskFailed with the Describe* output (FailureReason) as Cause.
    name = m.StatesErrorName(typ=m.StatesErrorNameType.StatesTaskFailed)
    raise m.FailureEventException(_task_failed(m, service, env, name, m.to_json_str(described)))


def _sagemaker_task_service_class() -> type:
    """The SageMaker service integration on moto's callback-capable base class."""
    m = _moto_symbols()

    class SageMakerTaskService(m.base):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            # WaitForTaskToken must be listed: moto's base dereferences the callback endpoint.
            conditions = {m.ResourceCondition.Sync, m.ResourceCondition.WaitForTaskToken}
            super().__init__(supported_integration_patterns=conditions)

        def _get_supported_parameters(self) -> set[str] | None:
            return _SUPPORTED_PARAMETERS.get(self.resource.api_action.lower())

        def _from_error(self, env: Any, ex: Exception) -> Any:
            if not isinstance(ex, ClientError):
                return super()._from_error(env=env, ex=ex)
            name = m.CustomErrorName(f"SageMaker.{ex.response['Error']['Code']}")
            return _task_failed(m, self, env, name, ex.response["Error"].get("Message", str(ex)))

        # moto calls these with keywords: the parameter names are moto's.
        def _eval_service_task(
            self,
            env: Any,
            resource_runtime_part: Any,
            normalised_parameters: dict,
            state_credentials: Any,
        ) -> None:
            client = _sagemaker_client(m, resource_runtime_part, state_credentials)
            action = getattr(client, self._get_boto_service_action())
            response = action(**normalised_parameters)
            response.pop("ResponseMetadata", None)
            env.stack.append(response)

        def _build_sync_resolver(
            self,
            env: Any,
            resource_runtime_part: Any,
            normalised_parameters: dict,
            state_credentials: Any,
        ) -> Callable[[], Any]:
            action = self.resource.api_action.lower()
            if action not in _DESCRIBE_FOR:
                raise RuntimeError(f"{self.resource.resource_arn} has no .sync form")
            client = _sagemaker_client(m, resource_runtime_part, state_credentials)
            env.stack.pop()  # the Create* response; .sync returns the Describe* output
            job_name = normalised_parameters[_DESCRIBE_FOR[action][1]]
            return lambda: _describe_when_finished(m, self, env, client, action, job_name)

    return SageMakerTaskService


def _make_task_service_factory(original: Callable[..., Any]) -> Callable[..., Any]:
    service_class = _sagemaker_task_service_class()

    def state_task_service_for(service_name: str) -> Any:
        if service_name == "sagemaker":
            return service_class()
        return original(service_name=service_name)

    return state_task_service_for


# ---------------------------------------------------------------- 3. SageMaker jobs that run


def _make_create_training_job(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_training_job(self: Any, *args: Any, **kwargs: Any) -> Any:
        job = original(self, *args, **kwargs)
        job.training_job_status = "InProgress"
        job.secondary_status = "Starting"
        job.training_end_time = None
        _require_hooks().start_training_job(job)
        return job

    return create_training_job


def _make_create_transform_job(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_transform_job(self: Any, *args: Any, **kwargs: Any) -> Any:
        job = original(self, *args, **kwargs)
        job.transform_job_status = "InProgress"
        job.transform_end_time = None
        try:
            model: dict[str, Any] | None = self.describe_model(job.model_name).response_object
        except Exception:  # the runner fails the job, as SageMaker would
            model = None
        _require_hooks().start_transform_job(job, model)
        return job

    return create_transform_job


# ---------------------------------------------------------------- 4. EventBridge -> Lambda / SFN


def _make_send_to_targets(original: Callable[..., Any]) -> Callable[..., Any]:
    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        ours = [t for t in self.targets if _target_service(t["Arn"]) in ("lambda", "states")]
        others = [t for t in self.targets if t not in ours]
        if ours and self.event_pattern.matches_event(original_event):
            event = _as_delivered(original_event)
            for target in ours:
                _deliver(target, event)
        if others:
            rest = copy.copy(self)
            rest.targets = others
            original(rest, original_event, transform_input)

    return send_to_targets


def _target_service(arn: str) -> str:
    parts = arn.split(":")
    return parts[2] if len(parts) > 2 else ""


def _as_delivered(event: dict[str, Any]) -> dict[str, Any]:
    """The event as EventBridge delivers it.

    moto keeps ``time`` as epoch seconds (AWS: ISO 8601) and names the S3 object's ETag
    ``eTag`` (AWS: ``etag``); both are put right here.
    """
    from datetime import UTC, datetime

    delivered = copy.deepcopy(event)
    if isinstance(delivered.get("time"), int | float):
        stamp = datetime.fromtimestamp(delivered["time"], tz=UTC)
        delivered["time"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    s3_object = (delivered.get("detail") or {}).get("object")
    is_s3 = delivered.get("source") == "aws.s3" and isinstance(s3_object, dict)
    if is_s3 and "eTag" in s3_object:
        s3_object["etag"] = s3_object.pop("eTag")
    return delivered


def _deliver(target: dict[str, Any], event: dict[str, Any]) -> None:
    hooks = _require_hooks()
    arn = target["Arn"]
    if _target_service(arn) == "lambda":
        function_name = arn.split(":")[6]
        work: Callable[[], Any] = lambda: hooks.invoke_lambda(function_name, event)  # noqa: E731
    else:
        work = lambda: hooks.start_execution(arn, event)  # noqa: E731
    # EventBridge delivers asynchronously: never block the S3 PUT that caused the event.
    threading.Thread(target=work, name=f"eventbridge-{arn}", daemon=True).start()


# ---------------------------------------------------------------- 5. Distributed Map

_BATCHER_FIELDS: Final = frozenset(
    {
        "MaxItemsPerBatch",
        "MaxItemsPerBatchPath",
        "MaxInputBytesPerBatch",
        "MaxInputBytesPerBatchPath",
        "BatchInput",
    }
)
# Where the parsed Map's iteration component keeps its ItemBatcher (set by the parse patch).
_BATCHER_ATTRIBUTE = "_saeflow_item_batcher"


def strip_item_batchers(definition: str) -> tuple[str, dict[tuple[str, ...], dict[str, Any]]]:
    """The definition without ``ItemBatcher`` fields, and each one by its Map's path of state
    names (moto's grammar refuses the field; the embedded mode applies it itself)."""
    machine = json.loads(definition)
    found: dict[tuple[str, ...], dict[str, Any]] = {}

    def walk(graph: dict[str, Any], path: tuple[str, ...]) -> None:
        for name, state in (graph.get("States") or {}).items():
            if not isinstance(state, dict):
                continue
            batcher = state.pop("ItemBatcher", None) if state.get("Type") == "Map" else None
            if batcher is not None:
                unknown = set(batcher) - _BATCHER_FIELDS
                if unknown or not isinstance(batcher, dict):
                    raise ValueError(f"{name}: ItemBatcher fields {sorted(unknown)} not supported")
                if state.get("ItemSelector") or state.get("Parameters"):
                    # Step Functions applies ItemSelector to each item of a batch; not emulated.
                    raise ValueError(f"{name}: ItemBatcher with ItemSelector is not emulated")
                found[(*path, name)] = batcher
            for inner in (state.get("ItemProcessor"), state.get("Iterator")):
                if isinstance(inner, dict):
                    walk(inner, (*path, name))

    walk(machine, ())
    return (json.dumps(machine) if found else definition), found


def _iteration_programs(program: Any, m: SimpleNamespace) -> Any:
    """(path, StateMap) for every Map of a parsed program, nested ones included."""
    stack = [((), program)]
    while stack:
        path, current = stack.pop()
        for name, state in current.states.states.items():
            if isinstance(state, m.StateMap):
                yield (*path, name), state
                stack.append(((*path, name), state.iteration_component._get_iteration_program()))


def _make_parse(original: Callable[[str], Any]) -> Any:
    m = SimpleNamespace(**{k: resolve_target(*t)[2] for k, t in _MAP_SYMBOLS.items()})

    def parse(definition: str) -> Any:
        stripped, batchers = strip_item_batchers(definition)
        program, tree = original(stripped)
        for path, state in _iteration_programs(program, m):
            if path in batchers:
                if "Distributed" not in type(state.iteration_component).__name__:
                    raise ValueError(f"{path[-1]}: ItemBatcher needs a DISTRIBUTED ItemProcessor")
                setattr(state.iteration_component, _BATCHER_ATTRIBUTE, batchers.pop(path))
        if batchers:
            raise ValueError(f"ItemBatcher on states moto did not parse: {sorted(batchers)}")
        return program, tree

    return staticmethod(parse)


def batch_items(
    items: list[Any], batcher: dict[str, Any], state_input: Any, extract: Callable[..., Any]
) -> list[dict[str, Any]]:
    """Step Functions' batches: consecutive items, each batch within both limits, every
    batch ``{"Items": [...]}`` plus ``"BatchInput"`` when the ItemBatcher has one."""

    def limit(name: str) -> int | None:
        if f"{name}Path" in batcher:
            return int(extract(batcher[f"{name}Path"], state_input))
        return int(batcher[name]) if name in batcher else None

    max_items, max_bytes = limit("MaxItemsPerBatch"), limit("MaxInputBytesPerBatch")
    if max_items is None and max_bytes is None:
        raise ValueError("ItemBatcher needs MaxItemsPerBatch or MaxInputBytesPerBatch")
    batch_input = (
        _payload(batcher["BatchInput"], state_input, extract) if "BatchInput" in batcher else None
    )
    batches: list[list[Any]] = []
    size = 0
    for item in items:
        item_bytes = len(json.dumps(item))
        full = batches and (
            (max_items is not None and len(batches[-1]) >= max_items)
            or (max_bytes is not None and size + item_bytes > max_bytes)
        )
        if not batches or full:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item_bytes
    return [
        {"Items": batch, **({"BatchInput": batch_input} if batch_input is not None else {})}
        for batch in batches
    ]


def _payload(template: Any, state_input: Any, extract: Callable[..., Any]) -> Any:
    """A JSONPath payload template (``"key.$": "$.path"``) over the Map state's input."""
    if isinstance(template, list):
        return [_payload(v, state_input, extract) for v in template]
    if not isinstance(template, dict):
        return template
    out: dict[str, Any] = {}
    for key, value in template.items():
        if key.endswith(".$"):
            if not (
                isinstance(value, str) and value.startswith("$") and not value.startswith("$$")
            ):
                raise ValueError(f"BatchInput {key}: only paths into the state input are emulated")
            out[key[:-2]] = extract(value, state_input)
        else:
            out[key] = _payload(value, state_input, extract)
    return out


def _make_map_run(original: Callable[..., Any]) -> Callable[..., Any]:
    m = _moto_symbols()
    maps = SimpleNamespace(**{k: resolve_target(*t)[2] for k, t in _MAP_SYMBOLS.items()})

    def _map_run(self: Any, env: Any, eval_input: Any) -> None:
        batcher = getattr(self, _BATCHER_ATTRIBUTE, None)
        if batcher is not None:
            items = env.stack.pop()
            # Under the items: the Map state's input (moto's workers read it there too).
            env.stack.append(batch_items(items, batcher, env.stack[-1], maps.extract_json))
        original(self, env, eval_input)
        _fail_above_tolerance(m, maps, env, eval_input)

    return _map_run


def _fail_above_tolerance(m: SimpleNamespace, maps: SimpleNamespace, env: Any, run: Any) -> None:
    """As Step Functions: more failed child executions than tolerated fails the Map."""
    counter = run.map_run_record.execution_counter
    failed = counter.failed.get() + counter.timed_out.get() + counter.aborted.get()
    total = max(1, counter.total.get())
    # moto gives 0 for an unset tolerance, so a set one is the one that is not 0: the Map
    # fails when the failures exceed both (with both set, Step Functions fails on either).
    within_count = failed <= run.tolerated_failure_count
    within_percentage = 100.0 * failed / total <= run.tolerated_failure_percentage
    if failed == 0 or within_count or within_percentage:
        return
    name = m.StatesErrorName(typ=m.StatesErrorNameType.StatesExceedToleratedFailureThreshold)
    details = maps.MapRunFailedEventDetails(
        error=name.error_name,
        cause=f"The specified tolerated failure threshold was exceeded ({failed} of {total})",
    )
    raise m.FailureEventException(
        m.FailureEvent(
            env=env,
            error_name=name,
            event_type=m.HistoryEventType.MapRunFailed,
            event_details=m.EventDetails(mapRunFailedEventDetails=details),
        )
    )


# ---------------------------------------------------------------- install / uninstall

_PATCHES: Final[tuple[tuple[tuple[str, str], Callable[[Any], Any]], ...]] = (
    (_LAMBDA_FUNCTION, lambda _original: _invoke_in_process),
    (_TASK_SERVICE_FACTORY, _make_task_service_factory),
    (_CREATE_TRAINING_JOB, _make_create_training_job),
    (_CREATE_TRANSFORM_JOB, _make_create_transform_job),
    (_RULE_SEND_TO_TARGETS, _make_send_to_targets),
    (_ASL_PARSE, _make_parse),
    (_DISTRIBUTED_MAP_RUN, _make_map_run),
)


def install(hooks: LocalHooks) -> None:
    """Apply every patch (idempotent) and route them to ``hooks``."""
    global _hooks
    with _install_lock:
        for target in PATCH_TARGETS:
            resolve_target(*target)  # fail before changing anything
        _hooks = hooks
        for target, make in _PATCHES:
            if target in _installed:
                continue
            owner, name, original = resolve_target(*target)
            # Kept as the class holds it (a staticmethod stays one when restored).
            raw = inspect.getattr_static(owner, name)
            setattr(owner, name, make(original))
            _installed[target] = raw


def uninstall() -> None:
    """Restore moto's originals."""
    global _hooks
    with _install_lock:
        for target, original in _installed.items():
            owner, name, _current = resolve_target(*target)
            setattr(owner, name, original)
        _installed.clear()
        _hooks = None


def enable_state_machine_execution_config() -> dict[str, Any]:
    """The body for moto's ``POST /moto-api/config``: run state machines for real."""
    resolve_target(*_USER_CONFIG)
    return {"stepfunctions": {"execute_state_machine": True}}
