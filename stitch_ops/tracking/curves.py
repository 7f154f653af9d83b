"""Training curves as files: one CSV row per epoch (or federated round), next to the model.

``training_log.csv`` (columns ``epoch`` and the curve's values, e.g. ``train_loss``,
``val_loss``, ``pseudo_dice``, ``lr``) is what ``dvc plots`` draws; the same values go to
the model's live MLflow run (:mod:`stitch_ops.tracking.live`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from stitch_ops.outputs import output_file

TRAINING_LOG = "training_log.csv"
"""Per-epoch training curve written next to every trained model (a DVC plot)."""


def write_curve(path: Path, rows: Sequence[Mapping[str, float]]) -> None:
    """Write per-epoch rows (first column ``epoch``) as CSV, replacing ``path`` atomically."""
    columns = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"})
    with output_file(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "epoch" else v) for k, v in row.items()})


def read_curve(path: Path) -> list[dict[str, float]]:
    """Rows of a curve written by :func:`write_curve` (empty if there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def publish_curve(curve: Path, target: Path) -> Path:
    """Copy a model's curve to where ``dvc.yaml`` declares it as a plot (atomically); the
    model folder keeps its own copy, which a rerun of an already trained stage replays."""
    write_curve(target, read_curve(curve))
    return target
