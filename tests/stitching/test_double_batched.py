"""Double-batched training without the reference copy in the combined network: the same losses
and gradients as putting every sample in one batch twice (``doubled_batch.py``), on the toy
pair of tiny real nnU-Nets, from the stitches' default initialisation (the paper's set-up)."""

from __future__ import annotations

import copy

import pytest
import torch
from doubled_batch import DoubledBatch

from stitch_ops.stitching import LossTerm, StitchedNetwork, StitchMethod, SwitchConfiguration, SwitchMode
from stitch_ops.stitching.train import StitchTrainingConfig, stitch_optimizer, training_step


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def _configure(network: StitchedNetwork, mode: SwitchMode, seed: int) -> None:
    n = len(network.matches)
    network.configure(SwitchConfiguration((mode,) * n, (mode,) * n), torch.Generator().manual_seed(seed))


def _loss_and_gradients(network: StitchedNetwork, loss_of) -> tuple[torch.Tensor, list[torch.Tensor]]:
    network.zero_grad(set_to_none=True)
    loss = loss_of()
    loss.backward()
    return loss.detach(), [torch.full_like(p, float("nan")) if p.grad is None else p.grad.clone()
                           for p in network.stitch_parameters()]  # NaN: no gradient reached it


@pytest.mark.parametrize("terms", [tuple(LossTerm), (LossTerm.FORWARDED,), (LossTerm.STITCHED_FORWARDED,)],
                         ids=["all_terms", "forwarded", "stitched_forwarded"])
@pytest.mark.parametrize("mode", [SwitchMode.RANDOM, SwitchMode.AVERAGE, SwitchMode.STITCHED])
def test_losses_and_gradients_equal_those_of_the_doubled_batch(toy_pair, mode, terms):
    network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
    network.train()
    network.set_training(StitchMethod.DOUBLE_BATCHED, terms)
    images = toy_pair.train_images[:4]

    _configure(network, mode, seed=5)
    doubled = DoubledBatch(network)
    expected_loss, expected = _loss_and_gradients(network, lambda: doubled(images))
    _configure(network, mode, seed=5)  # the same random choices again
    loss, got = _loss_and_gradients(network, lambda: sum(p.a + p.b for p in network.switch_losses(images)))

    assert _relative(loss, expected_loss) < 1e-5, (float(loss), float(expected_loss))
    assert len(got) == len(expected) == 4 * len(network.matches)
    assert [bool(g.isnan().all()) for g in got] == [bool(e.isnan().all()) for e in expected]
    got, expected = [g.nan_to_num() for g in got], [e.nan_to_num() for e in expected]
    flat_got, flat_expected = torch.cat([g.flatten() for g in got]), torch.cat([e.flatten() for e in expected])
    assert _relative(flat_got, flat_expected) < 1e-5
    scale = float(flat_expected.abs().max())  # some gradients are 0 in exact arithmetic (a bias before a norm)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * scale)
    assert sum(bool(e.abs().sum() > 0) for e in expected) > len(expected) // 2  # real gradients, not zeros


def test_training_steps_follow_the_doubled_batch(toy_pair):
    """A few optimiser steps on the schedule's path (random switches, default init): the stitches
    stay where the doubled batch takes them, to float rounding."""
    config = StitchTrainingConfig(StitchMethod.DOUBLE_BATCHED, lr=0.01)
    networks = [StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
                for _ in range(2)]
    optimizers = [stitch_optimizer(network, config) for network in networks]
    for network in networks:
        network.train()
        network.set_training(config.method, config.loss_terms)
        _configure(network, SwitchMode.RANDOM, seed=9)
    doubled = DoubledBatch(networks[1])
    for step in range(4):
        images = toy_pair.train_images[4 * step:4 * step + 4]
        loss = training_step(networks[0], optimizers[0], images)
        optimizers[1].zero_grad(set_to_none=True)
        expected = doubled(images)
        expected.backward()
        optimizers[1].step()
        assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    for got, expected in zip(networks[0].stitch_parameters(), networks[1].stitch_parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_a_double_batched_switch_needs_the_reference_maps(toy_pair):
    network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
    switch = copy.deepcopy(network.switches_a[0])
    switch.set_double_batched(tuple(LossTerm))
    map_a, map_b = network.matched_maps(toy_pair.train_images[:2])[0]
    with pytest.raises(ValueError, match="needs the reference maps of both parents"):
        switch(map_a, map_b)
    with pytest.raises(ValueError, match="should have the forwarded maps' shapes"):
        switch(map_a, map_b, map_a[:1], map_b)
