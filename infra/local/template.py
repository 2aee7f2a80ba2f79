"""Read template.yaml (SAM) into what the local stack creates: nothing is restated by hand.

The bucket, tables, functions (code dir, handler, environment), the state machine (its
definition file with ``DefinitionSubstitutions`` resolved) and the EventBridge rules come
from the template; CloudFormation intrinsics are resolved against local physical names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.local.lambda_dispatch import LocalFunction

_SUBSTITUTION = re.compile(r"\$\{([A-Za-z0-9_.:]+)\}")


class TemplateError(RuntimeError):
    """template.yaml holds something the local stack cannot build."""


@dataclass(frozen=True)
class TableSpec:
    logical_id: str
    name: str
    key_schema: list[dict[str, str]]
    attribute_definitions: list[dict[str, str]]
    global_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    ttl_attribute: str | None = None


@dataclass(frozen=True)
class RuleSpec:
    name: str
    pattern: dict[str, Any]
    target_arn: str
    event_bus: str = "default"


@dataclass(frozen=True)
class StackDefinition:
    """Everything the local stack creates, with local names."""

    bucket_logical_id: str
    bucket_name: str
    bucket_eventbridge: bool
    tables: list[TableSpec]
    functions: list[LocalFunction]
    state_machine_name: str
    state_machine_arn: str
    definition: str
    rules: list[RuleSpec]
    event_buses: list[str]
    roles: list[str]
    outputs: dict[str, str]


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !GetAtt, !Sub, ...)."""


def _construct_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        document = yaml.load(handle, Loader=_CfnLoader)
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path} is not a CloudFormation template")
    return document


