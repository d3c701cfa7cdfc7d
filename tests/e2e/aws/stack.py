"""A CloudFormation template "deployed" on a moto server: the resources moto keeps, by hand.

moto cannot deploy a SAM template (no transform, no Lambda without Docker), so
the harness reads the template with cfn-lint's decoder, resolves the few
intrinsic functions it uses (``Ref``, ``Fn::GetAtt``, ``Fn::Sub``, ``Fn::Join``,
``Fn::If`` with the template's Conditions, ``Fn::Select``) and creates what
moto can keep: KMS keys, S3 buckets, SQS queues, DynamoDB tables, event
buses, Scheduler groups, ECS clusters and task definitions, log groups.
Everything else (roles, functions, policies, alarms) gets a physical name and
ARN only, so references to it resolve.

What the harness needs of the template besides is read here as data:
every ``EventBridgeRule`` event of every function (pattern and bus), every
DynamoDB stream mapping (batch size and filters), the functions' handlers
and their environment (Globals merged), each function's asynchronous
invocation config (does it report to the default bus?).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import decode_str

from engine.aws import table

ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTITION = "aws"
_SUB = re.compile(r"\$\{([^}]*)\}")
_FUNCTIONS = ("AWS::Serverless::Function", "AWS::Lambda::Function")


class TemplateError(ValueError):
    """The template uses something this stand-in cannot resolve."""


def load(path: Path) -> dict[str, Any]:
    """The template as plain data (intrinsics in their JSON form: ``{"Ref": ...}``)."""
    template, problems = decode_str(path.read_text(encoding="utf-8"))
    if problems:
        raise TemplateError(f"{path}: {problems[0]}")
    return _plain(template)


def _plain(value: Any) -> Any:
    # cfn-lint's node classes carry line marks; plain dicts and lists are easier to compare.
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


# ---------------------------------------------------------------- physical ids


@dataclass
class Physical:
    """What ``Ref`` and ``Fn::GetAtt`` of one resource give."""

    ref: Any
    attrs: dict[str, Any] = field(default_factory=dict)


def arn(service: str, resource: str, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{account}:{resource}"


def _name(stack: str, logical: str, props: Mapping[str, Any], key: str | None) -> str:
    given = props.get(key) if key else None
    return given if isinstance(given, str) and given else f"{stack}-{logical}"


def physical(stack: str, logical: str, kind: str, props: Mapping[str, Any]) -> Physical:
    """Names and ARNs as CloudFormation would give them (generated names are ``stack-Logical``)."""
    if kind in _FUNCTIONS:
        name = _name(stack, logical, props, "FunctionName")
        return Physical(name, {"Arn": arn("lambda", f"function:{name}")})
    if kind == "AWS::IAM::Role":
        name = _name(stack, logical, props, "RoleName")
        return Physical(name, {"Arn": f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}"})
    if kind == "AWS::DynamoDB::Table":
        name = _name(stack, logical, props, "TableName")
        return Physical(name, {"Arn": arn("dynamodb", f"table/{name}")})
    if kind == "AWS::Events::EventBus":
        name = _name(stack, logical, props, "Name")
        return Physical(name, {"Arn": arn("events", f"event-bus/{name}"), "Name": name})
    if kind == "AWS::S3::Bucket":
        name = _name(stack, logical, props, "BucketName").lower()
        return Physical(name, {"Arn": f"arn:{PARTITION}:s3:::{name}", "DomainName": name})
    if kind == "AWS::SQS::Queue":
        name = _name(stack, logical, props, "QueueName")
        url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        return Physical(url, {"Arn": arn("sqs", name), "QueueName": name, "QueueUrl": url})
    if kind == "AWS::Scheduler::ScheduleGroup":
        name = _name(stack, logical, props, "Name")
        return Physical(name, {"Arn": arn("scheduler", f"schedule-group/{name}")})
    if kind == "AWS::ECS::Cluster":
        name = _name(stack, logical, props, "ClusterName")
        return Physical(name, {"Arn": arn("ecs", f"cluster/{name}")})
    if kind == "AWS::ECS::TaskDefinition":
        family = _name(stack, logical, props, "Family")
        return Physical(arn("ecs", f"task-definition/{family}:1"), {"Family": family})
    if kind == "AWS::ECR::Repository":
        name = _name(stack, logical, props, "RepositoryName").lower()
        uri = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}"
        return Physical(name, {"Arn": arn("ecr", f"repository/{name}"), "RepositoryUri": uri})
    if kind == "AWS::Logs::LogGroup":
        name = _name(stack, logical, props, "LogGroupName")
        if name == f"{stack}-{logical}":
            name = f"/{stack}/{logical}"
        return Physical(name, {"Arn": arn("logs", f"log-group:{name}:*")})
    if kind in ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"):
        name = _name(stack, logical, props, "Name")
        found = arn("states", f"stateMachine:{name}")
        return Physical(found, {"Arn": found, "Name": name})
    if kind == "AWS::SNS::Topic":
        name = _name(stack, logical, props, "TopicName")
        return Physical(arn("sns", name), {"TopicName": name})
    if kind == "AWS::Serverless::HttpApi":
        return Physical(f"{stack.lower()}api", {})
    return Physical(f"{stack}-{logical}", {"Arn": arn("cloudformation", f"{stack}/{logical}")})


# ---------------------------------------------------------------- intrinsics


class Intrinsics:
    """Resolves a template value against parameters, pseudo parameters and physical ids.

    Args:
        template: The template (as :func:`load` gives it).
        stack: The stack name (``AWS::StackName``).
        parameters: Values of the template's parameters (else their Default).
        resources: Physical ids by logical id; filled as resources are created.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        stack: str,
        parameters: Mapping[str, Any] | None = None,
        resources: dict[str, Physical] | None = None,
    ) -> None:
        self.template = template
        self.stack = stack
        self.resources = resources if resources is not None else {}
        self.parameters: dict[str, Any] = {}
        for name, spec in (template.get("Parameters") or {}).items():
            value = (parameters or {}).get(name, spec.get("Default"))
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = value.split(",")
            self.parameters[name] = value
        self._conditions: dict[str, bool] = {}

    def pseudo(self, name: str) -> Any:
        return {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": PARTITION,
            "AWS::StackName": self.stack,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": arn("cloudformation", f"stack/{self.stack}/0"),
            "AWS::NoValue": None,
        }[name]

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            spec = (self.template.get("Conditions") or {}).get(name)
            if spec is None:
                raise TemplateError(f"no condition {name!r}")
            self._conditions[name] = bool(self.resolve(spec))
        return self._conditions[name]

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self.resources[name].ref
        raise TemplateError(f"!Ref {name}: no such parameter, or the resource is not created yet")

    def get_att(self, logical: str, attribute: str) -> Any:
        found = self.resources.get(logical)
        if found is None or attribute not in found.attrs:
            raise TemplateError(f"!GetAtt {logical}.{attribute} is unknown here")
        return found.attrs[attribute]

    def resolve(self, value: Any) -> Any:
        """The value with every intrinsic function evaluated (``AWS::NoValue`` items dropped)."""
        if isinstance(value, list):
            return [v for v in (self.resolve(item) for item in value) if v is not None]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self._function(key[4:], arg)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not None}

    def _function(self, name: str, arg: Any) -> Any:
        if name == "GetAtt":
            logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.get_att(logical, attribute)
        if name == "Sub":
            text, extra = (arg[0], self.resolve(arg[1])) if isinstance(arg, list) else (arg, {})
            return _SUB.sub(lambda m: self._sub_part(m.group(1), extra), text)
        if name == "Join":
            separator, items = arg
            return separator.join(str(v) for v in _flatten(self.resolve(items)))
        if name == "If":
            condition, yes, no = arg
            return self.resolve(yes if self.condition(condition) else no)
        if name == "Equals":
            left, right = self.resolve(arg)
            return left == right
        if name == "Not":
            return not self.resolve(arg[0])
        if name == "And":
            return all(self.resolve(arg))
        if name == "Or":
            return any(self.resolve(arg))
        if name == "Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        raise TemplateError(f"Fn::{name} is not resolved by this stand-in")

    def _sub_part(self, name: str, extra: Mapping[str, Any]) -> str:
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in extra:
            return str(extra[name])
        if "." in name and not name.startswith("AWS::"):
            logical, attribute = name.split(".", 1)
            return str(self.get_att(logical, attribute))
        return str(self.ref(name))


