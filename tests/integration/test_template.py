"""template.yaml, read as data: what the stack promises that no linter checks.

cfn-lint and `sam validate` (``make sam-validate``) check that the template is
well formed; these tests check that it is Bunsui's: the rules route exactly the
events of the AWS plan to the reducer and only Bunsui's own work, every rule
target has a retry policy and a dead-letter queue it may write to, the table is
the one the store expects, no policy grants everything, and every function's
handler is a module of src/handlers that defines ``handler``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from cfnlint.decode import decode_str

from engine.aws.service import SWEEP_GRACE_SECONDS
from tests.conftest import ROOT

TEMPLATE_PATH = ROOT / "template.yaml"
SRC = ROOT / "src"

# The plan's events: Bunsui's own detail-types the reducer handles (not Session Completed).
BUNSUI_DETAIL_TYPES = [
    "Session Started",
    "Job Retry Due",
    "Job Timed Out",
    "Session Timed Out",
    "Session Cancel Requested",
    "Session Pause Requested",
    "Session Resume Requested",
    "Session Retry Requested",
]

# Each rule's pattern, by source, as the plan gives it (docs/architecture.md, issue 5).
RULE_PATTERNS: dict[str, dict[str, Any]] = {
    "bunsui": {"source": ["bunsui"], "detail-type": BUNSUI_DETAIL_TYPES},
    "lambda": {
        "source": ["lambda"],
        "detail-type": [
            "Lambda Function Invocation Result - Success",
            "Lambda Function Invocation Result - Failure",
        ],
        "detail": {"requestPayload": {"bunsui": {"dispatch_id": [{"exists": True}]}}},
    },
    "aws.ecs": {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Task State Change"],
        "detail": {"lastStatus": ["STOPPED"], "startedBy": [{"prefix": "bunsui-"}]},
    },
    "aws.states": {
        "source": ["aws.states"],
        "detail-type": ["Step Functions Execution Status Change"],
        "detail": {
            "status": ["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"],
            "name": [{"prefix": "bunsui-"}],
        },
    },
    "aws.glue": {
        "source": ["aws.glue"],
        "detail-type": ["Glue Job State Change"],
        "detail": {"state": ["SUCCEEDED", "FAILED", "TIMEOUT", "STOPPED", "ERROR"]},
    },
    "aws.batch": {
        "source": ["aws.batch"],
        "detail-type": ["Batch Job State Change"],
        "detail": {"status": ["SUCCEEDED", "FAILED"], "jobName": [{"prefix": "bunsui-"}]},
    },
    "aws.emr": {
        "source": ["aws.emr"],
        "detail-type": ["EMR Step Status Change"],
        "detail": {"state": ["COMPLETED", "FAILED", "CANCELLED"], "name": [{"prefix": "bunsui:"}]},
    },
}

API_ROUTES = {
    ("POST", "/pipelines"),
    ("GET", "/pipelines"),
    ("GET", "/pipelines/{name}"),
    ("GET", "/pipelines/{name}/versions"),
    ("DELETE", "/pipelines/{name}"),
    ("POST", "/sessions"),
    ("GET", "/sessions"),
    ("GET", "/sessions/{id}"),
    ("GET", "/sessions/{id}/runs"),
    ("GET", "/sessions/{id}/runs/{key}"),
    ("GET", "/sessions/{id}/history"),
    ("POST", "/sessions/{id}/cancel"),
    ("POST", "/sessions/{id}/pause"),
    ("POST", "/sessions/{id}/resume"),
    ("POST", "/sessions/{id}/retry"),
    ("POST", "/schedules"),
    ("GET", "/schedules"),
    ("DELETE", "/schedules/{name}"),
}

# Actions IAM authorizes on no resource (Resource "*" is the only way to grant them).
NO_RESOURCE_LEVEL = {
    "ecs:ListTasks",
    "ecs:DescribeTaskDefinition",
    "batch:ListJobs",
    "scheduler:ListSchedules",
}

# Outputs the CLI and the docs read by name.
OUTPUTS = {
    "ApiEndpoint",
    "TableName",
    "BusName",
    "BusArn",
    "DestinationBusArn",
    "OutputBucketName",
    "ScheduleGroupName",
    "KeyArn",
    "ReducerDeadLetterQueueUrl",
    "StackRegion",
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode_str(TEMPLATE_PATH.read_text(encoding="utf-8"))
    assert not problems, problems
    return _plain(decoded)


@pytest.fixture(scope="module")
def resources(template) -> dict[str, Any]:
    return template["Resources"]


def _of_type(resources: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v.get("Properties") or {} for k, v in resources.items() if v["Type"] == kind}


def _functions(resources) -> dict[str, dict[str, Any]]:
    return _of_type(resources, "AWS::Serverless::Function")


def _rules(resources) -> list[tuple[str, str, dict[str, Any]]]:
    """(rule logical id as SAM names it, source, event properties) of every EventBridgeRule."""
    found = []
    for function, props in _functions(resources).items():
        for event, spec in (props.get("Events") or {}).items():
            if spec["Type"] == "EventBridgeRule":
                properties = spec["Properties"]
                (source,) = properties["Pattern"]["source"]
                found.append((f"{function}{event}", source, properties))
    return found


def _get_att(value: Any) -> tuple[str, str]:
    """``!GetAtt A.B`` in either decoded form, as (A, B)."""
    arg = value["Fn::GetAtt"]
    logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
    return logical, attribute


def _has_intrinsic(value: Any) -> bool:
    if isinstance(value, dict):
        return any(k == "Ref" or k.startswith("Fn::") for k in value) or any(
            _has_intrinsic(v) for v in value.values()
        )
    if isinstance(value, list):
        return any(_has_intrinsic(v) for v in value)
    return False


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- functions


def _defines_handler(path) -> bool:
    """Whether the module binds ``handler`` at top level (def, assignment or import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "handler":
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "handler" for t in targets):
                return True
        if isinstance(node, ast.ImportFrom) and any(
            (alias.asname or alias.name) == "handler" for alias in node.names
        ):
            return True
    return False


