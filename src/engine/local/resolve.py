"""What runs each job on this machine: a Lambda handler, a command, or a child pipeline.

A ``lambda`` job's ``function_name`` is resolved the way ``sam local invoke``
resolves it: from the SAM/CloudFormation template beside the pipeline
(``template.yaml`` or ``template.yml``, or the one given), by the function's
``FunctionName`` or logical id, to its ``CodeUri`` and ``Handler``. Code that
has no template, and every job type that has no local equivalent of its own
(``ecs`` task definitions, state machines, Glue, Batch, EMR), is mapped in
``bunsui.local.yaml`` beside the pipeline::

    functions:            # lambda: function name (or ARN) -> Python handler
      data-preparation-function:
        handler: app.lambda_handler      # module.function, as in Lambda
        code: functions/prepare          # folder put first on sys.path (default: .)
        environment: {STAGE: local}
        timeout: 60                      # seconds (default: Lambda's 3)
        memory: 512                      # MB (default: 128)
    tasks:                # ecs: task definition family (or ARN) -> command
      ml-training-task:
        dockerfile: containers/training/Dockerfile   # its last ENTRYPOINT/CMD
        # or: command: python train.py   (a string runs with /bin/sh -c)
        # or: entrypoint: [python]  command: [train.py]
        cwd: containers/training         # default: the Dockerfile's folder, else this file's
        environment: {DEVICE: cpu}
    state_machines:       # step_function: name (or ARN) -> child pipeline or handler
      hyperparameter-tuning: {pipeline: hyperparameter-grid.yaml}
      other-machine: {handler: sm.handler, code: machines}
    glue:   {nightly-etl: {command: [python, etl.py]}}      # job_name
    batch:  {train-def: {command: python train.py Ref::lr}}  # job_definition
    emr:    {spark-step: {command: spark-submit job.py}}     # step name or cluster id

Paths in the mapping are relative to the mapping file's folder. The mapping
wins over the template. Nothing here runs anything: the template is read with
a safe loader that keeps intrinsic functions (``!Ref``, ``!Sub``...) as data.

A container image function (``PackageType: Image``) runs as ``sam local invoke``
runs it, assuming its image copies the build context into the task root: the
handler is ``ImageConfig.Command[0]`` (else the first word of the Dockerfile's
CMD), and the code folder is ``Metadata.DockerContext``, relative to the
template. An image with its own ``ImageConfig.EntryPoint`` is refused.

In the commands of the mapping (``tasks``, ``glue``, ``batch``, ``emr``, and the
ENTRYPOINT/CMD read from a mapped Dockerfile), a first word ``python`` or
``python3`` is replaced by the interpreter that runs Bunsui (``sys.executable``,
which runs the Lambda handlers too), so a command finds the packages of Bunsui's
environment whatever ``PATH`` holds. Write another path (``/usr/bin/python3``)
to run another interpreter. A ``custom`` job's own command is run as written.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.errors import DispatchFailed
from engine.local.mapping import LAMBDA_MEMORY, MappingFile, compose_command, dockerfile_command
from engine.ports import Dispatch

TEMPLATE_NAMES = ("template.yaml", "template.yml")
MAPPING_NAMES = ("bunsui.local.yaml", "bunsui.local.yml")
LAMBDA_TIMEOUT = 3.0
"""Lambda's default timeout (seconds): a function that does not set one stops there on AWS too."""

_FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
_GLOBAL_KEYS = ("CodeUri", "Handler", "Runtime", "Timeout", "MemorySize")
_SUB_PART = re.compile(r"\$\{([^}]*)\}")
_PYTHONS = ("python", "python3")


# ---------------------------------------------------------------- what runs


@dataclass(frozen=True)
class HandlerTarget:
    """Python code called like a Lambda handler (a ``lambda`` job, or a state machine).

    Attributes:
        name: The function (or state machine) name, as the context reports it.
        code_dir: The folder put first on ``sys.path``.
        handler: ``module.function``.
        environment: Variables set before the handler's module is imported.
        timeout: Seconds before the invocation is stopped; None for no limit.
        memory: ``memory_limit_in_mb`` of the context (not enforced).
        origin: Where it was found, for messages (``template.yaml Resources.Prep``).
    """

    name: str
    code_dir: Path
    handler: str
    environment: Mapping[str, str]
    timeout: float | None
    memory: int
    origin: str


