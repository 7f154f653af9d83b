"""Fine-tuning another party's model on own data (``a→b``) with the paper's warm-up.

The other party's model was trained with nnU-Net's polynomial schedule
``lr(e) = lr0 · (1 − e/E0)^0.9``, whose last non-zero value (epoch ``E0 − 1``) is
``lr0 · (1/E0)^0.9``. Fine-tuning starts from that value, interpolates linearly to the new
base learning rate over ``W`` warm-up epochs, then decays polynomially over the remaining
epochs::

    lr(e) = start + (base − start) · e / W             for e < W
    lr(e) = base · (1 − (e − W) / (E − W))^0.9          for W ≤ e < E

so ``lr(0) = start``, ``lr(W) = base`` and the last epoch's rate is still positive.
The base rate is well below nnU-Net's 1e-2 (the paper: the smallest power of ten that
still makes progress, 1e-3 by default; :mod:`stitch_ops.baselines.sweep` searches it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.optim.lr_scheduler import _LRScheduler

from stitch_ops.config import NnUNetSchedule
from stitch_ops.errors import UserError

logger = logging.getLogger(__name__)

POLY_EXPONENT = 0.9


def last_nonzero_lr(initial_lr: float, epochs: int, exponent: float = POLY_EXPONENT) -> float:
    """The learning rate of the last epoch of nnU-Net's polynomial schedule."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return float(initial_lr) * (1.0 / epochs) ** exponent


@dataclass(frozen=True)
class WarmupSchedule:
    """Linear warm-up from ``start_lr`` to ``base_lr`` over ``warmup_epochs``, then
    polynomial decay of ``base_lr`` over the remaining epochs of ``epochs``."""

    start_lr: float
    base_lr: float
    warmup_epochs: int
    epochs: int
    exponent: float = POLY_EXPONENT

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        if self.start_lr <= 0 or self.base_lr <= 0:
            raise ValueError(f"learning rates must be positive, got start {self.start_lr}, base {self.base_lr}")

    def lr(self, epoch: int) -> float:
        """Learning rate of ``epoch`` (0-based)."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch must be in [0, {self.epochs}), got {epoch}")
        if epoch < self.warmup_epochs:
            return self.start_lr + (self.base_lr - self.start_lr) * epoch / self.warmup_epochs
        decay_epochs = self.epochs - self.warmup_epochs
        return self.base_lr * (1 - (epoch - self.warmup_epochs) / decay_epochs) ** self.exponent


class WarmupPolyLRScheduler(_LRScheduler):
    """nnU-Net-style scheduler (``step(epoch)`` sets the rate of that epoch) for a
    :class:`WarmupSchedule`."""

    def __init__(self, optimizer: Any, schedule: WarmupSchedule):
        self.schedule = schedule
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step: int | None = None) -> None:  # noqa: D102 (torch's signature)
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = self.schedule.lr(min(max(current_step, 0), self.schedule.epochs - 1))
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


@dataclass(frozen=True)
class FinetuneSchedule(NnUNetSchedule):
    """An nnU-Net schedule (``initial_lr`` = the new base rate) plus the warm-up."""

    warmup_epochs: int = 1
    warmup_start_lr: float = 1e-3

    def warmup(self) -> WarmupSchedule:
        return WarmupSchedule(float(self.warmup_start_lr), float(self.initial_lr), self.warmup_epochs, self.epochs)


def finetune_schedule(basis: NnUNetSchedule, *, base_lr: float, warmup_epochs: int, epochs: int,
                      iterations_per_epoch: int, source_epochs: int | None = None,
                      source_initial_lr: float | None = None) -> FinetuneSchedule:
    """The fine-tuning schedule of a model that was trained with ``basis`` (or with
    ``source_epochs``/``source_initial_lr`` when those are known from the model)."""
    start = last_nonzero_lr(source_initial_lr or basis.initial_lr, source_epochs or basis.epochs)
    fields = {k: getattr(basis, k) for k in NnUNetSchedule.__dataclass_fields__}
    fields.update(epochs=epochs, iterations_per_epoch=iterations_per_epoch, initial_lr=float(base_lr))
    return FinetuneSchedule(**fields, warmup_epochs=warmup_epochs, warmup_start_lr=start)


def check_same_architecture(model_plans: dict[str, Any], plans: dict[str, Any], configuration: str,
                            model: Path) -> None:
    """Refuse to fine-tune when the model's architecture differs from the training plans'."""
    theirs = model_plans["configurations"].get(configuration, {}).get("architecture")
    ours = plans["configurations"].get(configuration, {}).get("architecture")
    if theirs != ours:
        raise UserError(f"the model in {model} has a different {configuration} architecture than the plans "
                         f"its fine-tuning data was preprocessed with; preprocess with the model's plans "
                         f"(`python -m stitch_ops.baselines transfer-plans`)")