def _handlers() -> list[tuple[str, str]]:
    decoded, _ = decode_str(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return sorted(
        (str(logical), str(spec["Properties"]["Handler"]))
        for logical, spec in decoded["Resources"].items()
        if spec["Type"] == "AWS::Serverless::Function"
    )


@pytest.mark.parametrize(("function", "handler"), _handlers())
def test_every_handler_is_a_module_of_src_handlers_defining_it(function, handler):
    module, _, attribute = handler.rpartition(".")
    assert module.startswith("handlers."), f"{function}: {handler} is not in src/handlers"
    base = SRC.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    assert path.exists(), f"{function}: {handler} names {module}, but there is no {path}"
    assert attribute == "handler"
    assert _defines_handler(path), f"{function}: {path} defines no top-level `handler`"


def test_the_engine_functions_are_all_there(resources):
    handlers = {p["Handler"] for p in _functions(resources).values()}
    assert {
        "handlers.api.handler",
        "handlers.reducer.handler",
        "handlers.history.handler",
        "handlers.sweeper.handler",
        "handlers.start.handler",
        "handlers.plan.handler",
    } <= handlers


def test_every_function_logs_json_to_its_own_group(template, resources):
    assert template["Globals"]["Function"]["LoggingConfig"]["LogFormat"] == "JSON"
    groups = [p["LoggingConfig"]["LogGroup"]["Ref"] for p in _functions(resources).values()]
    assert len(groups) == len(set(groups))
    for group in groups:
        assert resources[group]["Type"] == "AWS::Logs::LogGroup"
        assert "RetentionInDays" in resources[group]["Properties"]


def test_functions_run_python_313_on_arm_with_tracing_and_powertools(template):
    function = template["Globals"]["Function"]
    assert function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["arm64"]
    assert function["Tracing"] == "Active"
    variables = function["Environment"]["Variables"]
    assert variables["POWERTOOLS_SERVICE_NAME"] == "bunsui"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "Bunsui"


def test_functions_get_every_setting_the_engine_reads(template, resources):
    read = set(re.findall(r'"(BUNSUI_[A-Z_]+)"', (SRC / "engine/aws/settings.py").read_text()))
    assert "BUNSUI_TABLE" in read
    common = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for logical, props in _functions(resources).items():
        own = set(((props.get("Environment") or {}).get("Variables")) or {})
        given = {name for name in common | own if name.startswith("BUNSUI_")}
        # StartFunction alone lacks its own ARN: a function cannot refer to itself.
        expected = read - {"BUNSUI_START_FUNCTION_ARN"} if logical == "StartFunction" else read
        if logical != "PlanFunction":
            assert given == expected, logical


# ---------------------------------------------------------------- rules


def test_every_source_of_the_plan_has_exactly_one_rule(resources):
    sources = [source for _, source, _ in _rules(resources)]
    assert sorted(sources) == sorted(RULE_PATTERNS)


@pytest.mark.parametrize("source", sorted(RULE_PATTERNS))
def test_rule_pattern_is_the_plans(resources, source):
    (properties,) = [p for _, s, p in _rules(resources) if s == source]
    assert properties["Pattern"] == RULE_PATTERNS[source]


def test_bunsui_events_come_from_the_stack_bus_and_service_events_from_the_default_one(resources):
    for name, source, properties in _rules(resources):
        if source == "bunsui":
            assert properties["EventBusName"] == {"Ref": "Bus"}, name
        else:
            assert "EventBusName" not in properties, name  # AWS services use the default bus
    assert resources["Bus"]["Type"] == "AWS::Events::EventBus"


def test_every_rule_but_glues_keeps_to_bunsuis_own_work(resources):
    for name, source, properties in _rules(resources):
        detail = properties["Pattern"].get("detail")
        if source in ("bunsui", "aws.glue"):
            continue  # Bunsui's bus carries only Bunsui's events; Glue's cannot be told apart
        # A name prefix, a payload key: something only Bunsui's own dispatches carry.
        assert detail and "bunsui" in json.dumps(detail), f"{name} routes others' work here"


def test_session_completed_is_not_routed_to_the_reducer(resources):
    for _, _, properties in _rules(resources):
        assert "Session Completed" not in properties["Pattern"].get("detail-type", [])


def test_every_rule_target_retries_then_dead_letters_to_a_queue_it_may_write(resources):
    policies = _of_type(resources, "AWS::SQS::QueuePolicy")
    for name, _, properties in _rules(resources):
        retry = properties["RetryPolicy"]
        assert int(retry["MaximumRetryAttempts"]) > 0, name
        assert int(retry["MaximumEventAgeInSeconds"]) >= 3600, name
        queue, attribute = _get_att(properties["DeadLetterConfig"]["Arn"])
        assert attribute == "Arn"
        assert resources[queue]["Type"] == "AWS::SQS::Queue"
        allowed = [
            statement
            for policy in policies.values()
            if {"Ref": queue} in policy["Queues"]
            for statement in policy["PolicyDocument"]["Statement"]
            if statement["Effect"] == "Allow"
            and statement["Principal"] == {"Service": "events.amazonaws.com"}
            and "sqs:SendMessage" in _as_list(statement["Action"])
        ]
        sources = [
            _get_att(arn)
            for statement in allowed
            for arn in _as_list(statement["Condition"]["ArnEquals"]["aws:SourceArn"])
        ]
        assert (name, "Arn") in sources, f"{queue}'s policy does not let rule {name} send to it"


def test_dead_letter_queues_are_encrypted(resources):
    for name, props in _of_type(resources, "AWS::SQS::Queue").items():
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, name


def test_reducer_invocations_that_fail_every_retry_are_dead_lettered(resources):
    config = _functions(resources)["ReducerFunction"]["EventInvokeConfig"]
    target = config["DestinationConfig"]["OnFailure"]
    assert target["Type"] == "SQS"
    assert _get_att(target["Destination"]) == ("ReducerDeadLetterQueue", "Arn")


def test_a_reducer_ends_before_the_sweeper_may_take_over_its_work(resources):
    # A fan-out's first expansion writes its items unconditionally: only a sweeper
    # expanding it again could write them too, and it waits this long (engine.reducer).
    timeout = _functions(resources)["ReducerFunction"]["Timeout"]
    assert timeout <= SWEEP_GRACE_SECONDS


# ---------------------------------------------------------------- table and history stream


def test_table_is_the_stores(resources):
    table = resources["Table"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {
        name: "S" for name in ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk")
    }
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"ByPipeline", "ByStatus"}
    for name, prefix in (("ByPipeline", "gsi1"), ("ByStatus", "gsi2")):
        assert indexes[name]["KeySchema"] == [
            {"AttributeName": f"{prefix}pk", "KeyType": "HASH"},
            {"AttributeName": f"{prefix}sk", "KeyType": "RANGE"},
        ]
        # Never the counters: a counter update would then write the index on every job.
        assert indexes[name]["Projection"] == {
            "ProjectionType": "INCLUDE",
            "NonKeyAttributes": [
                "pipeline",
                "version",
                "status",
                "created_at",
                "ended_at",
                "reason",
            ],
        }


def test_table_is_encrypted_recoverable_expiring_and_streamed(resources):
    table = resources["Table"]["Properties"]
    sse = table["SSESpecification"]
    assert sse["SSEEnabled"] is True
    assert sse["SSEType"] == "KMS"
    assert sse["KMSMasterKeyId"] == {"Ref": "Key"}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert resources["Key"]["Properties"]["EnableKeyRotation"] is True


def test_table_and_its_key_outlive_the_stack(resources):
    for name in ("Table", "Key"):
        assert resources[name]["DeletionPolicy"] == "Retain", name
        assert resources[name]["UpdateReplacePolicy"] == "Retain", name


def test_table_shape_is_literal_for_the_flow_test(resources):
    table = resources["Table"]["Properties"]
    for key in (
        "KeySchema",
        "AttributeDefinitions",
        "GlobalSecondaryIndexes",
        "StreamSpecification",
        "BillingMode",
    ):
        assert not _has_intrinsic(table[key]), key


def _matches(pattern: Any, value: Any) -> bool:
    """Lambda event filtering for the shapes used here: nested objects, literals, prefixes."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _matches(v, value[k]) for k, v in pattern.items()
        )
    return any(
        value.startswith(p["prefix"]) if isinstance(p, dict) else value == p for p in pattern
    )


@pytest.mark.parametrize(
    ("sk", "projected"),
    [
        ("SESSION", True),
        ("RUN#train#-", True),
        ("RUN#fan#00000003", True),
        ("H#2026-01-01T00:00:00Z#abc", False),
        ("SLOT#*", False),
        ("PART#fan#i000002", False),
        ("PART#join#e000000", False),
        ("SECRETS", False),
        ("HEAD", False),
        ("V#00000001", False),
    ],
)
def test_history_stream_passes_run_and_session_items_only(resources, sk, projected):
    (mapping,) = _of_type(resources, "AWS::Lambda::EventSourceMapping").values()
    patterns = [json.loads(f["Pattern"]) for f in mapping["FilterCriteria"]["Filters"]]
    record = {
        "eventName": "MODIFY",
        "dynamodb": {"Keys": {"pk": {"S": "SESSION#s1"}, "sk": {"S": sk}}},
    }
    assert any(_matches(p, record) for p in patterns) is projected


def test_history_stream_feeds_the_history_function_and_dead_letters_failures(resources):
    (mapping,) = _of_type(resources, "AWS::Lambda::EventSourceMapping").values()
    assert mapping["FunctionName"] == {"Ref": "HistoryFunction"}
    assert _get_att(mapping["EventSourceArn"]) == ("Table", "StreamArn")
    assert mapping["StartingPosition"] == "LATEST"
    assert mapping["BatchSize"] == 100
    assert mapping["BisectBatchOnFunctionError"] is True
    assert int(mapping["MaximumRetryAttempts"]) >= 0
    destination = mapping["DestinationConfig"]["OnFailure"]["Destination"]
    assert _get_att(destination) == ("HistoryDeadLetterQueue", "Arn")


# ---------------------------------------------------------------- IAM


def _identity_statements(resources) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every statement of a policy attached to a principal (roles, managed and inline)."""
    for logical, spec in resources.items():
        props = spec.get("Properties") or {}
        documents: list[Any] = []
        if spec["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in props.get("Policies") or []]
        elif spec["Type"] in (
            "AWS::IAM::ManagedPolicy",
            "AWS::IAM::RolePolicy",
            "AWS::IAM::Policy",
        ):
            documents = [props["PolicyDocument"]]
        elif spec["Type"] == "AWS::Serverless::Function":
            documents = [p for p in props.get("Policies") or [] if "Statement" in p]
        for document in documents:
            for statement in document["Statement"]:
                yield logical, statement


def _all_statements(value: Any) -> Iterator[dict[str, Any]]:
    """Every policy statement anywhere in the template (resource policies included)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "Statement" and isinstance(item, list):
                yield from (s for s in item if isinstance(s, dict))
            else:
                yield from _all_statements(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_statements(item)


def test_no_statement_allows_every_action(template):
    statements = list(_all_statements(template["Resources"]))
    assert len(statements) > 20
    for statement in statements:
        assert "*" not in _as_list(statement.get("Action", [])), statement
        assert "NotAction" not in statement, statement


def test_a_wildcard_resource_only_for_actions_without_resource_permissions(resources):
    for logical, statement in _identity_statements(resources):
        if statement["Effect"] == "Allow" and "*" in _as_list(statement["Resource"]):
            actions = set(_as_list(statement["Action"]))
            assert actions <= NO_RESOURCE_LEVEL, f"{logical}: {sorted(actions)} on *"


def test_every_pass_role_names_the_service_it_passes_to(resources):
    passes = [
        (logical, s)
        for logical, s in _identity_statements(resources)
        if "iam:PassRole" in _as_list(s["Action"])
    ]
    assert passes
    for logical, statement in passes:
        assert statement["Condition"]["StringEquals"]["iam:PassedToService"], logical


def test_scheduler_role_is_for_this_accounts_scheduler_only(resources):
    trust = resources["SchedulerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    (statement,) = trust
    assert statement["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


# ---------------------------------------------------------------- API, alarms, outputs


def test_api_is_iam_signed_with_the_plans_routes(resources):
    auth = resources["Api"]["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == "AWS_IAM"
    assert auth["EnableIamAuthorizer"] is True
    events = _functions(resources)["ApiFunction"]["Events"].values()
    routes = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events}
    assert routes == API_ROUTES
    assert all(
        e["Type"] == "HttpApi" and e["Properties"]["ApiId"] == {"Ref": "Api"} for e in events
    )


def test_alarms_watch_reducer_errors_dead_letters_failed_sessions_and_api_faults(resources):
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm").values()
    watched = set()
    for alarm in alarms:
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        watched.add((alarm["Namespace"], alarm["MetricName"], json.dumps(dimensions)))
    queue_depth = ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    expected = [
        ("AWS/Lambda", "Errors", {"FunctionName": {"Ref": "ReducerFunction"}}),
        (*queue_depth, {"QueueName": {"Fn::GetAtt": ["ReducerDeadLetterQueue", "QueueName"]}}),
        (*queue_depth, {"QueueName": {"Fn::GetAtt": ["HistoryDeadLetterQueue", "QueueName"]}}),
        ("Bunsui", "SessionsFailed", {"service": "bunsui"}),
        ("AWS/ApiGateway", "5xx", {"ApiId": {"Ref": "Api"}}),
    ]
    assert {(n, m, json.dumps(d)) for n, m, d in expected} <= watched


def test_alarm_email_is_optional(template, resources):
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""


def test_outputs_the_cli_reads(template):
    assert set(template["Outputs"]) >= OUTPUTS
    destination = template["Outputs"]["DestinationBusArn"]["Value"]["Fn::Sub"]
    assert destination.endswith(":event-bus/default")