@dataclass(frozen=True)
class CommandTarget:
    """A command run as a subprocess: a string runs with ``/bin/sh -c``, a tuple as argv."""

    command: str | tuple[str, ...]
    cwd: Path
    environment: Mapping[str, str]
    origin: str


@dataclass(frozen=True)
class PipelineTarget:
    """Another Bunsui pipeline file, run as a child session."""

    pipeline: Path
    origin: str


Target = HandlerTarget | CommandTarget | PipelineTarget


@dataclass(frozen=True)
class _Template:
    functions: dict[str, dict[str, Any]]
    """Properties of each function by logical id, Globals merged in."""
    params: dict[str, Any]
    """The template's Parameters (their Defaults stand in for ``!Ref``)."""
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The ``Metadata`` of each function by logical id (``DockerContext`` of an image)."""


# ---------------------------------------------------------------- CloudFormation YAML


class CfnLoader(yaml.SafeLoader):
    """A safe loader that reads ``!Ref x`` as ``{"Ref": "x"}`` and ``!Sub s`` as
    ``{"Fn::Sub": "s"}`` (the JSON form of intrinsic functions); it evaluates nothing."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    return {name: value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def _read_yaml(path: Path, loader: type[yaml.SafeLoader]) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except OSError as exc:
        raise DispatchFailed(f"cannot read {_show(path)}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DispatchFailed(
            f"{_show(path)}{where} is not valid YAML ({problem}); fix the file."
        ) from exc


# ---------------------------------------------------------------- names


def lambda_name(text: str) -> str:
    """The function name in a name, ``name:alias``, partial or full ARN."""
    parts = text.split(":")
    if text.startswith("arn:") and len(parts) >= 7:
        return parts[6]
    if len(parts) >= 3 and parts[1] == "function":
        return parts[2]
    return parts[0]


def _after_slash(text: str) -> str:
    """family or name in ``family:rev`` or ``arn:...:task-definition/family:rev``."""
    return text.rsplit("/", 1)[-1].split(":", 1)[0] if "/" in text else text.split(":", 1)[0]


def _state_machine_name(text: str) -> str:
    parts = text.split(":")
    return parts[6] if text.startswith("arn:") and len(parts) >= 7 else text


def _lookup(section: Mapping[str, Any], raw: str, normal: Any) -> tuple[str, Any] | None:
    """The entry keyed by ``raw`` itself, else by the same normalised name."""
    if raw in section:
        return raw, section[raw]
    want = normal(raw)
    for key, entry in section.items():
        if normal(key) == want:
            return key, entry
    return None


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _env_text(value: Any) -> str:
    # JSON text for non-strings: True -> "true", {"a": 1} -> '{"a": 1}' (DESIGN: environment).
    return value if isinstance(value, str) else json.dumps(value)


def _env(values: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): _env_text(v) for k, v in values.items()}


# ---------------------------------------------------------------- the resolver


