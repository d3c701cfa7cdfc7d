"""Read and write ``s3://bucket/key`` objects, or their local stand-in.

Every path in the pipelines is an S3 URI (``s3://ml-bucket/prepared/...``). On
AWS they are S3 objects, read and written with boto3. When the environment
variable ``ML_LOCAL_S3_ROOT`` is set, nothing talks to S3: ``s3://bucket/key``
is the file ``$ML_LOCAL_S3_ROOT/bucket/key``, so the same pipeline YAML runs
unchanged on a laptop. ``bunsui.local.yml`` sets it for every function and task.

A relative ``ML_LOCAL_S3_ROOT`` (``.local-s3``) is taken relative to the
example's folder, the folder that holds ``mlcommon/`` (and ``bunsui.local.yml``),
not to the current folder: each local job runs in a folder of its own, and they
must all see the same files.

A plain path (not ``s3://``) is always a local file. That is how ``$BUNSUI_OUTPUT``
is written: a file locally, an S3 URI on AWS, with the same call.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

LOCAL_ROOT_ENV = "ML_LOCAL_S3_ROOT"
EXAMPLE_DIR = Path(__file__).resolve().parent.parent
"""The example's folder: what a relative ``ML_LOCAL_S3_ROOT`` is relative to."""

_client: Any = None


class NotFound(FileNotFoundError):
    """The object (or file) does not exist."""


class Conflict(RuntimeError):
    """A conditional write lost: the object changed since it was read."""


# ---------------------------------------------------------------- addresses


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def join(prefix: str, *parts: str) -> str:
    """``join("s3://b/models/m", "v1", "model.joblib")`` -> ``s3://b/models/m/v1/model.joblib``."""
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


def local_root() -> Path | None:
    """The folder standing in for S3, or None when S3 itself is used."""
    value = os.environ.get(LOCAL_ROOT_ENV, "").strip()
    if not value:
        return None
    root = Path(value).expanduser()
    return root if root.is_absolute() else EXAMPLE_DIR / root


def local_path(uri: str) -> Path | None:
    """The file that holds ``uri`` on this machine; None when it lives in S3."""
    if not is_s3(uri):
        return Path(uri)
    root = local_root()
    if root is None:
        return None
    bucket, key = split(uri)
    base = (root / bucket).resolve()
    path = (base / key).resolve() if key else base
    if path != base and base not in path.parents:  # "s3://b/../../etc" must not escape
        raise ValueError(f"{uri!r} points outside the local stand-in of bucket {bucket!r}")
    return path


def _s3() -> Any:
    global _client
    if _client is None:
        import boto3  # only where S3 is really used: the local stand-in needs no AWS SDK setup

        _client = boto3.client("s3")
    return _client


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404", "NotFound")


# ---------------------------------------------------------------- bytes


def read_bytes(uri: str) -> bytes:
    return read_versioned(uri)[0]


def write_bytes(uri: str, data: bytes) -> None:
    path = local_path(uri)
    if path is None:
        bucket, key = split(uri)
        _s3().put_object(Bucket=bucket, Key=key, Body=data)
        return
    _atomic_write(path, data)


def exists(uri: str) -> bool:
    path = local_path(uri)
    if path is not None:
        return path.is_file()
    bucket, key = split(uri)
    try:
        _s3().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _missing(exc):
            return False
        raise
    return True


def delete(uri: str) -> None:
    """Remove the object; nothing happens when it does not exist."""
    path = local_path(uri)
    if path is not None:
        path.unlink(missing_ok=True)
        return
    bucket, key = split(uri)
    _s3().delete_object(Bucket=bucket, Key=key)


def copy(source: str, target: str) -> None:
    """Copy one object (server-side in S3)."""
    src, dst = local_path(source), local_path(target)
    if src is None and dst is None:
        bucket, key = split(source)
        to_bucket, to_key = split(target)
        _s3().copy_object(Bucket=to_bucket, Key=to_key, CopySource={"Bucket": bucket, "Key": key})
        return
    write_bytes(target, read_bytes(source))


def read_versioned(uri: str) -> tuple[bytes, str]:
    """The object and its version tag (the S3 ETag), for :func:`write_if`.

    Raises:
        NotFound: There is no such object.
    """
    path = local_path(uri)
    if path is not None:
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(uri) from exc
        return data, _tag(data)
    bucket, key = split(uri)
    try:
        reply = _s3().get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _missing(exc):
            raise NotFound(uri) from exc
        raise
    return reply["Body"].read(), reply["ETag"]


def write_if(uri: str, data: bytes, tag: str | None) -> None:
    """Write only if the object still has version ``tag`` (None: only if it does not exist).

    On S3 this is a conditional PUT (``If-Match`` / ``If-None-Match``); locally the
    check and the write hold an exclusive lock on the file's folder.

    Raises:
        Conflict: Someone else wrote it first; read it again and retry.
    """
    path = local_path(uri)
    if path is None:
        bucket, key = split(uri)
        condition = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        try:
            _s3().put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise Conflict(uri) from exc
            raise
        return
    import fcntl  # POSIX only, as is the local backend

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _tag(path.read_bytes()) if path.is_file() else None
        if current != tag:
            raise Conflict(uri)
        _atomic_write(path, data)


def _tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    # A reader (another job, the registry CLI) never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o644)  # as a plain write would leave it, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- formats


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=2, sort_keys=True).encode())


def save_arrays(uri: str, **arrays: Any) -> None:
    """NumPy arrays as one ``.npz`` object (no pickles inside)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(uri, buffer.getvalue())


def load_arrays(uri: str) -> dict[str, Any]:
    import numpy as np

    with np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def save_object(uri: str, value: Any) -> None:
    """A Python object (a model, a scaler) with joblib. Load only objects you wrote."""
    import joblib

    buffer = io.BytesIO()
    joblib.dump(value, buffer, compress=3)
    write_bytes(uri, buffer.getvalue())


def load_object(uri: str) -> Any:
    import joblib

    return joblib.load(io.BytesIO(read_bytes(uri)))