class _Resolver:
    """Resolves intrinsics with local physical names and ARNs."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str],
        refs: Mapping[str, str],
        arns: Mapping[str, str],
        pseudo: Mapping[str, str],
    ) -> None:
        self._template = template
        self._parameters = parameters
        self._refs = refs
        self._arns = arns
        self._pseudo = pseudo
        self._conditions: dict[str, bool] = {}

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.value(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                return self._get_att(arg)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                return str(arg[0]).join(str(self.value(x)) for x in self.value(arg[1]))
            if key == "Fn::Select":
                return self.value(arg[1])[int(self.value(arg[0]))]
            if key == "Fn::Split":
                return str(self.value(arg[1])).split(arg[0])
            if key == "Fn::If":
                branch = arg[1] if self.condition(arg[0]) else arg[2]
                return self.value(branch)
            if key == "Fn::ImportValue":
                raise TemplateError(f"Fn::ImportValue is not supported locally: {arg}")
        return {k: self.value(v) for k, v in node.items()}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            definition = self._template.get("Conditions", {}).get(name)
            if definition is None:
                raise TemplateError(f"unknown condition {name}")
            self._conditions[name] = self._truth(definition)
        return self._conditions[name]

    def _truth(self, node: Any) -> bool:
        ((key, arg),) = node.items()
        if key == "Fn::Equals":
            return str(self.value(arg[0])) == str(self.value(arg[1]))
        if key == "Fn::Not":
            return not self._truth(arg[0])
        if key == "Fn::And":
            return all(self._truth(x) for x in arg)
        if key == "Fn::Or":
            return any(self._truth(x) for x in arg)
        if key == "Condition":
            return self.condition(arg)
        raise TemplateError(f"unsupported condition {key}")

    def _ref(self, name: str) -> str:
        if name in self._pseudo:
            return self._pseudo[name]
        if name in self._parameters:
            return self._parameters[name]
        if name in self._refs:
            return self._refs[name]
        raise TemplateError(f"!Ref {name}: no such parameter or resource")

    def _get_att(self, arg: list[str]) -> str:
        logical_id, attribute = arg[0], arg[1]
        if attribute == "Arn" and logical_id in self._arns:
            return self._arns[logical_id]
        if attribute in ("Name", "TableName", "BucketName") and logical_id in self._refs:
            return self._refs[logical_id]
        raise TemplateError(f"!GetAtt {logical_id}.{attribute} is not known locally")

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        resolved = {k: str(self.value(v)) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in resolved:
                return resolved[name]
            if "." in name:
                return str(self._get_att(name.split(".", 1)))
            return str(self._ref(name))

        return _SUBSTITUTION.sub(replace, text)


def build_stack_definition(
    template_path: Path,
    *,
    stack_name: str,
    bucket_name: str,
    region: str,
    account_id: str,
    parameter_overrides: Mapping[str, str] | None = None,
) -> StackDefinition:
    """The local stack described by ``template_path`` (its directory is the code root)."""
    template = load_template(template_path)
    root = template_path.parent
    pseudo = {
        "AWS::Region": region,
        "AWS::AccountId": account_id,
        "AWS::StackName": stack_name,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::NoValue": "",
    }
    all_resources: dict[str, Any] = template["Resources"]
    refs, arns = _physical_names(all_resources, stack_name, bucket_name, region, account_id)
    resolver = _resolver(template, parameter_overrides, refs, arns, pseudo)
    resources = {  # those whose Condition holds
        logical_id: resource
        for logical_id, resource in all_resources.items()
        if "Condition" not in resource or resolver.condition(resource["Condition"])
    }
    bucket_id = _the_one(resources, "S3 bucket", "AWS::S3::Bucket")
    machine_id = _the_one(
        resources,
        "state machine",
        "AWS::Serverless::StateMachine",
        "AWS::StepFunctions::StateMachine",
    )
    return StackDefinition(
        bucket_logical_id=bucket_id,
        bucket_name=bucket_name,
        bucket_eventbridge=_eventbridge_enabled(resources[bucket_id]),
        tables=[_table(i, resources[i], refs) for i in _of_type(resources, "AWS::DynamoDB::Table")],
        functions=_functions(template, resources, resolver, refs, arns, root),
        state_machine_name=refs[machine_id].rsplit(":", 1)[-1],
        state_machine_arn=arns[machine_id],
        definition=_definition(resources[machine_id], resolver, root),
        rules=_rules(resources, resolver, refs, arns),
        event_buses=[refs[i] for i in _of_type(resources, "AWS::Events::EventBus")],
        roles=[refs[i] for i in _of_type(resources, "AWS::IAM::Role")],
        outputs={
            name: str(resolver.value(spec.get("Value")))
            for name, spec in template.get("Outputs", {}).items()
            if "Condition" not in spec or resolver.condition(spec["Condition"])
        },
    )


def _resolver(
    template: Mapping[str, Any],
    parameter_overrides: Mapping[str, str] | None,
    refs: dict[str, str],
    arns: dict[str, str],
    pseudo: Mapping[str, str],
) -> _Resolver:
    """The resolver of the template's values, once explicit resource names are known."""
    parameters = {
        name: str(spec.get("Default", "")) for name, spec in template.get("Parameters", {}).items()
    }
    parameters.update(parameter_overrides or {})
    # Explicit names (BucketName, FunctionName...) may themselves use parameters.
    _apply_explicit_names(
        template["Resources"], refs, arns, _Resolver(template, parameters, {}, {}, pseudo)
    )
    return _Resolver(template, parameters, refs, arns, pseudo)


def _the_one(resources: Mapping[str, Any], what: str, *types: str) -> str:
    found = _of_type(resources, *types)
    if len(found) != 1:
        raise TemplateError(f"expected one {what} in the template, found {len(found)}")
    return found[0]


def _functions(
    template: Mapping[str, Any],
    resources: Mapping[str, Any],
    resolver: _Resolver,
    refs: Mapping[str, str],
    arns: Mapping[str, str],
    root: Path,
) -> list[LocalFunction]:
    globals_function = template.get("Globals", {}).get("Function", {})
    globals_env = globals_function.get("Environment", {}).get("Variables", {})
    return [
        _function(i, resources[i], globals_function, globals_env, resolver, refs, arns, root)
        for i in _of_type(resources, "AWS::Serverless::Function")
    ]


