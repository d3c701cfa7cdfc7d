"""Cold start of Bunsui's Lambda functions: each handler module's import, and the reducer's CPU
time per event.

Run: .venv/bin/python bench/coldstart.py [--runs 7] [--python PATH ...] [--events-only]
     [--imports-only] [--instructions] [--src DIR] [--deps DIR] [--json FILE]
Prints Markdown tables for docs/benchmarks.md.

**Import.** A Lambda container imports its handler module once, before its first event (the
init phase); every new container pays it again. It is measured the way the function pays it:
one fresh interpreter per run (``python -X importtime``), with the environment Lambda gives a
function (``LAMBDA_TASK_ROOT`` set, so Powertools' Tracer is on and patches what it patches
when deployed), against a directory laid out as ``sam build`` lays out the functions'
``CodeUri: src/``: the pins of ``src/requirements.txt`` installed by pip for that interpreter,
beside ``engine/`` and ``handlers/``. Two packages:

- *as built*: no bytecode, which is what ``sam build`` ships. ``/var/task`` is read-only, so
  the function compiles every module it imports on every cold start, and keeps nothing.
- *bytecode*: the same files compiled beforehand (``compileall``, checked-hash ``.pyc``, the
  kind that stays valid after the zip's fixed timestamps).

Each figure is the median of ``--runs`` runs: the import's wall time as ``-X importtime``
reports it, and the child's CPU time (user + system), which other work on a shared machine
disturbs less than the wall clock. ``--instructions`` also counts the instructions each
import of the bytecode package executes (valgrind's callgrind, one run: the count does not
depend on what else the machine does, so a before-and-after holds on a busy machine).
"Top contributors" sums ``importtime``'s self time by top-level package. The interpreters
are this one and every ``--python`` (e.g. pyenv's 3.13, the deployed runtime's version);
the package is built once per interpreter and kept under the temporary directory.
``--deps DIR`` takes the dependencies from a directory instead (a ``sam build`` output
built for this machine's architecture: the template's is arm64); ``--src DIR`` measures
another tree's ``engine/`` and ``handlers/`` (an earlier commit's, for a before-and-after).

**Reducer CPU per event.** A real session on the moto-server flow
(``tests/e2e/aws/harness.py``): a 50-job chain and a 250-item fan-out, after a warm-up
session. Each reducer invocation is timed with the thread's CPU clock, less the time moto
spent answering its requests in process (that is AWS's work, not the function's). The
history projector's invocations are timed the same way. The log bytes each invocation
writes (Powertools' JSON lines and EMF metrics) are counted too: CloudWatch Logs bills them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
REQUIREMENTS = SRC / "requirements.txt"
HANDLERS = ("api", "reducer", "start", "history", "sweeper", "plan")
TARGET_MS = 300.0
"""The goal for a handler's import, in milliseconds."""
CODE_DIRS = ("engine", "handlers")
"""What of ``src/`` the functions import (``bunsui/`` is the CLI's)."""
LAMBDA_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "bunsui-bench",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_LOG_FORMAT": "JSON",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_SERVICE_NAME": "bunsui",
    "POWERTOOLS_METRICS_NAMESPACE": "Bunsui",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "PATH": "/usr/bin:/bin",
}
"""What Lambda and template.yaml's Globals put in a function's environment (the import reads
no ``BUNSUI_*`` variable; ``LAMBDA_TASK_ROOT`` is added per package)."""


# ---------------------------------------------------------------------- packages


def cache_tag(python: str) -> str:
    """The interpreter's bytecode tag (``cpython-311``): one package per tag."""
    return subprocess.check_output(
        [python, "-c", "import sys; print(sys.implementation.cache_tag)"], text=True
    ).strip()


