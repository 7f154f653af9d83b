"""Training budgets: what each approach *may* train (from params) and what it *did* (``budget.json``).

The paper compares approaches at equal cost: every approach that trains an nnU-Net gets
the basis models' schedule (``nnunet.epochs`` × ``nnunet.iterations_per_epoch``
optimizer steps per party). :func:`stitch_ops.stages.plugin.planned_budgets` resolves,
from the params of the active profile, how many steps each approach gets, so a test can
check no approach is starved; every training stage writes what it actually ran to
``metrics/{pair}/{approach}/{trained_on}/fold_{k}/budget.json``::

    {"epochs": 6, "iterations": 150, "samples_seen": 600, "wall_time_s": 81.3, ...}

``iterations`` counts optimizer steps *per party* (federated: each party's steps);
``samples_seen`` is ``iterations × batch size`` (training patches one party's optimizer
saw; double-batched stitch training counts each sample once); ``wall_time_s`` is the
training time summed over attempts (a resumed stage adds the time of the attempt it
resumed from, unless that attempt was killed outright). Extra keys may follow (the batch
size, the number of parties, a stitch training's ``loss_per_epoch``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stitch_ops.outputs import read_json, write_json

logger = logging.getLogger(__name__)

BUDGET_JSON = "budget.json"
WALL_TIME_JSON = "wall_time.json"


@dataclass(frozen=True)
class Budget:
    """What one training ran (the ``budget.json`` contract; ``extra`` adds optional keys)."""

    epochs: int
    iterations: int
    samples_seen: int
    wall_time_s: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of_schedule(cls, epochs: int, iterations_per_epoch: int, batch_size: int, wall_time_s: float,
                    **extra: Any) -> Budget:
        """The budget of ``epochs`` × ``iterations_per_epoch`` steps of ``batch_size`` samples."""
        iterations = int(epochs) * int(iterations_per_epoch)
        return cls(int(epochs), iterations, iterations * int(batch_size), round(float(wall_time_s), 3),
                   {"iterations_per_epoch": int(iterations_per_epoch), "batch_size": int(batch_size), **extra})

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        return {**{k: v for k, v in record.items() if k != "extra"}, **record["extra"]}


def write_budget(path: Path, budget: Budget) -> Path:
    """Write ``budget.json`` whole or not at all (:func:`stitch_ops.outputs.write_json`)."""
    write_json(path, budget.to_json())
    logger.info("training budget %s: %d epochs, %d iterations, %d samples, %.1f s", path, budget.epochs,
                budget.iterations, budget.samples_seen, budget.wall_time_s)
    return path


def read_budget(path: Path) -> Budget:
    """Read a ``budget.json`` back (the four contract keys; the rest into ``extra``)."""
    record = read_json(path, hint="rerun the training stage that writes it")
    keys = ("epochs", "iterations", "samples_seen", "wall_time_s")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{path} is not a budget record: missing {missing}")
    return Budget(*(record.pop(k) for k in keys), extra=record)


class TrainingClock:
    """Wall time of one training summed over its attempts, kept in the (persisted) results folder.

    ``with clock:`` times one attempt; the sum is saved even when the attempt fails, so a
    resumed training reports its whole cost.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / WALL_TIME_JSON
        self._start: float | None = None

    @property
    def seconds(self) -> float:
        """Seconds of the attempts finished so far."""
        if not self.path.is_file():
            return 0.0
        return float(read_json(self.path)["wall_time_s"])

    def __enter__(self) -> TrainingClock:
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None, "TrainingClock exited without being entered"
        total = self.seconds + time.monotonic() - self._start
        write_json(self.path, {"wall_time_s": total})
        self._start = None
