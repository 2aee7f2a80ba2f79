"""The local stack: template.yaml's resources in an in-process moto server.

``LocalStack(definition).start()`` starts the server, installs the moto patches, creates
the bucket (with EventBridge notifications, as the template asks), the tables, the Lambda
functions (dispatched in-process), the state machine and the EventBridge rules, and
restores the persisted state (trained SAEs, reports, label registry).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from infra.local import moto_patches
from infra.local.lambda_dispatch import FunctionOutput, LambdaDispatcher
from infra.local.moto_patches import LambdaOutcome
from infra.local.persistence import PersistentState
from infra.local.sagemaker_jobs import LocalJobRunner
from infra.local.server import (
    CREDENTIAL_VARIABLES_TO_DROP,
    LOCAL_ACCOUNT_ID,
    LOCAL_REGION,
    LocalServer,
    PublicEndpoint,
    process_environment,
)
from infra.local.template import StackDefinition, build_stack_definition

LOG = logging.getLogger(__name__)

LOCAL_BUCKET = "saeflow-local"
LOCAL_STACK_NAME = "saeflow-local"
REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"

# Environment every in-process handler gets on top of the template's: Powertools quiet and
# without X-Ray or CloudWatch (neither exists locally).
_LOCAL_FUNCTION_ENVIRONMENT = {
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
}


# Parameters without a default that have no meaning locally (no image is pulled).
_LOCAL_PARAMETERS = {
    "WorkerImageUri": f"{LOCAL_ACCOUNT_ID}.dkr.ecr.{LOCAL_REGION}.amazonaws.com/saeflow-worker:local",
}


def local_definition(
    template_path: Path = TEMPLATE_PATH,
    parameter_overrides: Mapping[str, str] | None = None,
) -> StackDefinition:
    """The template's stack with the local names (bucket ``saeflow-local``)."""
    return build_stack_definition(
        template_path,
        stack_name=LOCAL_STACK_NAME,
        bucket_name=LOCAL_BUCKET,
        region=LOCAL_REGION,
        account_id=LOCAL_ACCOUNT_ID,
        parameter_overrides={**_LOCAL_PARAMETERS, **(parameter_overrides or {})},
    )


@dataclass(frozen=True)
class StackSettings:
    state_dir: Path
    port: int = 0
    # ``saeflow local serve``: the port the AWS CLI uses, opened only once the stack and
    # its persisted state are restored (None: no public endpoint, ``saeflow run``).
    public_port: int | None = None
    worker_command: list[str] | None = None
    function_environment: Mapping[str, str] | None = None  # e.g. the labeller choice
    # Read at every invocation and set over the template's values: the user's own AWS
    # credentials and Region for Bedrock (saeflow.cli.bedrock_access), which must reach
    # the real service while everything else talks to the local stack.
    function_environment_source: Callable[[], Mapping[str, str]] | None = None
    log_level: str = "WARNING"
    # EventBridge rules from the template (S3 upload -> run). ``saeflow run`` starts its
    # execution itself (with --set overrides), so only ``local serve`` turns them on.
    enable_triggers: bool = False
    echo_logs: bool = False  # also copy the functions' logs to stderr (-v)


