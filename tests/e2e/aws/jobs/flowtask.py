"""The ECS task of the AWS flow test: writes its JSON result to $BUNSUI_OUTPUT, exits $EXIT_CODE.

Run as ``python -m flowtask`` (bunsui.local.yaml). On the moto stack
``BUNSUI_OUTPUT`` is an ``s3://`` URI of the stack's output bucket, written
with boto3 as a real task would.
"""

from __future__ import annotations

import json
import os
import sys

import boto3


def main() -> int:
    result = {"greeting": os.environ.get("GREETING", "hello"), "job": os.environ["BUNSUI_JOB_ID"]}
    target = os.environ.get("BUNSUI_OUTPUT", "")
    if target.startswith("s3://"):
        bucket, _, key = target[5:].partition("/")
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(result).encode())
    print(f"flowtask: wrote {result} to {target}")
    return int(os.environ.get("EXIT_CODE", "0"))


if __name__ == "__main__":
    sys.exit(main())