class LocalResolver:
    """Finds what runs each job locally, from a SAM template and a mapping file.

    Both files are found and read on first use, then kept; :meth:`load` reads
    them at once, so a caller can report a broken file before a session starts.

    Args:
        base_dir: The pipeline's folder: where the template and the mapping
            are looked for, and what a ``custom`` job's ``working_dir`` is
            relative to.
        template: A SAM/CloudFormation template (else ``template.yaml`` or
            ``template.yml`` in ``base_dir``, if there is one).
        mapping: A mapping file (else ``bunsui.local.yaml`` in ``base_dir``).
    """

    def __init__(self, base_dir: Path, template: Path | None = None, mapping: Path | None = None):
        self.base_dir = Path(base_dir)
        self._template_arg, self._mapping_arg = template, mapping
        self._lock = threading.Lock()
        self._template: _Template | None = None
        self._mapping: MappingFile | None = None

    @property
    def template_path(self) -> Path | None:
        """The template in use: the one given, else the one beside the pipeline, if any."""
        return self._template_arg or _first(self.base_dir, TEMPLATE_NAMES)

    @property
    def mapping_path(self) -> Path | None:
        """The mapping file in use: the one given, else the one beside the pipeline, if any."""
        return self._mapping_arg or _first(self.base_dir, MAPPING_NAMES)

    def load(self) -> None:
        """Read and check the template and the mapping file now.

        Raises:
            DispatchFailed: A file is missing, not YAML, or (the mapping) not valid.
        """
        self._functions()
        self._map()

    def resolve(self, order: Dispatch) -> Target:
        """What runs this order's job.

        Raises:
            DispatchFailed: Nothing local runs it; the message says what was looked
                for, where, and how to fix it.
        """
        job = f"job '{order.key}'"
        inputs = order.inputs
        kind = order.job_type
        if kind == "lambda":
            return self.function(str(inputs["function_name"]), job)
        if kind == "custom":
            cwd = self.base_dir / str(inputs.get("working_dir") or ".")
            return CommandTarget(
                _command(inputs["command"]),
                cwd,
                _env(inputs.get("environment") or {}),
                "the job's command",
            )
        if kind == "step_function":
            return self._state_machine(str(inputs["state_machine_arn"]), job)
        if kind == "ecs":
            name = str(inputs["task_definition"])
            override = inputs.get("command")
            return self._command_job(
                "tasks", name, _after_slash, job, f"ecs task definition '{name}'",
                cmd=_command(override) if override else None,
                environment=inputs.get("environment") or {},
            )  # fmt: skip
        if kind == "glue":
            name = str(inputs["job_name"])
            # Glue hands its arguments to the script as `--name value` in sys.argv.
            extra = [part for pair in (inputs.get("arguments") or {}).items() for part in pair]
            return self._command_job(
                "glue", name, str, job, f"glue job '{name}'", extra=extra, aws_only=True
            )
        if kind == "batch":
            return self._batch(inputs, job)
        if kind == "emr":
            step = inputs.get("step_config") or {}
            names = [str(n) for n in (step.get("name"), inputs.get("cluster_id")) if n]
            for name in names:
                if _lookup(self._map().emr, name, str) is not None:
                    return self._command_job("emr", name, str, job, f"emr step '{name}'")
            label = " or ".join(f"'{n}'" for n in names)
            raise self._missing("emr", f"emr step/cluster {label}", job, aws_only=True)
        raise DispatchFailed(f"{job}: job type '{kind}' has no local runner.")

    def function(self, function_name: str, job: str = "job") -> HandlerTarget:
        """The local code of a Lambda function: the mapping's entry, else the template's.

        Raises:
            DispatchFailed: The function is in neither, or cannot run here.
        """
        name = lambda_name(function_name)
        mapping = self._map()
        found = _lookup(mapping.functions, function_name, lambda_name)
        if found is not None:
            key, entry = found
            return HandlerTarget(
                name,
                self._mapped_dir(entry.code, job, f"functions.{key}.code"),
                entry.handler,
                _env(entry.environment),
                entry.timeout or LAMBDA_TIMEOUT,
                entry.memory,
                f"{self._mapping_name()} functions.{key}",
            )
        template = self._functions()
        logical = _match_function(template, name, job)
        if logical is not None:
            return self._template_function(name, logical, template, job)
        mapped = f"{self._mapping_name()} functions:"
        if self.template_path is None:
            raise DispatchFailed(
                f"{job}: lambda function '{name}' is not in {mapped} and there is no "
                f"template.yaml in {_show(self.base_dir)}; add it to {mapped}, or put the "
                "SAM template beside the pipeline (or pass --template)."
            )
        raise DispatchFailed(
            f"{job}: lambda function '{name}' is not in {_show(self.template_path)} "
            f"(FunctionName or logical id) nor in {mapped}; add it to one of them."
        )

    # ------------------------------------------------------------ template

    def _functions(self) -> _Template:
        with self._lock:
            if self._template is None:
                self._template = self._read_template()
            return self._template

    def _read_template(self) -> _Template:
        if self.template_path is None:
            return _Template({}, {})
        data = _read_yaml(self.template_path, CfnLoader)
        resources = data.get("Resources") if isinstance(data, dict) else None
        if not isinstance(resources, dict):
            raise DispatchFailed(
                f"{_show(self.template_path)} has no Resources: section; "
                "give a SAM/CloudFormation template."
            )
        # A template is the user's file: any section may be malformed, none may crash us.
        defaults = _dict(_dict(data.get("Globals")).get("Function"))
        params = _dict(data.get("Parameters"))
        out: dict[str, dict[str, Any]] = {}
        metadata: dict[str, dict[str, Any]] = {}
        for logical, resource in resources.items():
            if not isinstance(resource, dict) or resource.get("Type") not in _FUNCTION_TYPES:
                continue
            props = _dict(resource.get("Properties"))
            metadata[str(logical)] = _dict(resource.get("Metadata"))
            if resource["Type"] == "AWS::Serverless::Function":  # Globals apply to SAM only
                for key in _GLOBAL_KEYS:
                    props.setdefault(key, defaults.get(key))
                props["Environment"] = {
                    "Variables": {
                        **_variables(defaults.get("Environment")),
                        **_variables(props.get("Environment")),
                    }
                }
            else:
                props.setdefault("CodeUri", props.get("Code"))
            out[str(logical)] = props
        return _Template(out, params, metadata)

    def _template_function(
        self, name: str, logical: str, template: _Template, job: str
    ) -> HandlerTarget:
        assert self.template_path is not None
        props = template.functions[logical]
        origin = f"{_show(self.template_path)} Resources.{logical}"
        fix = f"; map '{name}' in {self._mapping_name()} functions: instead."
        if props.get("PackageType") == "Image":
            metadata = template.metadata.get(logical, {})
            code_dir, handler = self._image(metadata, props, origin, fix, job)
        else:
            code_dir, handler = self._zip(props, origin, fix, job)
        params = template.params
        environment = {
            k: text
            for k, v in props["Environment"]["Variables"].items()
            if (text := _plain(v, params)) is not None  # unresolvable intrinsics are left out
        }
        timeout, memory = props.get("Timeout"), props.get("MemorySize")
        return HandlerTarget(
            name,
            code_dir,
            handler,
            environment,
            float(timeout) if isinstance(timeout, int | float) else LAMBDA_TIMEOUT,
            memory if isinstance(memory, int) else LAMBDA_MEMORY,
            origin,
        )

    def _zip(self, props: Mapping[str, Any], origin: str, fix: str, job: str) -> tuple[Path, str]:
        """The code folder and handler of a zip function: ``CodeUri`` and ``Handler``."""
        assert self.template_path is not None
        runtime = props.get("Runtime")
        if isinstance(runtime, str) and not runtime.startswith("python"):
            raise DispatchFailed(f"{job}: {origin} has Runtime {runtime}; only python runs{fix}")
        handler = props.get("Handler")
        if not isinstance(handler, str) or not handler:
            raise DispatchFailed(f"{job}: {origin} has no Handler{fix}")
        code = props.get("CodeUri")
        if code is None and props.get("InlineCode") is not None:
            raise DispatchFailed(f"{job}: {origin} uses InlineCode{fix}")
        if code is not None and not isinstance(code, str):
            raise DispatchFailed(f"{job}: {origin} has a CodeUri that is not a local path{fix}")
        code_dir = self.template_path.parent / (code or ".")
        if not code_dir.is_dir():
            raise DispatchFailed(
                f"{job}: CodeUri {_show(code_dir)} of {origin} is not a folder; fix CodeUri."
            )
        return code_dir, handler

    def _image(
        self, metadata: Mapping[str, Any], props: Mapping[str, Any], origin: str, fix: str, job: str
    ) -> tuple[Path, str]:
        """The code folder and handler of an image function, as ``sam local invoke`` runs it:
        the build context (``Metadata.DockerContext``) stands for the image's task root, and
        ``ImageConfig.Command[0]`` (else the Dockerfile's CMD) names the handler."""
        assert self.template_path is not None
        config = _dict(props.get("ImageConfig"))
        if config.get("EntryPoint"):
            raise DispatchFailed(
                f"{job}: {origin} is an image function with its own ImageConfig.EntryPoint, "
                f"which runs only in its container{fix}"
            )
        context = metadata.get("DockerContext")
        if not isinstance(context, str) or not context:
            raise DispatchFailed(
                f"{job}: {origin} is an image function without Metadata.DockerContext, "
                f"the folder its image is built from{fix}"
            )
        code_dir = self.template_path.parent / context
        if not code_dir.is_dir():
            raise DispatchFailed(
                f"{job}: Metadata.DockerContext {_show(code_dir)} of {origin} is not a folder; "
                "fix DockerContext."
            )
        command = config.get("Command")
        if not command:
            dockerfile = metadata.get("Dockerfile")
            path = code_dir / (dockerfile if isinstance(dockerfile, str) else "Dockerfile")
            command = dockerfile_command(path)[1] if path.is_file() else None
        handler = command[0] if isinstance(command, list) and command else None
        if not isinstance(handler, str) or not handler:
            raise DispatchFailed(
                f"{job}: {origin} is an image function whose handler is in neither "
                f"ImageConfig.Command nor its Dockerfile's CMD{fix}"
            )
        return code_dir, handler

    # ------------------------------------------------------------ mapping

    def _map(self) -> MappingFile:
        with self._lock:
            if self._mapping is None:
                self._mapping = self._read_mapping()
            return self._mapping

    def _read_mapping(self) -> MappingFile:
        if self.mapping_path is None:
            return MappingFile()
        data = _read_yaml(self.mapping_path, yaml.SafeLoader)
        try:
            return MappingFile.model_validate(data or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise DispatchFailed(f"{_show(self.mapping_path)} is invalid: {problems}.") from exc

    def _mapping_name(self) -> str:
        return _show(self.mapping_path or self.base_dir / MAPPING_NAMES[0])

    def _mapped_dir(self, relative: str, job: str, field: str) -> Path:
        assert self.mapping_path is not None
        path = self.mapping_path.parent / relative
        if not path.is_dir():
            raise DispatchFailed(
                f"{job}: {field} in {self._mapping_name()} is {_show(path)}, "
                "which is not a folder; fix the path (relative to the mapping file)."
            )
        return path

    def _missing(self, section: str, what: str, job: str, aws_only: bool) -> DispatchFailed:
        how = "with command:, entrypoint: and command:, or dockerfile:"
        if aws_only:
            return DispatchFailed(
                f"{job}: {what} runs on the AWS backend only; to run it locally, map it "
                f"in {self._mapping_name()} {section}: {how}."
            )
        return DispatchFailed(
            f"{job}: {what} is not in {self._mapping_name()} {section}:; add it there {how}."
        )

    def _state_machine(self, arn: str, job: str) -> Target:
        name = _state_machine_name(arn)
        found = _lookup(self._map().state_machines, arn, _state_machine_name)
        if found is None:
            raise DispatchFailed(
                f"{job}: state machine '{name}' is not in {self._mapping_name()} "
                "state_machines:; add it there with pipeline: <file> or handler: and code:."
            )
        key, entry = found
        origin = f"{self._mapping_name()} state_machines.{key}"
        assert self.mapping_path is not None
        if entry.pipeline is not None:
            path = self.mapping_path.parent / entry.pipeline
            if not path.is_file():
                raise DispatchFailed(
                    f"{job}: pipeline {_show(path)} of {origin} does not exist; fix the path."
                )
            return PipelineTarget(path, origin)
        assert entry.handler is not None
        code = self._mapped_dir(entry.code, job, f"state_machines.{key}.code")
        return HandlerTarget(
            name, code, entry.handler, _env(entry.environment), entry.timeout, entry.memory, origin
        )

    def _batch(self, inputs: Mapping[str, Any], job: str) -> CommandTarget:
        name = str(inputs["job_definition"])
        overrides = inputs.get("container_overrides") or {}
        target = self._command_job(
            "batch", name, _after_slash, job, f"batch job definition '{name}'",
            cmd=_command(overrides["command"]) if overrides.get("command") else None,
            environment=overrides.get("environment") or {},
            aws_only=True,
        )  # fmt: skip
        params = inputs.get("parameters") or {}
        if not params:
            return target

        def fill(text: str) -> str:  # Batch replaces Ref::name placeholders in the command
            for key, value in params.items():
                text = text.replace(f"Ref::{key}", str(value))
            return text

        command = target.command
        filled = fill(command) if isinstance(command, str) else tuple(map(fill, command))
        return CommandTarget(filled, target.cwd, target.environment, target.origin)

    def _command_job(
        self,
        section: str,
        name: str,
        normal: Any,
        job: str,
        what: str,
        cmd: str | tuple[str, ...] | None = None,
        environment: Mapping[str, Any] | None = None,
        extra: list[str] | None = None,
        aws_only: bool = False,
    ) -> CommandTarget:
        found = _lookup(getattr(self._map(), section), name, normal)
        if found is None:
            raise self._missing(section, what, job, aws_only)
        key, entry = found
        origin = f"{self._mapping_name()} {section}.{key}"
        assert self.mapping_path is not None
        folder = self.mapping_path.parent
        entrypoint, image_cmd = entry.entrypoint, entry.command
        cwd = folder / entry.cwd if entry.cwd else folder
        if entry.dockerfile is not None:
            path = folder / entry.dockerfile
            if path.is_dir():
                path = path / "Dockerfile"
            if not path.is_file():
                raise DispatchFailed(
                    f"{job}: dockerfile {_show(path)} of {origin} does not exist; fix the path."
                )
            from_file = dockerfile_command(path)
            entrypoint = entrypoint if entrypoint is not None else from_file[0]
            image_cmd = image_cmd if image_cmd is not None else from_file[1]
            cwd = folder / entry.cwd if entry.cwd else path.parent
        command = compose_command(entrypoint, cmd if cmd is not None else image_cmd)
        if extra:
            command = (
                f"{command} {shlex.join(extra)}" if isinstance(command, str) else (*command, *extra)
            )
        if not command:
            raise DispatchFailed(f"{job}: {origin} gives no command to run; add command:.")
        command = _own_python(command)
        return CommandTarget(
            command, cwd, {**_env(entry.environment), **_env(environment or {})}, origin
        )


# ---------------------------------------------------------------- helpers


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _own_python(command: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """The command with a first word ``python``/``python3`` replaced by Bunsui's interpreter."""
    if isinstance(command, tuple):
        if command and command[0] in _PYTHONS:
            return (sys.executable, *command[1:])
        return command
    head, space, rest = command.lstrip().partition(" ")
    return f"{shlex.quote(sys.executable)}{space}{rest}" if head in _PYTHONS else command


def _command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    return tuple(v if isinstance(v, str) else json.dumps(v) for v in value)


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _variables(environment: Any) -> dict[str, Any]:
    return _dict(_dict(environment).get("Variables"))


def _plain(value: Any, params: Mapping[str, Any]) -> str | None:
    """A template value as text: a literal, or a ``!Ref`` to a parameter with a Default."""
    if isinstance(value, dict):
        ref = value.get("Ref")
        default = _dict(params.get(ref)).get("Default") if isinstance(ref, str) else None
        return None if default is None else _env_text(default)
    return None if value is None else _env_text(value)


def _match_function(template: _Template, name: str, job: str) -> str | None:
    """The logical id of the function called ``name``: by literal FunctionName, then by
    logical id, then by a ``!Sub`` FunctionName whose ``${...}`` parts match anything."""
    functions = template.functions
    patterns: list[tuple[int, str]] = []
    for logical, props in functions.items():
        value = props.get("FunctionName")
        if isinstance(value, dict) and "Ref" in value:
            value = _plain(value, template.params)
        if isinstance(value, str) and value == name:
            return logical
        sub = value.get("Fn::Sub") if isinstance(value, dict) else None
        if isinstance(sub, list) and sub:
            sub = sub[0]
        if isinstance(sub, str):
            regex, literal = _sub_pattern(sub)
            if re.fullmatch(regex, name):
                patterns.append((literal, logical))
    if name in functions:
        return name
    if not patterns:
        return None
    # The most specific pattern wins: "${Stack}-data-prep" over "${Stack}-${Name}".
    patterns.sort(reverse=True)
    if len(patterns) > 1 and patterns[0][0] == patterns[1][0]:
        both = ", ".join(sorted(p[1] for p in patterns if p[0] == patterns[0][0]))
        raise DispatchFailed(
            f"{job}: lambda function '{name}' matches the FunctionName of several functions "
            f"({both}); map it in bunsui.local.yaml functions: to choose."
        )
    return patterns[0][1]


def _sub_pattern(text: str) -> tuple[str, int]:
    """A regex for a ``!Sub`` string (``${...}`` parts match anything) and its literal length."""
    regex, literal, at = "", 0, 0
    for match in _SUB_PART.finditer(text):
        fixed = text[at : match.start()]
        regex += re.escape(fixed)
        literal += len(fixed)
        if match.group(1).startswith("!"):  # ${!Name} is the literal text ${Name}
            regex += re.escape("${" + match.group(1)[1:] + "}")
        else:
            regex += ".*"
        at = match.end()
    regex += re.escape(text[at:])
    return regex, literal + len(text) - at
