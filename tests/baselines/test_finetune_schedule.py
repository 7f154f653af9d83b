"""The fine-tuning warm-up schedule, checked at its boundaries by hand."""

from __future__ import annotations

import pytest
import torch

from stitch_ops.baselines.config import FinetuneParams
from stitch_ops.baselines.finetune import (
    FinetuneSchedule,
    WarmupPolyLRScheduler,
    WarmupSchedule,
    finetune_schedule,
    last_nonzero_lr,
)
from stitch_ops.config import ConfigError, NnUNetSchedule


def test_last_nonzero_lr_of_nnunet_default_schedule():
    # lr0 (1 - 999/1000)^0.9 = 0.01 * 0.001^0.9
    assert last_nonzero_lr(0.01, 1000) == pytest.approx(0.01 * 0.001 ** 0.9)
    assert last_nonzero_lr(0.01, 1000) == pytest.approx(1.9953e-5, rel=1e-4)
    assert last_nonzero_lr(0.01, 1) == pytest.approx(0.01)  # a one-epoch schedule never decays


def test_warmup_boundaries():
    schedule = WarmupSchedule(start_lr=2e-5, base_lr=1e-3, warmup_epochs=10, epochs=110)
    assert schedule.lr(0) == pytest.approx(2e-5)  # the original schedule's last non-zero rate
    assert schedule.lr(5) == pytest.approx(2e-5 + (1e-3 - 2e-5) / 2)  # linear in between
    assert schedule.lr(10) == pytest.approx(1e-3)  # the new base rate at the end of the warm-up
    assert schedule.lr(109) == pytest.approx(1e-3 * (1 / 100) ** 0.9)  # last epoch: still positive
    warmup = [schedule.lr(e) for e in range(11)]
    assert warmup == sorted(warmup)
    decay = [schedule.lr(e) for e in range(10, 110)]
    assert decay == sorted(decay, reverse=True)
    with pytest.raises(ValueError, match="epoch must be in"):
        schedule.lr(110)


def test_no_warmup_is_nnunet_polynomial_schedule():
    schedule = WarmupSchedule(start_lr=1e-3, base_lr=1e-3, warmup_epochs=0, epochs=4)
    assert [schedule.lr(e) for e in range(4)] == pytest.approx([1e-3 * (1 - e / 4) ** 0.9 for e in range(4)])


def test_warmup_may_go_down_when_the_original_ended_higher():
    schedule = WarmupSchedule(start_lr=5e-3, base_lr=1e-3, warmup_epochs=2, epochs=4)
    assert [schedule.lr(e) for e in range(3)] == pytest.approx([5e-3, 3e-3, 1e-3])


def test_scheduler_sets_the_optimizer_rate_of_each_epoch():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupSchedule(start_lr=1e-4, base_lr=1e-3, warmup_epochs=1, epochs=3)
    scheduler = WarmupPolyLRScheduler(optimizer, schedule)
    for epoch in (0, 1, 2):
        scheduler.step(epoch)  # nnU-Net calls step(current_epoch) at the start of every epoch
        assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.lr(epoch))


def test_finetune_schedule_starts_from_the_basis_schedule():
    basis = NnUNetSchedule(epochs=6, initial_lr=0.01)
    schedule = finetune_schedule(basis, base_lr=1e-3, warmup_epochs=1, epochs=3, iterations_per_epoch=5)
    assert isinstance(schedule, FinetuneSchedule)
    assert schedule.warmup_start_lr == pytest.approx(0.01 * (1 / 6) ** 0.9)
    assert (schedule.epochs, schedule.iterations_per_epoch, schedule.initial_lr) == (3, 5, 1e-3)
    assert schedule.warmup().lr(1) == pytest.approx(1e-3)


@pytest.mark.parametrize("bad, match", [({"base_lr": 2.0}, "learning rate"), ({"warmup_epochs": 3}, "warmup_epochs"),
                                        ({"epochs": 0}, "positive integer")])
def test_finetune_params_are_checked_when_built(bad, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneParams(**{"epochs": 3, **bad})