def _flatten(items: Any) -> list[Any]:
    out: list[Any] = []
    for item in items if isinstance(items, list) else [items]:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


# ---------------------------------------------------------------- what the harness reads


@dataclass(frozen=True)
class Rule:
    """An ``EventBridgeRule`` event of a function: where the harness creates it."""

    name: str
    """``<Function><Event>``, the logical id SAM gives the rule."""
    function: str
    """The target function's logical id."""
    bus: str
    """The bus name (``default`` when the event names none)."""
    pattern: dict[str, Any]
    input_transformer: dict[str, Any] | None = None


@dataclass(frozen=True)
class StreamConsumer:
    """A function fed by a DynamoDB stream (a SAM ``DynamoDB`` event or an event source mapping)."""

    function: str
    table: str
    """The table's logical id."""
    batch_size: int
    filters: list[dict[str, Any]]
    """Lambda event filter patterns (a record passes if any matches; none: all pass)."""
    reports_failures: bool
    """``FunctionResponseTypes: [ReportBatchItemFailures]``."""


@dataclass(frozen=True)
class Function:
    """A function of the template: its handler and environment, resolved."""

    logical: str
    name: str
    handler: str | None
    environment: dict[str, str]
    destinations: dict[str, str]
    """``OnSuccess``/``OnFailure`` -> destination ARN (or type), from ``EventInvokeConfig``."""
    maximum_retry_attempts: int | None


