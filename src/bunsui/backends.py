"""Which backend a command uses: the local one, or a deployed stack on AWS (``bunsui config``).

The AWS backend (and boto3) is imported only when the configuration names
it, so the local commands start as fast as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from bunsui import config
from engine.local.backend import LocalBackend

if TYPE_CHECKING:
    from bunsui.remote import AwsBackend

    Backend: TypeAlias = LocalBackend | AwsBackend


def open_backend() -> Backend:
    """The backend the configuration names (``backend``: local, the default, or aws)."""
    settings = config.load()
    if settings.backend == "aws":
        from bunsui.remote import AwsBackend

        return AwsBackend(settings.aws, settings.folder)
    return LocalBackend()


def is_remote(backend: Backend) -> bool:
    """Whether the sessions run on AWS (no process of this machine drives them)."""
    return bool(getattr(backend, "remote", False))


def local_only(backend: Backend, **options: object) -> None:
    """Refuse options that only the local backend has, when they were given against AWS.

    Raises:
        LocalOnly: one was given (named as typed: ``--local-map``).
    """
    if not is_remote(backend):
        return
    given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value]
    if given:
        from bunsui.remote import LocalOnly

        raise LocalOnly(
            f"{' and '.join(given)}: for the local backend only; on AWS jobs run the functions, "
            "tasks and services their pipeline names (bunsui config set backend local to run "
            "here)."
        )
