"""The one nnU-Net trainer of the project: nnU-Net's own, with the schedule set from params.

Imports ``nnunetv2`` at module level: import this module only after
:func:`stitch_ops.nnunet.env.configure`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tqdm import tqdm

from stitch_ops.config import NnUNetSchedule
from stitch_ops.outputs import output_file

logger = logging.getLogger(__name__)

BEST_CHECKPOINT = "checkpoint_best.pth"
PROGRESS_PLOT_INTERVAL_S = 60.0
"""nnU-Net redraws ``progress.png`` after every epoch: a 3000 x 5400 pixel figure, about 1.4 s
of CPU (``cProfile`` of a ``smoke`` basis training: 2.8 of its 3.8 s of training).
:class:`ScheduledTrainer` redraws it at most this often, and always after the last epoch, so
the final figure is the one nnU-Net draws; where an epoch takes longer than this (the
``paper`` profile on a GPU), every epoch still draws it."""

# Training-curve columns (as logged to MLflow and written to ``training_log.csv``) and the
# keys of nnU-Net's own logger they come from.
CURVE_KEYS = {"train_loss": "train_losses", "val_loss": "val_losses", "pseudo_dice": "mean_fg_dice",
              "ema_pseudo_dice": "ema_fg_dice", "lr": "lrs"}


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send what nnU-Net ``print``s (device, plans) to this module's debug log instead of
    the console, where it would interleave with the progress bar and DVC's output."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        try:
            yield
        finally:
            text = captured.getvalue().strip()
            if text:
                logger.debug("nnU-Net: %s", text)


def seed_everything(*key: int) -> None:
    """Seed Python's, NumPy's and torch's global generators from ``key`` (e.g. ``(seed, epoch)``).

    nnU-Net draws from the global generators only (network initialisation, the data loader's
    case and patch choice, every augmentation); with augmentation in this process
    (``nnUNet_n_proc_DA=0``) seeding them per epoch makes an epoch's result a function of the
    checkpoint it starts from, so a resumed run equals an uninterrupted one. (With worker
    processes, ``nnUNet_n_proc_DA>0``, nnU-Net's augmentation is not reproducible.)
    """
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
    value = int(words[0]) | int(words[1]) << 32
    random.seed(value)
    np.random.seed(int(words[0]))
    torch.manual_seed(value)


@contextmanager
def global_rng_kept() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global generator states afterwards, so training
    in a caller's process (tests, notebooks) does not change the caller's random streams."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class ScheduledTrainer(nnUNetTrainer):
    """``nnUNetTrainer`` with epochs, iterations and learning rate taken from a
    :class:`~stitch_ops.config.NnUNetSchedule` (instead of one subclass per number), a
    progress bar over the iterations, one epoch callable at a time so federated
    learning can average weights between epochs, seeded epochs (:func:`seed_everything`
    with ``(seed, epoch)``) and checkpoints that are replaced atomically, so that a killed
    run resumes to the same weights as an uninterrupted one.

    nnU-Net's per-epoch messages go to its log file (``training_log_*.txt`` in the output
    folder) only; the console shows the progress bar."""

    seed: int = 0
    _progress_plotted_at: float = -math.inf

    def print_to_log_file(self, *args: object, also_print_to_console: bool = False,
                          add_timestamp: bool = True) -> None:
        super().print_to_log_file(*args, also_print_to_console=False, add_timestamp=add_timestamp)

    def apply_schedule(self, schedule: NnUNetSchedule, seed: int = 0) -> None:
        self.num_epochs = schedule.epochs
        self.num_iterations_per_epoch = schedule.iterations_per_epoch
        self.num_val_iterations_per_epoch = schedule.val_iterations_per_epoch
        self.initial_lr = float(schedule.initial_lr)
        # checkpoint often enough that a killed short run resumes, rarely enough for long ones
        self.save_every = max(1, min(50, schedule.epochs // 10))
        self.seed = seed

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written beside ``filename`` and renamed into place: a run killed
        while saving keeps its previous checkpoint instead of a truncated one.

        ``checkpoint_best.pth`` (the epoch of the best EMA pseudo-Dice, weights and optimizer
        state) is not written: the project exports and evaluates the final epoch's network and
        resumes from ``checkpoint_latest``/``checkpoint_final``, so nothing reads it, and on a
        short schedule it is rewritten almost every epoch (disk and time)."""
        if Path(filename).name == BEST_CHECKPOINT:
            return
        with output_file(filename, required=False) as partial:
            super().save_checkpoint(str(partial))

    def on_epoch_end(self) -> None:
        """nnU-Net's end of an epoch, with ``progress.png`` redrawn only after the last epoch or
        when :data:`PROGRESS_PLOT_INTERVAL_S` have passed since it was last drawn."""
        due = (self.current_epoch >= self.num_epochs - 1
               or time.monotonic() - self._progress_plotted_at >= PROGRESS_PLOT_INTERVAL_S)
        if due:
            super().on_epoch_end()
            self._progress_plotted_at = time.monotonic()
            return
        self.logger.plot_progress_png = lambda output_folder: None  # this epoch only
        try:
            super().on_epoch_end()
        finally:
            del self.logger.plot_progress_png

    def run_epoch(self, progress: tqdm | None = None) -> None:
        """One epoch of nnU-Net training plus its pseudo-validation, as in ``run_training``,
        with the global generators seeded from ``(seed, epoch)``."""
        seed_everything(self.seed, 0, self.current_epoch)
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
        """Train from ``current_epoch`` (0, or where a loaded checkpoint stopped) to the end,
        under one progress bar (iterations, with ETA); ``after_epoch`` is called after each epoch."""
        with quiet_stdout():
            self.on_train_start()
        remaining = (self.num_epochs - self.current_epoch) * self.num_iterations_per_epoch
        with tqdm(total=remaining, desc=f"train fold {self.fold}", unit="it", disable=not progress) as bar:
            while self.current_epoch < self.num_epochs:
                self.run_epoch(bar)
                if after_epoch is not None:
                    after_epoch(self)
        with quiet_stdout():
            self.on_train_end()

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """The training curve at ``epoch`` (completed): losses, pseudo-Dice, learning rate and
        the epoch's wall time, read from nnU-Net's logger."""
        values = {name: float(self.logger.get_value(key, step=epoch)) for name, key in CURVE_KEYS.items()}
        values["epoch_time_s"] = float(self.logger.get_value("epoch_end_timestamps", step=epoch)
                                       - self.logger.get_value("epoch_start_timestamps", step=epoch))
        return values

    def history(self) -> list[dict[str, float]]:
        """The curve of every completed epoch (also those restored from a checkpoint)."""
        return [{"epoch": epoch, **self.epoch_metrics(epoch)} for epoch in range(self.current_epoch)]

    def pseudo_dice(self) -> float:
        """nnU-Net's EMA pseudo-Dice on validation patches at the last epoch (NaN before any)."""
        if self.current_epoch == 0:
            return float(np.nan)
        return float(self.logger.get_value("ema_fg_dice", step=-1))