class Template:
    """A template and the physical ids of its resources (see :mod:`stack`'s docstring)."""

    def __init__(self, path: Path, stack: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.data = load(path)
        self.stack = stack
        self.resources_spec: dict[str, dict[str, Any]] = self.data.get("Resources") or {}
        self.intrinsics = Intrinsics(self.data, stack, parameters)
        self._globals = ((self.data.get("Globals") or {}).get("Function")) or {}
        for logical, spec in self.resources_spec.items():
            if not self._included(spec):
                continue
            props = self._safe_props(spec)
            self.resources[logical] = physical(stack, logical, spec["Type"], props)
        for logical, spec in self.resources_spec.items():
            for event, _ in self._events(spec, "EventBridgeRule"):
                name = f"{logical}{event}"
                self.resources[name] = Physical(
                    name, {"Arn": arn("events", f"rule/{name}")}
                )  # SAM's generated rule, named in DLQ policies

    @property
    def resources(self) -> dict[str, Physical]:
        return self.intrinsics.resources

    def _included(self, spec: Mapping[str, Any]) -> bool:
        condition = spec.get("Condition")
        return condition is None or self.intrinsics.condition(condition)

    def _safe_props(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The properties that name a resource, resolved where they can be already."""
        props = spec.get("Properties") or {}
        out: dict[str, Any] = {}
        for key in (
            "FunctionName", "RoleName", "TableName", "Name", "BucketName", "QueueName",
            "ClusterName", "Family", "RepositoryName", "LogGroupName", "TopicName",
        ):  # fmt: skip
            if key in props:
                try:
                    out[key] = self.intrinsics.resolve(props[key])
                except TemplateError:
                    continue  # it names itself after another resource: a generated name will do
        return out

    def of_type(self, *kinds: str) -> list[str]:
        return [
            logical
            for logical, spec in self.resources_spec.items()
            if spec.get("Type") in kinds and self._included(spec)
        ]

    def props(self, logical: str) -> dict[str, Any]:
        """The resource's properties, every intrinsic resolved."""
        return self.intrinsics.resolve(self.resources_spec[logical].get("Properties") or {})

    @staticmethod
    def _events(spec: Mapping[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
        events = (spec.get("Properties") or {}).get("Events") or {}
        return [
            (name, e.get("Properties") or {}) for name, e in events.items() if e["Type"] == kind
        ]

    def rules(self) -> list[Rule]:
        """Every ``EventBridgeRule`` event of every function."""
        found = []
        for logical in self.of_type("AWS::Serverless::Function"):
            for event, props in self._events(self.resources_spec[logical], "EventBridgeRule"):
                props = self.intrinsics.resolve(props)
                found.append(
                    Rule(
                        f"{logical}{event}",
                        logical,
                        props.get("EventBusName") or "default",
                        props["Pattern"],
                        props.get("InputTransformer"),
                    )
                )
        return found

    def stream_consumers(self) -> list[StreamConsumer]:
        """Functions fed by a table's stream: event source mappings and SAM DynamoDB events."""
        streams = {
            self.resources[t].attrs.get("StreamArn", f"stream:{t}"): t
            for t in self.of_type("AWS::DynamoDB::Table")
        }
        by_name = {self.resources[f].ref: f for f in self.of_type(*_FUNCTIONS)}
        found = []
        for logical in self.of_type("AWS::Lambda::EventSourceMapping"):
            props = self.props(logical)
            table = streams.get(props.get("EventSourceArn"))
            function = by_name.get(props.get("FunctionName"))
            if table and function:
                found.append(self._consumer(function, table, props))
        for logical in self.of_type("AWS::Serverless::Function"):
            for _, props in self._events(self.resources_spec[logical], "DynamoDB"):
                props = self.intrinsics.resolve(props)
                table = streams.get(props.get("Stream"))
                if table:
                    found.append(self._consumer(logical, table, props))
        return found

    @staticmethod
    def _consumer(function: str, table: str, props: Mapping[str, Any]) -> StreamConsumer:
        filters = [
            json.loads(f["Pattern"]) for f in (props.get("FilterCriteria") or {}).get("Filters", [])
        ]
        return StreamConsumer(
            function,
            table,
            int(props.get("BatchSize", 100)),
            filters,
            "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
        )

    def function(self, logical: str) -> Function:
        """A function's handler, environment (Globals first) and async invoke config."""
        spec = self.resources_spec[logical]
        raw = spec.get("Properties") or {}
        handler = raw.get("Handler") or self._globals.get("Handler")
        variables: dict[str, Any] = {}
        for source in (self._globals, raw):
            variables.update(((source.get("Environment") or {}).get("Variables")) or {})
        environment = {k: _text(self.intrinsics.resolve(v)) for k, v in variables.items()}
        config = raw.get("EventInvokeConfig") or {}
        for logical_config in self.of_type("AWS::Lambda::EventInvokeConfig"):
            props = self.resources_spec[logical_config].get("Properties") or {}
            if props.get("FunctionName") == {"Ref": logical}:
                config = props
        destinations = {}
        for outcome in ("OnSuccess", "OnFailure"):
            target = (config.get("DestinationConfig") or {}).get(outcome) or {}
            if target:
                destination = target.get("Destination")
                destinations[outcome] = (
                    str(self.intrinsics.resolve(destination)) if destination else target["Type"]
                )
        retries = config.get("MaximumRetryAttempts")
        return Function(
            logical,
            str(self.resources[logical].ref),
            handler,
            environment,
            destinations,
            None if retries is None else int(retries),
        )

    def functions(self) -> list[Function]:
        return [self.function(logical) for logical in self.of_type(*_FUNCTIONS)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------- creating on moto


def deploy(template: Template, clients: Any) -> None:
    """Create the template's resources that moto keeps, and record their physical ids.

    ``clients`` gives boto3 clients by attribute (``.kms``, ``.s3``...): the harness's own.
    Keys first (the table's encryption names one), tables last (their stream ARN is
    known only once they exist).
    """
    for logical in template.of_type("AWS::KMS::Key"):
        props = template.props(logical)
        key = clients.kms.create_key(Description=props.get("Description", logical))["KeyMetadata"]
        template.resources[logical] = Physical(
            key["KeyId"], {"Arn": key["Arn"], "KeyId": key["KeyId"]}
        )
    for logical in template.of_type("AWS::KMS::Alias"):
        props = template.props(logical)
        clients.kms.create_alias(AliasName=props["AliasName"], TargetKeyId=props["TargetKeyId"])
    for logical in template.of_type("AWS::S3::Bucket"):
        clients.s3.create_bucket(Bucket=template.resources[logical].ref)
    for logical in template.of_type("AWS::SQS::Queue"):
        clients.sqs.create_queue(QueueName=template.resources[logical].attrs["QueueName"])
    for logical in template.of_type("AWS::Events::EventBus"):
        clients.events.create_event_bus(Name=template.resources[logical].ref)
    for logical in template.of_type("AWS::Scheduler::ScheduleGroup"):
        clients.scheduler.create_schedule_group(Name=template.resources[logical].ref)
    for logical in template.of_type("AWS::Logs::LogGroup"):
        clients.logs.create_log_group(logGroupName=template.resources[logical].ref)
    for logical in template.of_type("AWS::ECS::Cluster"):
        _cluster(template, logical, clients)
    for logical in template.of_type("AWS::ECS::TaskDefinition"):
        _task_definition(template, logical, clients)
    for logical in template.of_type("AWS::DynamoDB::Table"):
        _table(template, logical, clients)


def _cluster(template: Template, logical: str, clients: Any) -> None:
    props = template.props(logical)
    options: dict[str, Any] = {"clusterName": template.resources[logical].ref}
    if props.get("CapacityProviders"):
        options["capacityProviders"] = props["CapacityProviders"]
    if props.get("DefaultCapacityProviderStrategy"):
        options["defaultCapacityProviderStrategy"] = [
            {
                "capacityProvider": item["CapacityProvider"],
                "weight": int(item.get("Weight", 0)),
                "base": int(item.get("Base", 0)),
            }
            for item in props["DefaultCapacityProviderStrategy"]
        ]
    clients.ecs.create_cluster(**options)


def _task_definition(template: Template, logical: str, clients: Any) -> None:
    props = template.props(logical)
    containers = [
        {
            "name": c["Name"],
            "image": c.get("Image", "scratch"),
            "essential": c.get("Essential", True),
            "environment": [
                {"name": e["Name"], "value": str(e["Value"])} for e in c.get("Environment", [])
            ],
            **({"cpu": int(c["Cpu"])} if "Cpu" in c else {}),
            # moto sums the containers' memory to place a task; Fargate gives a container
            # without its own the task's.
            **({"memory": int(c.get("Memory") or props.get("Memory") or 512)}),
            **({"command": c["Command"]} if "Command" in c else {}),
            **(
                {
                    "logConfiguration": {
                        "logDriver": c["LogConfiguration"]["LogDriver"],
                        "options": c["LogConfiguration"].get("Options", {}),
                    }
                }
                if "LogConfiguration" in c
                else {}
            ),
        }
        for c in props.get("ContainerDefinitions", [])
    ]
    options = {
        "networkMode": props.get("NetworkMode"),
        "requiresCompatibilities": props.get("RequiresCompatibilities"),
        "cpu": props.get("Cpu"),
        "memory": props.get("Memory"),
        "taskRoleArn": props.get("TaskRoleArn"),
        "executionRoleArn": props.get("ExecutionRoleArn"),
    }
    reply = clients.ecs.register_task_definition(
        family=template.resources[logical].attrs["Family"],
        containerDefinitions=containers,
        **{k: v for k, v in options.items() if v is not None},
    )
    found = reply["taskDefinition"]
    template.resources[logical] = Physical(found["taskDefinitionArn"], {"Family": found["family"]})


def _table(template: Template, logical: str, clients: Any) -> None:
    """Bunsui's table as :func:`engine.aws.table.create_table` makes it from this template
    (keys, indexes, stream, billing, TTL); another template's table from its properties
    (CloudFormation's names mapped to the API's). Point-in-time recovery as the template says."""
    props = template.props(logical)
    name = template.resources[logical].ref
    if logical == "Table" and table.template_definition(template.path) is not None:
        table.create_table(clients.dynamodb, name, template.path)
    else:
        _generic_table(props, name, clients)
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr:
        clients.dynamodb.update_continuous_backups(
            TableName=name, PointInTimeRecoverySpecification=pitr
        )
    found = clients.dynamodb.describe_table(TableName=name)["Table"]
    attrs = {"Arn": found["TableArn"]}
    if found.get("LatestStreamArn"):
        attrs["StreamArn"] = found["LatestStreamArn"]
    template.resources[logical] = Physical(name, attrs)


def _generic_table(props: Mapping[str, Any], name: str, clients: Any) -> None:
    options: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if props.get("GlobalSecondaryIndexes"):
        options["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if props.get("StreamSpecification"):
        options["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    clients.dynamodb.create_table(**options)
    ttl = props.get("TimeToLiveSpecification")
    if ttl:
        clients.dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
