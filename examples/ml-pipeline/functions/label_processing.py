"""label-processing-function: the labels half of the parallel preparation.

Writes y (churn) and the row ids to ``output_path``, and the test rows' labels
to ``s3://<bucket>/test/<model>/labels``.
"""

from __future__ import annotations

from typing import Any

from functions.events import PreparePart
from functions.prepare import prepare_part
from mlcommon.datasets import SPLITS
from mlcommon.responses import endpoint


@endpoint(PreparePart)
def handler(event: PreparePart) -> dict[str, Any]:
    prepared, test_path = prepare_part(event, "labels")
    counts = {s: {str(c): int((prepared.y[s] == c).sum()) for c in (0, 1)} for s in SPLITS}
    return {"label_counts": counts, "labels_path": event.output_path, "test_labels_path": test_path}
