"""`make demo`: the product's ML pipeline, run for real on this machine.

Generates the churn data (once), runs `bunsui run ml-pipeline.yaml` with the
product document's parameters — live progress, then the summary — and ends
with the model's metrics, whether it was deployed, which version the
registry has live, and how to inspect the session.

    python demo.py                    # the product's parameters (threshold 0.85)
    python demo.py --threshold 0.99   # a bar the model cannot clear: deploy is skipped
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNSUI = Path(sys.executable).with_name("bunsui")
DATA = HERE / ".local-s3" / "data-bucket" / "customer_data.csv"


def bunsui(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUNSUI), *args], cwd=HERE, text=True, capture_output=capture, check=False
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", default="0.85", help="evaluation_threshold (default 0.85)")
    threshold = parser.parse_args().threshold
    os.environ.setdefault("BUNSUI_HOME", str(HERE / ".bunsui"))
    if not DATA.exists():
        subprocess.run([sys.executable, "-m", "data.generate"], cwd=HERE, check=True)
    run = bunsui(
        "run",
        "ml-pipeline.yaml",
        "--parameters",
        "model_name=customer_churn_model",
        "training_data_path=s3://data-bucket/customer_data.csv",
        "model_version=v1.1",
        'hyperparameters={"max_depth": 10, "n_estimators": 100}',
        f"evaluation_threshold={threshold}",
    )
    listed = json.loads(bunsui("session", "list", "--format", "json", capture=True).stdout)
    session_id = listed[0]["session_id"]
    status = json.loads(
        bunsui(
            "session", "status", "--session-id", session_id, "--format", "json", capture=True
        ).stdout
    )
    jobs = {job["id"]: job for job in status["jobs"]}
    evaluation = jobs["evaluate_model"].get("output") or {}
    print()
    print(f"session {session_id}: {status['status']} in {status['duration']:.1f}s")
    for job in status["jobs"]:
        took = f"{job['duration']:.1f}s" if job.get("duration") is not None else "-"
        print(f"  {job['id']:<16} {job['status']:<16} {took}")
    metrics = evaluation.get("evaluation_metrics") or {}
    if metrics:
        print("model metrics (held-out test rows):")
        for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
            if isinstance(metrics.get(name), int | float):
                print(f"  {name:<10} {metrics[name]:.4f}")
    deployed = jobs["deploy_model"]["status"] == "succeeded"
    print(
        f"deployed: {'yes' if deployed else 'no'} "
        f"(accuracy {evaluation.get('evaluation_accuracy', 0):.4f}, threshold {threshold})"
    )
    live = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcommon.registry",
            "--storage",
            ".local-s3",
            "live",
            "customer_churn_model",
        ],
        cwd=HERE,
        text=True,
        capture_output=True,
        check=False,
    )
    if live.returncode == 0 and live.stdout.strip():
        print(f"live version in the registry: {live.stdout.strip()}")
    print("inspect it with:")
    print(
        f"  cd examples/ml-pipeline && BUNSUI_HOME=.bunsui ../../.venv/bin/bunsui "
        f"session status --session-id {session_id}"
    )
    print(
        f"  cd examples/ml-pipeline && BUNSUI_HOME=.bunsui ../../.venv/bin/bunsui "
        f"logs tail --session-id {session_id}"
    )
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
