"""The stack's security, read from its templates (template.yaml and the ML example's).

``make test`` runs checkov on both templates; these tests hold what a scanner
cannot: that no policy statement allows every action of a service, that each
``Resource: "*"`` is one AWS leaves no narrower choice for and says why in a
comment, that the table and the logs are encrypted with the stack's own key
and the table is recoverable, that every API route requires IAM (SigV4) auth
and nothing else exposes a function, and that every scanner finding skipped in
template.yaml is one of those reviewed below, each with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str

from tests.conftest import EXAMPLES, ROOT

TEMPLATES = [ROOT / "template.yaml", EXAMPLES / "template.yml"]

NO_RESOURCE_LEVEL = {
    "ecs:ListTasks",
    "ecs:DescribeTaskDefinition",
    "batch:ListJobs",
    "scheduler:ListSchedules",
    "cloudwatch:PutMetricData",
}
"""Actions IAM authorizes on no resource: ``Resource: "*"`` is the only way to grant them."""

FUNCTIONS = [
    "ApiFunction",
    "ReducerFunction",
    "HistoryFunction",
    "SweeperFunction",
    "StartFunction",
    "PlanFunction",
]
ACCEPTED_SKIPS = {
    *((f, c) for f in FUNCTIONS for c in ("CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117")),
    *((f, "CKV_AWS_173") for f in FUNCTIONS),
    ("ReducerDeadLetterQueue", "CKV_AWS_27"),
    ("HistoryDeadLetterQueue", "CKV_AWS_27"),
    ("OutputBucket", "CKV_AWS_18"),
}
"""The scanner findings template.yaml skips, each reviewed (the reasons are in the template):
function concurrency (115), dead-letter queue (116), VPC (117), environment encrypted with a
customer key (173), SQS encrypted with a customer key (27), S3 access logging (18)."""

SKIP = re.compile(r"#\s*checkov:skip=(?P<check>[A-Z0-9_]+):(?P<reason>.*)$")
STAR_RESOURCE = re.compile(r"""^\s*(?:Resource:\s*|-\s*)["']\*["']\s*(?:#.*)?$""")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


def load(path: Path) -> dict[str, Any]:
    decoded, problems = decode_str(path.read_text(encoding="utf-8"))
    assert not problems, problems
    return _plain(decoded)


@pytest.fixture(scope="module", params=TEMPLATES, ids=lambda p: p.name)
def template(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    return request.param, load(request.param)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(resources: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(resource, its type, statement) for every policy statement, resource policies and
    key policies included, and the conditional ones (``!If``) on both branches."""

    def walk(value: Any) -> Iterator[dict[str, Any]]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "Statement":
                    for statement in _as_list(item):
                        yield from _statements_in(statement)
                else:
                    yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    for logical, spec in resources.items():
        for statement in walk(spec.get("Properties") or {}):
            yield logical, spec["Type"], statement


def _statements_in(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict) and "Fn::If" in value:
        for branch in value["Fn::If"][1:]:
            yield from _statements_in(branch)
    elif isinstance(value, dict) and "Effect" in value:
        yield value


def _is_account_root(principal: Any) -> bool:
    aws = principal.get("AWS") if isinstance(principal, dict) else None
    text = aws.get("Fn::Sub", "") if isinstance(aws, dict) else str(aws or "")
    return text.endswith(":root")


# ---------------------------------------------------------------- IAM


def test_no_statement_allows_every_action_of_a_service(template):
    path, data = template
    found = list(statements(data["Resources"]))
    assert len(found) >= 5
    for logical, kind, statement in found:
        assert "NotAction" not in statement and "NotResource" not in statement, logical
        if statement["Effect"] != "Allow":
            continue  # a Deny (TLS only) is the wider the safer
        for action in _as_list(statement["Action"]):
            assert action != "*", f"{path.name}: {logical} allows every action"
            if action.endswith(":*"):
                # The one exception: the key policy's delegation to the account, which AWS
                # writes itself and which grants nothing until an IAM policy does.
                assert kind == "AWS::KMS::Key" and _is_account_root(statement["Principal"]), (
                    f"{path.name}: {logical} allows {action}"
                )


def test_a_wildcard_resource_only_where_aws_allows_nothing_narrower(template):
    path, data = template
    for logical, kind, statement in statements(data["Resources"]):
        if statement["Effect"] != "Allow" or "*" not in _as_list(statement.get("Resource", [])):
            continue
        if kind == "AWS::KMS::Key":
            continue  # in a key policy "*" means the key itself; nothing else is accepted
        actions = set(_as_list(statement["Action"]))
        assert actions <= NO_RESOURCE_LEVEL, f"{path.name}: {logical}: {sorted(actions)} on *"
        if actions & {"ecs:ListTasks", "cloudwatch:PutMetricData"}:
            assert statement.get("Condition"), f"{logical}: {sorted(actions)} unconditioned"


def _comment_above(lines: list[str], index: int) -> list[str]:
    """The comment lines right above line ``index``."""
    found = []
    while index > 0 and lines[index - 1].strip().startswith("#"):
        index -= 1
        found.append(lines[index])
    return found


def _start_of(lines: list[str], index: int, indent: int) -> int:
    """The line that opens the block holding line ``index``: the nearest line above with
    less indentation (a statement's ``- `` or a resource's name)."""
    while index > 0:
        index -= 1
        text = lines[index]
        code = text.strip() and not text.strip().startswith("#")
        if code and len(text) - len(text.lstrip(" ")) < indent:
            return index
    return 0


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_wildcard_resource_says_why_in_a_comment(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    stars = [i for i, line in enumerate(lines) if STAR_RESOURCE.match(line)]
    assert stars
    for index in stars:
        line = lines[index]
        if "#" in line:
            continue  # said on the line itself
        indent = len(line) - len(line.lstrip(" "))
        statement = _start_of(lines, index, indent)
        if _comment_above(lines, statement):
            continue
        resource = _start_of(lines, statement, 3)
        reasons = " ".join(_comment_above(lines, resource))
        assert 'Resource "*"' in reasons, f"{path.name}:{index + 1}: a '*' resource, no reason"


# ---------------------------------------------------------------- encryption and recovery


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load(ROOT / "template.yaml")["Resources"]


def test_the_table_is_encrypted_with_the_stacks_rotated_key_and_recoverable(stack):
    table = stack["Table"]
    properties = table["Properties"]
    assert properties["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Ref": "Key"},
    }
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert stack["Key"]["Properties"]["EnableKeyRotation"] is True
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"


def test_the_logs_are_encrypted_with_the_stacks_key_for_this_accounts_log_groups(stack):
    groups = {k: v for k, v in stack.items() if v["Type"] == "AWS::Logs::LogGroup"}
    assert len(groups) == 7
    for name, group in groups.items():
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["Key", "Arn"]}, name
    policy = stack["Key"]["Properties"]["KeyPolicy"]["Statement"]
    (logs,) = [s for s in policy if s.get("Sid") == "CloudWatchLogsEncrypt"]
    assert logs["Principal"] == {"Service": {"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"}}
    scope = logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]["Fn::Sub"]
    assert scope.endswith(":logs:${AWS::Region}:${AWS::AccountId}:log-group:*")


def test_queues_buckets_and_the_alarm_topic_are_encrypted(stack):
    for name, spec in stack.items():
        properties = spec.get("Properties") or {}
        if spec["Type"] == "AWS::SQS::Queue":
            assert properties.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in properties
        elif spec["Type"] == "AWS::S3::Bucket":
            rule = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"], name
            assert all(properties["PublicAccessBlockConfiguration"].values()), name
        elif spec["Type"] == "AWS::SNS::Topic":
            assert properties["KmsMasterKeyId"] == {"Ref": "Key"}, name


# ---------------------------------------------------------------- the API


def test_every_api_route_requires_iam_auth_and_nothing_else_is_exposed(stack):
    auth = stack["Api"]["Properties"]["Auth"]
    assert (auth["DefaultAuthorizer"], auth["EnableIamAuthorizer"]) == ("AWS_IAM", True)
    routes = []
    for name, spec in stack.items():
        properties = spec.get("Properties") or {}
        assert spec["Type"] not in (
            "AWS::Serverless::Api",
            "AWS::ApiGateway::RestApi",
            "AWS::ApiGatewayV2::Api",
            "AWS::Lambda::Url",
        ), f"{name}: an endpoint outside the IAM-signed HTTP API"
        assert "FunctionUrlConfig" not in properties, name
        for event in (properties.get("Events") or {}).values():
            if event["Type"] in ("HttpApi", "Api"):
                assert event["Type"] == "HttpApi" and event["Properties"]["ApiId"] == {"Ref": "Api"}
                route_auth = event["Properties"].get("Auth", {}).get("Authorizer", "AWS_IAM")
                assert route_auth == "AWS_IAM", f"{name}: route without IAM auth"
                routes.append(event["Properties"]["Path"])
    assert len(routes) == 18


# ---------------------------------------------------------------- scanner findings


def skips(path: Path) -> dict[tuple[str, str], str]:
    """(resource, check) -> reason of every ``checkov:skip`` comment, by the resource
    whose block holds it."""
    found: dict[tuple[str, str], str] = {}
    resource = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        named = re.match(r"^  ([A-Za-z0-9]+):\s*$", line)
        if named:
            resource = named.group(1)
        matched = SKIP.search(line)
        if matched:
            found[(resource, matched["check"])] = matched["reason"].strip()
    return found


def test_every_skipped_finding_is_a_reviewed_one_with_its_reason():
    found = skips(ROOT / "template.yaml")
    assert set(found) == ACCEPTED_SKIPS
    for (resource, check), reason in found.items():
        assert len(reason.split()) >= 5, f"{resource} skips {check} without a reason"