def _eventbridge_enabled(bucket: Mapping[str, Any]) -> bool:
    notifications = (bucket.get("Properties") or {}).get("NotificationConfiguration") or {}
    config = notifications.get("EventBridgeConfiguration") or {}
    return bool(config.get("EventBridgeEnabled", "EventBridgeConfiguration" in notifications))


def _of_type(resources: Mapping[str, Any], *types: str) -> list[str]:
    return [k for k, v in resources.items() if v.get("Type") in types]


def _physical_names(
    resources: Mapping[str, Any], stack: str, bucket: str, region: str, account: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Ref value and ARN of every resource, chosen before anything is created."""
    refs: dict[str, str] = {}
    arns: dict[str, str] = {}
    for logical_id, resource in resources.items():
        kind = resource.get("Type", "")
        name = f"{stack}-{logical_id}"
        if kind == "AWS::S3::Bucket":
            refs[logical_id], arns[logical_id] = bucket, f"arn:aws:s3:::{bucket}"
        elif kind == "AWS::DynamoDB::Table":
            refs[logical_id] = name
            arns[logical_id] = f"arn:aws:dynamodb:{region}:{account}:table/{name}"
        elif kind in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            refs[logical_id] = name
            arns[logical_id] = f"arn:aws:lambda:{region}:{account}:function:{name}"
            # SAM's implicit role for the function.
            refs[f"{logical_id}Role"] = f"{name}-role"
            arns[f"{logical_id}Role"] = f"arn:aws:iam::{account}:role/{name}-role"
        elif kind in ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"):
            arn = f"arn:aws:states:{region}:{account}:stateMachine:{name}"
            refs[logical_id], arns[logical_id] = arn, arn
            refs[f"{logical_id}Role"] = f"{name}-role"
            arns[f"{logical_id}Role"] = f"arn:aws:iam::{account}:role/{name}-role"
        elif kind == "AWS::IAM::Role":
            refs[logical_id] = name
            arns[logical_id] = f"arn:aws:iam::{account}:role/{name}"
        elif kind == "AWS::Events::EventBus":
            refs[logical_id] = name
            arns[logical_id] = f"arn:aws:events:{region}:{account}:event-bus/{name}"
        elif kind == "AWS::Events::Rule":
            refs[logical_id] = name
            arns[logical_id] = f"arn:aws:events:{region}:{account}:rule/{name}"
        elif kind == "AWS::SecretsManager::Secret":
            refs[logical_id] = arns[logical_id] = (
                f"arn:aws:secretsmanager:{region}:{account}:secret:{name}"
            )
        else:
            refs[logical_id] = name
            arns[logical_id] = f"arn:aws:local:{region}:{account}:{logical_id}/{name}"
    return refs, arns


# The property that names a resource explicitly, per type (the bucket is always local).
_NAME_PROPERTIES = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::IAM::Role": "RoleName",
    "AWS::Events::EventBus": "Name",
    "AWS::Events::Rule": "Name",
    "AWS::Serverless::StateMachine": "Name",
    "AWS::StepFunctions::StateMachine": "StateMachineName",
}


def _apply_explicit_names(
    resources: Mapping[str, Any],
    refs: dict[str, str],
    arns: dict[str, str],
    resolver: _Resolver,
) -> None:
    """Honour ``Name``-like properties (resolved with parameters and pseudo parameters)."""
    for logical_id, resource in resources.items():
        prop = _NAME_PROPERTIES.get(resource.get("Type", ""))
        explicit = (resource.get("Properties") or {}).get(prop) if prop else None
        if explicit is None:
            continue
        name = str(resolver.value(explicit))
        default = refs[logical_id].rsplit(":", 1)[-1]
        refs[logical_id] = refs[logical_id].replace(default, name)
        arns[logical_id] = arns[logical_id].replace(default, name)


def _function(
    logical_id: str,
    resource: Mapping[str, Any],
    globals_function: Mapping[str, Any],
    globals_env: Mapping[str, Any],
    resolver: _Resolver,
    refs: Mapping[str, str],
    arns: Mapping[str, str],
    root: Path,
) -> LocalFunction:
    props = resource.get("Properties", {})
    code_uri = props.get("CodeUri", globals_function.get("CodeUri"))
    handler = props.get("Handler", globals_function.get("Handler"))
    if not isinstance(code_uri, str) or not handler:
        raise TemplateError(f"{logical_id}: CodeUri (a local path) and Handler are required")
    variables = {**globals_env, **props.get("Environment", {}).get("Variables", {})}
    environment = {k: str(resolver.value(v)) for k, v in variables.items()}
    return LocalFunction(
        logical_id=logical_id,
        function_name=refs[logical_id],
        arn=arns[logical_id],
        code_dir=(root / code_uri).resolve(),
        handler=str(handler),
        environment=environment,
        timeout_s=int(props.get("Timeout", globals_function.get("Timeout", 900))),
        memory_mb=int(props.get("MemorySize", globals_function.get("MemorySize", 512))),
    )


def _table(logical_id: str, resource: Mapping[str, Any], refs: Mapping[str, str]) -> TableSpec:
    props = resource.get("Properties", {})
    ttl = props.get("TimeToLiveSpecification") or {}
    return TableSpec(
        logical_id=logical_id,
        name=refs[logical_id],
        key_schema=props["KeySchema"],
        attribute_definitions=props["AttributeDefinitions"],
        global_secondary_indexes=props.get("GlobalSecondaryIndexes", []),
        ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled") else None,
    )


def _definition(resource: Mapping[str, Any], resolver: _Resolver, root: Path) -> str:
    props = resource.get("Properties", {})
    if "DefinitionUri" in props:
        text = (root / str(props["DefinitionUri"])).read_text()
    elif "Definition" in props:
        text = json.dumps(resolver.value(props["Definition"]))
    else:
        raise TemplateError("the state machine has neither DefinitionUri nor Definition")
    substitutions = {
        k: str(resolver.value(v)) for k, v in props.get("DefinitionSubstitutions", {}).items()
    }
    placeholders = set(_SUBSTITUTION.findall(text))
    missing = placeholders - set(substitutions)
    if missing:
        raise TemplateError(f"the definition uses ${{...}} with no substitution: {sorted(missing)}")
    resolved = _SUBSTITUTION.sub(lambda m: substitutions[m.group(1)], text)
    json.loads(resolved)  # a substitution must not break the JSON
    return resolved


def _rules(
    resources: Mapping[str, Any],
    resolver: _Resolver,
    refs: Mapping[str, str],
    arns: Mapping[str, str],
) -> list[RuleSpec]:
    """EventBridge rules: SAM ``Events`` of type EventBridgeRule and AWS::Events::Rule."""
    rules: list[RuleSpec] = []
    for logical_id, resource in resources.items():
        props = resource.get("Properties", {})
        kind = resource.get("Type")
        if kind in (
            "AWS::Serverless::Function",
            "AWS::Serverless::StateMachine",
        ):
            for event_id, event in (props.get("Events") or {}).items():
                if event.get("Type") not in ("EventBridgeRule", "CloudWatchEvent"):
                    continue
                event_props = event.get("Properties", {})
                rules.append(
                    RuleSpec(
                        name=f"{refs[logical_id].rsplit(':', 1)[-1]}-{event_id}"[:64],
                        pattern=resolver.value(event_props.get("Pattern", {})),
                        target_arn=arns[logical_id],
                        event_bus=str(resolver.value(event_props.get("EventBusName", "default"))),
                    )
                )
        elif kind == "AWS::Events::Rule":
            pattern = resolver.value(props.get("EventPattern", {}))
            for target in props.get("Targets", []):
                rules.append(
                    RuleSpec(
                        name=refs[logical_id],
                        pattern=pattern,
                        target_arn=str(resolver.value(target["Arn"])),
                        event_bus=str(resolver.value(props.get("EventBusName", "default"))),
                    )
                )
    return rules
