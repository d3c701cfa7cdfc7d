"""What importing a handler module loads: the cold start's share that is Bunsui's to keep small.

Each case imports handler modules in a fresh interpreter (this process has imported
everything already) and reads back which modules it loaded and which pydantic models
built their validators (``__pydantic_complete__``). The figures are bench/coldstart.py's;
these tests hold the shape that gives them:

- the history projector, invoked for every batch of the table's stream, never loads the
  pipeline language (its models, the YAML loader, parameters) nor the reducer;
- the functions whose first event runs the reducer load it at import, in the init phase,
  rather than on that event;
- the correlator's models of each service's events, and the API's models, build on first
  use: a function builds only those of the events and requests it sees;
- no function imports boto3 (with s3transfer and multiprocessing): botocore's session
  makes the same clients.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
LANGUAGE = ("engine.pipeline", "engine.jobtypes", "engine.loader", "engine.parameters", "yaml")
REDUCER = ("engine.reducer", "engine.loader")
PROBE = """
import importlib, json, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
correlate = sys.modules["engine.aws.correlate"]
models = sys.modules.get("handlers.models")
print(json.dumps({
    "modules": sorted(sys.modules),
    "built": sorted(
        f"{module.__name__}.{name}"
        for module in filter(None, (correlate, models))
        for name, value in vars(module).items()
        if getattr(value, "__pydantic_complete__", False) and value.__module__ == module.__name__
    ),
}))
"""


def imported(*modules: str) -> dict[str, list[str]]:
    """What a fresh interpreter holds after importing ``modules`` (src/ on its path)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(modules)],
        cwd=SRC,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_history_projector_loads_neither_the_language_nor_the_reducer() -> None:
    found = imported("handlers.history")
    assert [m for m in (*LANGUAGE, *REDUCER) if m in found["modules"]] == []
    # What it does use is there: its Powertools batch processor and the engine's adapters.
    assert {"aws_lambda_powertools.utilities.batch", "engine.aws.history"} <= set(found["modules"])


def test_functions_that_reduce_load_the_reducer_at_import() -> None:
    for handler in ("handlers.reducer", "handlers.sweeper", "handlers.start", "handlers.api"):
        found = imported(handler)
        missing = [m for m in (*REDUCER, *LANGUAGE) if m not in found["modules"]]
        assert missing == [], f"{handler} leaves {missing} to its first event"


def test_no_service_event_model_nor_boto3_at_import() -> None:
    found = imported("handlers.reducer", "handlers.history", "handlers.sweeper", "handlers.api")
    assert [m for m in ("boto3", "s3transfer", "multiprocessing") if m in found["modules"]] == []
    assert [name for name in found["built"] if name.startswith("engine.aws.correlate.")] == []


def test_start_and_sweeper_build_none_of_the_api_models_at_import() -> None:
    found = imported("handlers.start", "handlers.sweeper")
    assert [name for name in found["built"] if name.startswith("handlers.models.")] == []