class LocalStack:
    """Start/stop the whole local AWS side; use as a context manager."""

    def __init__(self, definition: StackDefinition, settings: StackSettings) -> None:
        self.definition = definition
        self.settings = settings
        self.server = LocalServer(settings.port)
        self.public: PublicEndpoint | None = None
        self.restored = 0
        self.dispatcher: LambdaDispatcher | None = None
        self.jobs: LocalJobRunner | None = None
        self.persistence = PersistentState(settings.state_dir)
        self._env_context: Any = None
        self._function_output: FunctionOutput | None = None
        self._started_executions: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        # Powertools warns on every invocation that metrics (disabled here) are empty.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        self.server.start()
        env = self.server.environment()
        self._env_context = process_environment(env, drop=CREDENTIAL_VARIABLES_TO_DROP)
        self._env_context.__enter__()
        try:
            function_env = {
                **_LOCAL_FUNCTION_ENVIRONMENT,
                **(self.settings.function_environment or {}),
            }
            # The template's LOG_LEVEL suits CloudWatch; a terminal wants the CLI's level.
            forced = {"LOG_LEVEL": self.settings.log_level}
            log_dir = self.settings.state_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            self._function_output = FunctionOutput(
                log_dir / "lambda.log", echo=sys.stderr if self.settings.echo_logs else None
            )
            self.dispatcher = LambdaDispatcher(
                self.definition.functions,
                function_env,
                forced,
                self._function_output,
                environment_source=self.settings.function_environment_source,
            )
            work_dir = self.settings.state_dir / "jobs"
            work_dir.mkdir(parents=True, exist_ok=True)
            from infra.local.sagemaker_jobs import worker_environment

            self.jobs = LocalJobRunner(
                s3_client=self.client("s3"),
                work_dir=work_dir,
                worker_env=worker_environment(self.server.endpoint_url, LOCAL_REGION),
                worker_command=self.settings.worker_command,
            )
            moto_patches.install(self)
            self._create_resources()
            self.restored = self.persistence.restore(
                self.client("s3"), self.client("dynamodb"), self._persisted()
            )
            if self.settings.public_port is not None:
                self.public = PublicEndpoint(self.settings.public_port)
                self.public.start()  # last: nothing answers users before the state is back
        except BaseException:
            self.stop(persist=False)
            raise

    def stop(self, persist: bool = True) -> None:
        try:
            if self.jobs is not None:
                self.jobs.stop_all()  # first: an interrupted run should not keep the CPU busy
            if persist and self.server.port is not None:
                self.save()
        finally:
            if self.public is not None:
                self.public.stop()
            moto_patches.uninstall()
            self.server.stop()
            if self._function_output is not None:
                self._function_output.close_file()
            if self._env_context is not None:
                self._env_context.__exit__(None, None, None)
                self._env_context = None

    def save(self) -> None:
        """Write the persisted prefixes and tables to the state dir."""
        self.persistence.save(self.client("s3"), self.client("dynamodb"), self._persisted())

    # ------------------------------------------------------------------ clients

    @property
    def endpoint_url(self) -> str:
        """The internal endpoint (handlers, worker processes, the stack's own clients)."""
        return self.server.endpoint_url

    @property
    def public_endpoint_url(self) -> str:
        """What users are given: the public endpoint when one is open, else the internal."""
        return self.public.endpoint_url if self.public is not None else self.endpoint_url

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.server.endpoint_url,
            region_name=LOCAL_REGION,
            aws_access_key_id="saeflow-local",
            aws_secret_access_key="saeflow-local",
            config=Config(retries={"max_attempts": 2}, read_timeout=900),
        )

    # ------------------------------------------------------------------ LocalHooks

    def invoke_lambda(self, function_name: str, event: Any) -> LambdaOutcome:
        assert self.dispatcher is not None
        return self.dispatcher.invoke_lambda(function_name, event)

    def start_training_job(self, job: Any) -> None:
        assert self.jobs is not None
        self.jobs.start_training_job(job)

    def start_transform_job(self, job: Any, model: dict[str, Any] | None) -> None:
        assert self.jobs is not None
        self.jobs.start_transform_job(job, model)

    def start_execution(self, state_machine_arn: str, event: dict[str, Any]) -> None:
        # An EventBridge rule targeting the state machine directly: AWS names it at random.
        self.client("stepfunctions").start_execution(
            stateMachineArn=state_machine_arn, input=json.dumps(event)
        )

    # ------------------------------------------------------------------ runs

    def wait_for_execution(self, execution_arn: str, timeout_s: float = 7200) -> dict[str, Any]:
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout_s
        while True:
            described = sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            if time.monotonic() > deadline:
                raise TimeoutError(f"{execution_arn} still running after {timeout_s:.0f}s")
            time.sleep(0.5)

    def list_executions(self) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        pages = sfn.get_paginator("list_executions").paginate(
            stateMachineArn=self.definition.state_machine_arn
        )
        return [e for page in pages for e in page["executions"]]

    # ------------------------------------------------------------------ creation

    def _persisted(self) -> dict[str, Any]:
        return {
            "bucket": self.definition.bucket_name,
            "tables": [
                t.name for t in self.definition.tables if "idempot" not in t.logical_id.lower()
            ],
        }

    def _create_resources(self) -> None:
        """What CloudFormation would create from the template, in moto."""
        lambda_role = self._create_roles()
        self._create_bucket()
        self._create_tables()
        self._create_functions(lambda_role)
        self._create_events()
        self.client("stepfunctions").create_state_machine(
            name=self.definition.state_machine_name,
            definition=self.definition.definition,
            roleArn=lambda_role,
        )

    def _create_roles(self) -> str:
        """The template's roles and one for every function; that one's ARN."""
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam = self.client("iam")
        for role in sorted({*self.definition.roles, f"{LOCAL_STACK_NAME}-lambda"}):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
        return f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:role/{LOCAL_STACK_NAME}-lambda"

    def _create_bucket(self) -> None:
        bucket, s3 = self.definition.bucket_name, self.client("s3")
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        if self.definition.bucket_eventbridge:
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )

    def _create_tables(self) -> None:
        dynamodb = self.client("dynamodb")
        for table in self.definition.tables:
            spec: dict[str, Any] = {
                "TableName": table.name,
                "KeySchema": table.key_schema,
                "AttributeDefinitions": table.attribute_definitions,
                "BillingMode": "PAY_PER_REQUEST",
            }
            if table.global_secondary_indexes:
                spec["GlobalSecondaryIndexes"] = [
                    {k: v for k, v in index.items() if k != "ProvisionedThroughput"}
                    for index in table.global_secondary_indexes
                ]
            dynamodb.create_table(**spec)
            if table.ttl_attribute:
                dynamodb.update_time_to_live(
                    TableName=table.name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
                )

    def _create_functions(self, role_arn: str) -> None:
        awslambda = self.client("lambda")
        for function in self.definition.functions:
            awslambda.create_function(
                FunctionName=function.function_name,
                Runtime="python3.11",
                Role=role_arn,
                Handler=function.handler,
                Code={"ZipFile": _placeholder_zip()},
                Environment={"Variables": dict(function.environment)},
                Timeout=min(function.timeout_s, 900),
                MemorySize=function.memory_mb,
            )

    def _create_events(self) -> None:
        events = self.client("events")
        for bus in self.definition.event_buses:
            events.create_event_bus(Name=bus)
        for rule in self.definition.rules if self.settings.enable_triggers else []:
            events.put_rule(
                Name=rule.name, EventPattern=json.dumps(rule.pattern), EventBusName=rule.event_bus
            )
            events.put_targets(
                Rule=rule.name,
                EventBusName=rule.event_bus,
                Targets=[{"Id": "target", "Arn": rule.target_arn}],
            )


def _placeholder_zip() -> bytes:
    """moto wants code; the code that runs is the handler module on disk."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README", "dispatched in-process by infra.local.lambda_dispatch\n")
    return buffer.getvalue()
