"""nnU-Net trainers of the baselines. Imports ``nnunetv2`` at module level: import this
module only after :func:`stitch_ops.nnunet.env.configure`."""

from __future__ import annotations

import torch

from stitch_ops.baselines.finetune import FinetuneSchedule, WarmupPolyLRScheduler, WarmupSchedule
from stitch_ops.config import NnUNetSchedule
from stitch_ops.nnunet.trainer import ScheduledTrainer


class FinetuneTrainer(ScheduledTrainer):
    """nnU-Net's SGD (Nesterov, momentum 0.99) with the fine-tuning warm-up schedule."""

    warmup: WarmupSchedule

    def apply_schedule(self, schedule: NnUNetSchedule, seed: int = 0) -> None:
        super().apply_schedule(schedule, seed)
        if isinstance(schedule, FinetuneSchedule):
            self.warmup = schedule.warmup()
        else:  # no warm-up: nnU-Net's polynomial schedule from initial_lr
            self.warmup = WarmupSchedule(self.initial_lr, self.initial_lr, 0, schedule.epochs)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, WarmupPolyLRScheduler]:
        optimizer = torch.optim.SGD(self.network.parameters(), self.warmup.lr(0), weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, WarmupPolyLRScheduler(optimizer, self.warmup)
