"""The model registry: one JSON document per model, every version it ever had.

``s3://<bucket>/registry/<model>.json``::

    {"model_name": "customer_churn_model",
     "live_version": "v1.1",
     "versions": {
       "v1.0": {"model_path": "s3://...", "metrics": {...}, "state": "retired", ...},
       "v1.1": {"model_path": "s3://...", "metrics": {...}, "state": "live",
                "deployed_at": "...", "serving_path": "s3://.../serving/<model>/v1.1"}},
     "history": [{"at": "...", "version": "v1.1", "event": "deployed"}, ...]}

A version's ``state`` is ``registered`` (never deployed), ``live``, or ``retired``
(was live, replaced). Versions are never removed. Every change is a read, a change
and a conditional write (If-Match), retried when another writer came first, so
two sessions updating one model lose nothing.

Which version is live::

    cd examples/ml-pipeline
    python -m mlcommon.registry --storage .local-s3 live customer_churn_model
    python -m mlcommon.registry show customer_churn_model      # S3 itself
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlcommon import storage

DEFAULT_BUCKET = "ml-bucket"
ATTEMPTS = 8


def location(model_name: str, bucket: str = DEFAULT_BUCKET) -> str:
    return f"s3://{bucket}/registry/{model_name}.json"


def bucket_of(uri: str) -> str:
    return storage.split(uri)[0]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read(uri: str) -> dict[str, Any] | None:
    """The registry document, or None when the model has none yet."""
    try:
        return json.loads(storage.read_bytes(uri))
    except storage.NotFound:
        return None


def update(uri: str, model_name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the document and store it, retrying on a concurrent write."""
    for _ in range(ATTEMPTS):
        try:
            data, tag = storage.read_versioned(uri)
            doc = json.loads(data)
        except storage.NotFound:
            doc, tag = {"model_name": model_name, "live_version": None, "versions": {}}, None
        doc.setdefault("history", [])
        change(doc)
        try:
            storage.write_if(uri, json.dumps(doc, indent=2, sort_keys=True).encode(), tag)
        except storage.Conflict:
            continue
        return doc
    raise storage.Conflict(f"{uri}: {ATTEMPTS} concurrent writers in a row; try again")


def register(
    uri: str, model_name: str, version: str, model_path: str | None, metrics: dict[str, Any] | None
) -> dict[str, Any]:
    """Record a version with its metrics; its deployment state is kept if it has one."""
    at = now()

    def change(doc: dict[str, Any]) -> None:
        entry = doc["versions"].setdefault(version, {"state": "registered", "registered_at": at})
        entry.setdefault("registered_at", at)
        if model_path:
            entry["model_path"] = model_path
        if metrics is not None:
            entry["metrics"] = metrics
        entry["updated_at"] = at
        doc["history"].append({"at": at, "version": version, "event": "registered"})

    return update(uri, model_name, change)


def mark_live(
    uri: str, model_name: str, version: str, model_path: str, serving_path: str
) -> dict[str, Any]:
    """Make ``version`` the live one; the version live before it is retired."""
    at = now()

    def change(doc: dict[str, Any]) -> None:
        previous = doc.get("live_version")
        if previous and previous != version and previous in doc["versions"]:
            doc["versions"][previous].update(state="retired", retired_at=at)
            doc["history"].append({"at": at, "version": previous, "event": "retired"})
        entry = doc["versions"].setdefault(version, {"registered_at": at})
        entry.update(state="live", deployed_at=at, model_path=model_path, serving_path=serving_path)
        doc["live_version"] = version
        doc["history"].append({"at": at, "version": version, "event": "deployed"})

    return update(uri, model_name, change)


def live(uri: str) -> dict[str, Any] | None:
    """The live version's entry (with its ``version``), or None."""
    doc = read(uri)
    if not doc or not doc.get("live_version"):
        return None
    version = doc["live_version"]
    return {"version": version, **doc["versions"][version]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcommon.registry", description=__doc__)
    parser.add_argument(
        "--storage",
        help="the local stand-in folder for S3, relative to the current folder (sets "
        "ML_LOCAL_S3_ROOT); default: $ML_LOCAL_S3_ROOT if set, else S3 itself",
    )
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    parser.add_argument("command", choices=["live", "show"])
    parser.add_argument("model_name")
    args = parser.parse_args(argv)
    if args.storage:
        os.environ[storage.LOCAL_ROOT_ENV] = str(Path(args.storage).resolve())
    uri = location(args.model_name, args.bucket)
    if args.command == "show":
        doc = read(uri)
        if doc is None:
            print(f"{args.model_name}: not in the registry ({uri})", file=sys.stderr)
            return 1
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    entry = live(uri)
    if entry is None:
        print(f"{args.model_name}: no live version ({uri})", file=sys.stderr)
        return 1
    accuracy = (entry.get("metrics") or {}).get("accuracy")
    shown = f" accuracy {accuracy:.4f}" if isinstance(accuracy, int | float) else ""
    print(f"{args.model_name} {entry['version']} live since {entry['deployed_at']}{shown}")
    print(f"  serving: {entry['serving_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