def dependencies(python: str, cache: Path, requirements: Path = REQUIREMENTS) -> Path:
    """The pinned requirements installed for ``python`` without bytecode (built once)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    target = cache / f"deps-{cache_tag(python)}-{digest}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    command = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--no-compile", "--target", str(target), "-r", str(requirements)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip could not install {requirements}:\n{done.stderr[-3000:]}")
    (target / ".complete").touch()
    return target


def _copy(source: Path, target: Path) -> None:
    """Hard links where the file system allows (the trees are large and only read)."""
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        copy_function=_link,
        dirs_exist_ok=True,
    )


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@dataclass(frozen=True)
class Package:
    interpreter: str
    version: str
    as_built: Path
    bytecode: Path


def package(python: str, cache: Path, src: Path = SRC, deps: Path | None = None) -> Package:
    """Both packages for ``python``, with ``src``'s ``engine/`` and ``handlers/``."""
    deps = deps or dependencies(python, cache, src / "requirements.txt")
    tag = cache_tag(python)
    as_built, bytecode = cache / f"as-built-{tag}", cache / f"bytecode-{tag}"
    for directory in (as_built, bytecode):
        shutil.rmtree(directory, ignore_errors=True)
        _copy(deps, directory)
        for name in CODE_DIRS:
            shutil.rmtree(directory / name, ignore_errors=True)  # a sam build's own copy
            _copy(src / name, directory / name)
    subprocess.run(
        [python, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", str(bytecode)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    version = subprocess.check_output([python, "-c", "import sys; print(sys.version.split()[0])"])
    return Package(python, version.decode().strip(), as_built, bytecode)


# ---------------------------------------------------------------------- imports


@dataclass(frozen=True)
class Sample:
    """One import of one handler in a fresh interpreter."""

    wall_ms: float
    """The handler module's cumulative import time, as ``-X importtime`` reports it."""
    cpu_ms: float
    """The whole child process's user + system CPU time."""
    by_package: dict[str, float]
    """Self time (ms) by top-level package."""
    modules: int


def import_once(python: str, directory: Path, module: str) -> Sample:
    """Import ``module`` from ``directory`` in a fresh interpreter, as Lambda's runtime does
    (no site-packages of the interpreter's own, nothing written next to the code)."""
    code = f"import sys; sys.path.insert(0, {str(directory)!r}); import {module}"
    env = {**LAMBDA_ENV, "LAMBDA_TASK_ROOT": str(directory)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [python, "-I", "-S", "-B", "-X", "importtime", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        cwd=directory,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"importing {module} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    total, by_package, modules = parse_importtime(done.stderr, module)
    return Sample(total / 1000, cpu * 1000, by_package, modules)


def instructions(python: str, directory: Path, module: str) -> int:
    """Instructions executed importing ``module`` (valgrind's callgrind; about 50 times
    slower than the import itself)."""
    code = f"import sys; sys.path.insert(0, {str(directory)!r}); import {module}"
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python]
    done = subprocess.run(
        [*command, "-I", "-S", "-B", "-c", code],
        env={**LAMBDA_ENV, "LAMBDA_TASK_ROOT": str(directory)},
        capture_output=True,
        text=True,
        cwd=directory,
    )
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise SystemExit(f"valgrind counted nothing for {module}:\n{done.stderr[-2000:]}")


def parse_importtime(text: str, module: str) -> tuple[float, dict[str, float], int]:
    """``-X importtime``'s report -> (the module's cumulative µs, self ms by top-level
    package, modules imported)."""
    total = 0.0
    by_package: dict[str, float] = defaultdict(float)
    modules = 0
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.split(":", 1)[1].split("|")
        by_package[name.strip().split(".")[0]] += int(own) / 1000
        modules += 1
        if name.strip() == module and not name.startswith("  "):
            total = float(cumulative)
    return total, dict(by_package), modules


@dataclass
class ImportFigures:
    """The medians of one handler in one package."""

    handler: str
    wall_ms: float
    cpu_ms: float
    modules: int
    fastest_ms: float
    """The least disturbed run's wall time."""
    top: list[tuple[str, float]] = field(default_factory=list)


def measure_imports(directory: Path, python: str, runs: int) -> list[ImportFigures]:
    """Each handler, ``runs`` times, interleaved (a burst of other work on the machine then
    touches every handler alike)."""
    samples: dict[str, list[Sample]] = {name: [] for name in HANDLERS}
    import_once(python, directory, "json")  # the page cache, warm for everyone
    for _ in range(runs):
        for name in HANDLERS:
            samples[name].append(import_once(python, directory, f"handlers.{name}"))
    figures = []
    for name, found in samples.items():
        packages = {p for s in found for p in s.by_package}
        medians = {p: statistics.median(s.by_package.get(p, 0.0) for s in found) for p in packages}
        top = sorted(medians.items(), key=lambda item: -item[1])[:6]
        figures.append(
            ImportFigures(
                name,
                statistics.median(s.wall_ms for s in found),
                statistics.median(s.cpu_ms for s in found),
                found[0].modules,
                min(s.wall_ms for s in found),
                top,
            )
        )
    return figures


def import_tables(package_: Package, as_built: list[ImportFigures], bytecode: list[ImportFigures]):
    """Two Markdown tables: the figures, and the top contributors of the bytecode package."""
    lines = [
        f"Python {package_.version} ({package_.interpreter}), {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "| handler | modules | as built: wall (fastest) | as built: CPU | bytecode: wall (fastest) "
        "| bytecode: CPU | under 300 ms (bytecode, median wall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for raw, compiled in zip(as_built, bytecode, strict=True):
        met = "yes" if compiled.wall_ms < TARGET_MS else "**no**"
        lines.append(
            f"| handlers.{raw.handler} | {compiled.modules} "
            f"| {raw.wall_ms:.0f} ms ({raw.fastest_ms:.0f}) | {raw.cpu_ms:.0f} ms "
            f"| {compiled.wall_ms:.0f} ms ({compiled.fastest_ms:.0f}) | {compiled.cpu_ms:.0f} ms "
            f"| {met} |"
        )
    lines += [
        "",
        "| handler | top contributors, bytecode (self time by package) |",
        "| --- | --- |",
    ]
    for compiled in bytecode:
        cells = ", ".join(f"{name} {ms:.0f} ms" for name, ms in compiled.top)
        lines.append(f"| handlers.{compiled.handler} | {cells} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- handlers at work


@dataclass
class Meter:
    """What one handler's invocations cost the function: its CPU time, without the time
    moto spent answering its requests in process, and the log bytes it wrote.

    Install with :meth:`wrap` after the harness started (Powertools reads its settings
    when the handler module is imported) and before the handler's first invocation.
    """

    name: str
    cpu_ms: list[float] = field(default_factory=list)
    log_bytes: list[int] = field(default_factory=list)
    log_lines: list[int] = field(default_factory=list)
    records: list[int] = field(default_factory=list)
    """Records per invocation (a stream batch's); 1 for an EventBridge event."""
    counting: bool = True
    original: Any = None

    def reset(self) -> None:
        self.cpu_ms.clear()
        self.log_bytes.clear()
        self.log_lines.clear()
        self.records.clear()

    def wrap(self, module: Any, aws_time: Callable[[], float]) -> None:
        """Replace ``module.handler`` with a timed one whose logs go to a counting sink."""
        sink = _Sink()
        logger = getattr(module, "logger", None)
        if logger is not None:
            logger.registered_handler.setStream(sink)
        original = self.original = module.handler

        def timed(event: Any, context: Any) -> Any:
            lines, size = sink.lines, sink.size
            aws_before, started = aws_time(), time.thread_time()
            try:
                with contextlib.redirect_stdout(sink):  # EMF metrics are printed
                    return original(event, context)
            finally:
                spent = time.thread_time() - started - (aws_time() - aws_before)
                if self.counting:
                    self.cpu_ms.append(spent * 1000)
                    self.log_bytes.append(sink.size - size)
                    self.log_lines.append(sink.lines - lines)
                    records = event.get("Records") if isinstance(event, dict) else None
                    self.records.append(len(records) if isinstance(records, list) else 1)

        module.handler = timed

    def summary(self) -> dict[str, float]:
        cpu = sorted(self.cpu_ms)
        if not cpu:
            return {"invocations": 0}
        return {
            "invocations": len(cpu),
            "records": sum(self.records),
            "cpu_ms_median": statistics.median(cpu),
            "cpu_ms_mean": statistics.fmean(cpu),
            "cpu_ms_p90": cpu[int(0.9 * (len(cpu) - 1))],
            "log_bytes_mean": statistics.fmean(self.log_bytes),
            "log_lines_mean": statistics.fmean(self.log_lines),
        }


class _Sink(io.TextIOBase):
    """A stream that keeps the count of what is written, and nothing else."""

    def __init__(self) -> None:
        self.size = 0
        self.lines = 0

    def write(self, text: str) -> int:
        self.size += len(text.encode())
        self.lines += text.count("\n")
        return len(text)

    def writable(self) -> bool:
        return True


class MotoClock:
    """The thread CPU time spent inside moto's in-process dispatcher (AWS's side of each
    request the handlers make), so that it can be taken off the handlers' own."""

    def __init__(self) -> None:
        self.spent = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[MotoClock]:
        from tests.e2e.aws import direct

        stubber = direct._stubber
        original = stubber.process_request

        def process_request(request: Any) -> Any:
            started = time.thread_time()
            try:
                return original(request)
            finally:
                self.spent += time.thread_time() - started

        stubber.process_request = process_request  # type: ignore[method-assign]
        try:
            yield self
        finally:
            del stubber.process_request  # the class's own again

    def __call__(self) -> float:
        return self.spent


@contextlib.contextmanager
def metered_harness(*, quiet: bool = False) -> Iterator[tuple[Any, dict[str, Meter]]]:
    """An AwsHarness with the reducer's and the history projector's invocations metered
    (``quiet=False``: their INFO logs and metrics on, as deployed)."""
    sys.path[:0] = [str(SRC), str(ROOT)]
    import importlib

    from tests.e2e.aws.harness import AwsHarness
    from tests.e2e.aws.services import JobCode

    jobs = ROOT / "tests" / "e2e" / "aws" / "jobs"
    clock = MotoClock()
    with clock.installed(), AwsHarness([JobCode(jobs)], quiet=quiet) as harness:
        meters = {}
        for name in ("reducer", "history"):
            module = importlib.import_module(f"handlers.{name}")
            meters[name] = Meter(name)
            meters[name].wrap(module, clock)
        try:
            yield harness, meters
        finally:
            for name, meter in meters.items():
                importlib.import_module(f"handlers.{name}").handler = meter.original


def play(harness: Any, document: str) -> str:
    """Store the pipeline, start a session through the API and play it to its end."""
    status, body = harness.api("POST", "/pipelines", {"document": document})
    assert status == 201, body
    status, body = harness.api("POST", "/sessions", {"pipeline": body["name"]})
    assert status == 201, body
    session_id = body["session"]["id"]
    harness.settle()
    status, body = harness.api("GET", f"/sessions/{session_id}")
    return str(body["session"]["status"])


def lambda_pipeline(name: str, jobs: list[tuple[str, list[str], str]]) -> str:
    """A pipeline of no-op Lambda jobs (the flow's ``flow-noop`` function)."""
    lines = ['version: "1.1"', f"name: {name}", "jobs:"]
    for job_id, parents, extra in jobs:
        lines += [f"  - id: {job_id}", "    type: lambda"]
        if parents:
            lines.append(f"    depends_on: [{', '.join(parents)}]")
        if extra:
            lines.append(f"    {extra}")
        lines += ["    parameters:", "      function_name: flow-noop", "      payload: {item: 1}"]
    return "\n".join(lines) + "\n"


def event_figures(chain: int = 50, fan_out: int = 250) -> dict[str, dict[str, float]]:
    """Reducer and history CPU per invocation, warm, over a chain and a fan-out session."""
    chain_doc = lambda_pipeline(
        "cold-chain", [(f"c{i}", [f"c{i - 1}"] if i else [], "") for i in range(chain)]
    )
    items = ", ".join(str(i) for i in range(fan_out))
    fan_doc = lambda_pipeline(
        "cold-fan", [("each", [], f"for_each: [{items}]"), ("total", ["each"], "")]
    )
    warm = lambda_pipeline("cold-warm", [("a", [], ""), ("b", ["a"], ""), ("c", ["a"], "")])
    with metered_harness() as (harness, meters):
        for meter in meters.values():
            meter.counting = False
        with contextlib.redirect_stdout(io.StringIO()):
            outcome = play(harness, warm)
        if outcome != "succeeded":
            raise SystemExit("the warm-up session did not succeed")
        for meter in meters.values():
            meter.counting = True
        for document in (chain_doc, fan_doc):
            with contextlib.redirect_stdout(io.StringIO()):  # the API's metric lines
                outcome = play(harness, document)
            if outcome != "succeeded":
                raise SystemExit("a measured session did not succeed")
        return {name: meter.summary() for name, meter in meters.items()}


def event_table(figures: dict[str, dict[str, float]]) -> str:
    lines = [
        "| function | invocations | records | CPU per invocation: median | mean | p90 "
        "| log bytes per invocation | log lines per invocation |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {name} | {f['invocations']:,} | {f['records']:,} | {f['cpu_ms_median']:.2f} ms "
            f"| {f['cpu_ms_mean']:.2f} ms | {f['cpu_ms_p90']:.2f} ms | {f['log_bytes_mean']:.0f} "
            f"| {f['log_lines_mean']:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="imports of each handler")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        help="another interpreter to measure (e.g. $(pyenv prefix 3.13.0)/bin/python)",
    )
    parser.add_argument("--imports-only", action="store_true")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions too (valgrind)"
    )
    parser.add_argument("--events-only", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bunsui-cold")
    parser.add_argument("--src", type=Path, default=SRC, help="the tree of engine/ and handlers/")
    parser.add_argument("--deps", type=Path, help="dependencies already installed (no pip)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report: dict[str, Any] = {"imports": [], "events": None}
    if not args.events_only:
        args.cache.mkdir(parents=True, exist_ok=True)
        for python in [sys.executable, *args.python]:
            built = package(python, args.cache, args.src.resolve(), args.deps)
            raw = measure_imports(built.as_built, python, args.runs)
            compiled = measure_imports(built.bytecode, python, args.runs)
            print(import_tables(built, raw, compiled), end="\n\n", flush=True)
            counted = {}
            if args.instructions:
                for name in HANDLERS:
                    counted[name] = instructions(python, built.bytecode, f"handlers.{name}")
                cells = ", ".join(f"handlers.{n} {c / 1e9:.2f} G" for n, c in counted.items())
                print(f"Instructions, bytecode: {cells}", end="\n\n", flush=True)
            report["imports"].append(
                {
                    "python": built.version,
                    "interpreter": python,
                    "as_built": [asdict(f) for f in raw],
                    "bytecode": [asdict(f) for f in compiled],
                    "instructions": counted,
                }
            )
    if not args.imports_only:
        report["events"] = event_figures()
        print(event_table(report["events"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
