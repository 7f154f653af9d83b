"""The one nnU-Net trainer of the project: nnU-Net's own, with the schedule set from params.

Imports ``nnunetv2`` at module level: import this module only after
:func:`stitch_ops.nnunet.env.configure`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tqdm import tqdm

from stitch_ops.config import NnUNetSchedule


class ScheduledTrainer(nnUNetTrainer):
    """``nnUNetTrainer`` with epochs, iterations and learning rate taken from a
    :class:`~stitch_ops.config.NnUNetSchedule` (instead of one subclass per number), a
    progress bar over the iterations, and one epoch callable at a time so federated
    learning can average weights between epochs."""

    def apply_schedule(self, schedule: NnUNetSchedule) -> None:
        self.num_epochs = schedule.epochs
        self.num_iterations_per_epoch = schedule.iterations_per_epoch
        self.num_val_iterations_per_epoch = schedule.val_iterations_per_epoch
        self.initial_lr = float(schedule.initial_lr)
        # checkpoint often enough that a killed short run resumes, rarely enough for long ones
        self.save_every = max(1, min(50, schedule.epochs // 10))

    def run_epoch(self, progress: tqdm | None = None) -> None:
        """One epoch of nnU-Net training plus its pseudo-validation, as in ``run_training``."""
        self.on_epoch_start()
        self.on_train_epoch_start()
        train_outputs = []
        for _ in range(self.num_iterations_per_epoch):
            train_outputs.append(self.train_step(next(self.dataloader_train)))
            if progress is not None:
                progress.update()
                progress.set_postfix(epoch=self.current_epoch, loss=f"{train_outputs[-1]['loss']:.3f}")
        self.on_train_epoch_end(train_outputs)
        with torch.no_grad():
            self.on_validation_epoch_start()
            val_outputs = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
            self.on_validation_epoch_end(val_outputs)
        self.on_epoch_end()

    def run_training(self, progress: bool = True,
                     after_epoch: Callable[[ScheduledTrainer], None] | None = None) -> None:
        """Train from ``current_epoch`` (0, or where a loaded checkpoint stopped) to the end."""
        self.on_train_start()
        remaining = (self.num_epochs - self.current_epoch) * self.num_iterations_per_epoch
        with tqdm(total=remaining, desc=f"train fold {self.fold}", unit="it", disable=not progress) as bar:
            while self.current_epoch < self.num_epochs:
                self.run_epoch(bar)
                if after_epoch is not None:
                    after_epoch(self)
        self.on_train_end()

    def pseudo_dice(self) -> float:
        """nnU-Net's EMA pseudo-Dice on validation patches at the last epoch (NaN before any)."""
        if self.current_epoch == 0:
            return float(np.nan)
        return float(self.logger.get_value("ema_fg_dice", step=-1))
