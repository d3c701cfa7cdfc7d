"""select-best-function: the best of the grid variant's tuning runs.

Receives ``trials``, the list of the tune fan-out's outputs in item order (each
``{"accuracy": ..., "hyperparameters": {...}}``; a failed run is null), and
returns ``best_hyperparameters`` and ``best_accuracy``. On a tie the earlier
trial wins, so the choice is the same every time.
"""

from __future__ import annotations

from typing import Any

from functions.events import SelectBest
from mlcommon.responses import Refused, endpoint


@endpoint(SelectBest)
def handler(event: SelectBest) -> dict[str, Any]:
    usable = [
        (index, trial)
        for index, trial in enumerate(event.trials)
        if trial is not None
        and isinstance(trial.get(event.metric), int | float)
        and isinstance(trial.get("hyperparameters"), dict)
    ]
    if not usable:
        raise Refused(
            422,
            f"no trial has a numeric {event.metric!r} and its hyperparameters "
            f"({len(event.trials)} trials)",
        )
    index, best = max(usable, key=lambda pair: (pair[1][event.metric], -pair[0]))
    ranking = sorted(usable, key=lambda pair: (-pair[1][event.metric], pair[0]))
    return {
        "best_hyperparameters": best["hyperparameters"],
        "best_accuracy": best[event.metric],
        "best_trial": index,
        "metric": event.metric,
        "trials_used": len(usable),
        "trials_failed": len(event.trials) - len(usable),
        "ranking": [
            {"trial": i, event.metric: t[event.metric], "hyperparameters": t["hyperparameters"]}
            for i, t in ranking
        ],
    }
