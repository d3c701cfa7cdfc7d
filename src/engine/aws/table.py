"""The table's definition, for the places that create it outside CloudFormation.

Tests and benchmarks create the table on moto. They take its key schema,
attributes, indexes, stream and billing from template.yaml's ``Table``
resource when the template is at hand (a checkout), so what is tested is
what is deployed; :data:`DEFINITION` is the same table written here, for an
installed package without the template (a test checks the two agree).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[3] / "template.yaml"
"""The SAM template of a checkout (absent from an installed package)."""

TTL_ATTRIBUTE = "expires_at"

_LISTED = ["pipeline", "version", "status", "created_at", "ended_at", "reason"]
"""What the indexes project: what a listing shows, never a counter (a counter update
would then write the index on every finished job)."""


def _index(name: str, pk: str, sk: str) -> dict[str, Any]:
    return {
        "IndexName": name,
        "KeySchema": [
            {"AttributeName": pk, "KeyType": "HASH"},
            {"AttributeName": sk, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(_LISTED)},
    }


DEFINITION: dict[str, Any] = {
    "BillingMode": "PAY_PER_REQUEST",
    "AttributeDefinitions": [
        {"AttributeName": name, "AttributeType": "S"}
        for name in ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk")
    ],
    "KeySchema": [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ],
    "GlobalSecondaryIndexes": [
        _index("ByPipeline", "gsi1pk", "gsi1sk"),
        _index("ByStatus", "gsi2pk", "gsi2sk"),
    ],
    "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
}
"""The table's properties that shape its data, as CloudFormation writes them."""

_SHAPE = tuple(DEFINITION)


class _TemplateLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form functions (``!Ref``, ``!If``...) as plain values."""


def _function(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix: value}


_TemplateLoader.add_multi_constructor("!", _function)


def template_definition(template: Path = TEMPLATE) -> dict[str, Any] | None:
    """The ``Table`` resource's properties that :data:`DEFINITION` holds, or None when
    the template is absent or has no such table."""
    if not template.is_file():
        return None
    document = yaml.load(template.read_text(encoding="utf-8"), Loader=_TemplateLoader)
    resource = (document.get("Resources") or {}).get("Table") or {}
    if resource.get("Type") != "AWS::DynamoDB::Table":
        return None
    properties = resource.get("Properties") or {}
    return {name: copy.deepcopy(properties[name]) for name in _SHAPE if name in properties}


def definition(template: Path = TEMPLATE) -> dict[str, Any]:
    """The template's table when there is one, else :data:`DEFINITION`."""
    return template_definition(template) or copy.deepcopy(DEFINITION)


def create_table(client: Any, name: str, template: Path = TEMPLATE) -> str:
    """Create the table (and its TTL) as the template (or :data:`DEFINITION`) defines it.

    Returns:
        The ARN of the table's stream.
    """
    shape = definition(template)
    stream = shape.pop("StreamSpecification", None)
    if stream:
        # CloudFormation says only the view type; the API wants the stream enabled too.
        shape["StreamSpecification"] = {"StreamEnabled": True, **stream}
    reply = client.create_table(TableName=name, **shape)
    client.get_waiter("table_exists").wait(TableName=name)
    client.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )
    return str(reply["TableDescription"].get("LatestStreamArn", ""))
