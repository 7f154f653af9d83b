"""Training stitches: permutation recovery, double-batched mechanics, RQ1 numbers, resuming."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tiny_nets import dice, permute_hidden_channels, tiny_parent

from stitch_ops.stitching import (
    EpochLog,
    LossTerm,
    StitchedNetwork,
    StitchTrainingConfig,
    SwitchConfiguration,
    SwitchMode,
    StitchMethod,
    extract_stitch_ensemble,
    fit_stitches_least_squares,
    sample_configuration,
    train_stitches,
)
from stitch_ops.config import ConfigError
from stitch_ops.stitching.train import DEFAULT_MOMENT_FRACTION, PROBE_EPOCH, moment_sampler, plateau_reached


def _batches(images: torch.Tensor, size: int = 8) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def _worst_ensemble_dice(network: StitchedNetwork, reference: torch.nn.Module, images: torch.Tensor) -> float:
    """Worst Dice, over all positions k, between the stitch-ensemble's segmentation and ``reference``'s."""
    with torch.no_grad():
        expected = reference(images).argmax(1)
        return min(dice(extract_stitch_ensemble(network, k)(images).argmax(1), expected) for k in range(len(network.matches)))


@pytest.fixture(scope="module")
def permuted_pair(toy_pair):
    """B = A with the channels of every hidden layer permuted: the same function, different weights."""
    network_b = permute_hidden_channels(toy_pair.network_a, torch.Generator().manual_seed(1))
    return StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_a, network_b)


def test_direct_matching_recovers_a_channel_permutation(toy_pair, permuted_pair):
    """With the moments estimated on a random subset of positions each step (the default) the
    stitches recover the permutation as well as with the exact moments."""
    assert 0 < DEFAULT_MOMENT_FRACTION < 1
    worst, final_probe = {}, {}
    for fraction in (DEFAULT_MOMENT_FRACTION, 1.0):
        network = copy.deepcopy(permuted_pair)
        config = StitchTrainingConfig(StitchMethod.DIRECT_MATCHING, epochs=4, iterations_per_epoch=50, batch_size=8, lr=0.1,
                                      weight_decay=0.0, init="default",  # learn it by gradient descent, not by the closed form
                                      moment_fraction=fraction)
        history = train_stitches(network, _batches(toy_pair.train_images), config, progress=False)
        worst[fraction] = _worst_ensemble_dice(network, toy_pair.network_a, toy_pair.val_images)
        final_probe[fraction] = history[-1].probe
        print(f"\npermutation recovery after direct matching, moments on {fraction:g} of the positions: final loss "
              f"{history[-1].loss:.4f}, probe loss {history[0].probe:.4f} -> {history[-1].probe:.4f}, "
              f"worst Dice over {len(network.matches)} positions {worst[fraction]:.4f}")
        assert history[-1].loss < history[0].loss / 100
        assert history[-1].probe < history[0].probe / 10  # the probe loss is exact (every position)
        assert worst[fraction] > 0.99
    assert worst[DEFAULT_MOMENT_FRACTION] >= worst[1.0] - 0.005
    assert final_probe[DEFAULT_MOMENT_FRACTION] < 2 * final_probe[1.0]


def test_least_squares_recovers_a_channel_permutation_exactly(toy_pair, permuted_pair):
    network = copy.deepcopy(permuted_pair)
    fit_stitches_least_squares(network, _batches(toy_pair.train_images))
    assert _worst_ensemble_dice(network, toy_pair.network_a, toy_pair.val_images) == 1.0


@pytest.fixture
def toy_network(toy_pair):
    return StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)


def test_direct_matching_gradients_in_closed_form_equal_autograd(toy_pair, toy_network):
    images = toy_pair.train_images[:8]
    toy_network.set_training(StitchMethod.DIRECT_MATCHING)
    for switch in toy_network.switches():  # not the identity-like start: every gradient non-trivial
        torch.nn.init.normal_(switch.stitch.layer.weight, std=0.3, generator=torch.Generator().manual_seed(2))
    loss = sum(pair.a + pair.b for pair in toy_network.switch_losses(images))
    loss.backward()
    expected = [p.grad.clone() for p in toy_network.stitch_parameters()]
    toy_network.zero_grad(set_to_none=True)
    closed = toy_network.direct_matching_gradients(images)
    assert torch.allclose(closed, loss.detach(), rtol=1e-5)
    got = [p.grad for p in toy_network.stitch_parameters()]
    assert len(got) == len(expected) == 4 * len(toy_network.matches)
    assert all(torch.allclose(g, e, rtol=1e-4, atol=1e-7) for g, e in zip(got, expected))
    assert min(float(e.abs().max()) for e in expected) > 0
    toy_network.set_training(StitchMethod.DOUBLE_BATCHED)
    with pytest.raises(RuntimeError, match="direct_matching_gradients needs set_training"):
        toy_network.direct_matching_gradients(images)


def test_double_batched_loss_decreases(toy_pair, toy_network):
    config = StitchTrainingConfig(StitchMethod.DOUBLE_BATCHED, epochs=2, iterations_per_epoch=12, batch_size=8, lr=0.05, init="default")
    history = train_stitches(toy_network, _batches(toy_pair.train_images), config, progress=False)
    assert history[1].loss < 0.8 * history[0].loss


def test_least_squares_start_is_the_direct_matching_optimum(toy_pair):
    """From the least-squares start (the default), direct matching begins where training from
    the default initialisation ends up only after many steps, and has nothing left to gain."""
    losses = {}
    for init in ("default", "least_squares"):
        network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
        config = StitchTrainingConfig(StitchMethod.DIRECT_MATCHING, epochs=3, iterations_per_epoch=10, batch_size=8,
                                      lr=0.01, init=init, init_batches=4)
        history = train_stitches(network, _batches(toy_pair.train_images), config, progress=False)
        losses[init] = [log.loss for log in history]
        if init == "least_squares":
            assert all(log.probe is not None and log.probe > 0 for log in history)
            assert plateau_reached(history, tolerance=0.05), [log.probe for log in history]
    print(f"\ndirect matching loss per epoch: {losses}")
    assert losses["least_squares"][0] < 0.5 * losses["default"][0]
    assert losses["least_squares"][-1] <= losses["default"][-1]


def test_init_least_squares_starts_double_batched_training_from_the_fit(toy_pair):
    network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
    fitted = copy.deepcopy(network)
    fit_stitches_least_squares(fitted, _batches(toy_pair.train_images)[:4])
    config = StitchTrainingConfig(StitchMethod.DOUBLE_BATCHED, epochs=1, iterations_per_epoch=1, batch_size=8, lr=1e-12,
                                  weight_decay=0.0, init="least_squares", init_batches=4)
    train_stitches(network, _batches(toy_pair.train_images), config, progress=False)
    for trained, expected in zip(network.switches_a, fitted.switches_a):  # one step at lr ~ 0: still the fit
        assert torch.allclose(trained.stitch.layer.weight, expected.stitch.layer.weight, atol=1e-6)


def test_default_stitches_are_the_papers_not_the_least_squares_fit(toy_pair):
    """The paper's set-up is the default: the module's own initialisation, so training starts (and,
    one step at lr ~ 0 later, still is) far from the least-squares optimum."""
    assert StitchTrainingConfig().init == "default"
    network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
    fitted = copy.deepcopy(network)
    fit_stitches_least_squares(fitted, _batches(toy_pair.train_images)[:4])
    config = StitchTrainingConfig(StitchMethod.DOUBLE_BATCHED, epochs=1, iterations_per_epoch=1, batch_size=8, lr=1e-12,
                                  weight_decay=0.0)
    train_stitches(network, _batches(toy_pair.train_images), config, progress=False)
    for trained, optimum in zip(network.switches_a, fitted.switches_a):
        weight, target = trained.stitch.layer.weight, optimum.stitch.layer.weight
        assert torch.linalg.norm(weight - target) > 0.1 * torch.linalg.norm(target)


def test_epochs_may_be_given_per_method():
    per_method = {"double_batched": 8, "direct_matching": 12}
    for method, epochs in per_method.items():
        assert StitchTrainingConfig.from_dict({"epochs": per_method, "method": method}).epochs == epochs
    assert StitchTrainingConfig.from_dict({"epochs": per_method}).epochs == 8  # the default method's
    assert StitchTrainingConfig.from_dict({"epochs": 5, "method": "direct_matching"}).epochs == 5
    with pytest.raises(ConfigError, match="must give the epochs of each method"):
        StitchTrainingConfig.from_dict({"epochs": {"double_batched": 8}})


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_profile_trains_stitches_as_the_paper(profile):
    """Default init, no stop on a plateau (fixed epochs), direct matching longer than double-batched,
    every position scored."""
    import yaml
    from importlib import resources

    from stitch_ops.stitching.settings import StitchingParams

    overlay = yaml.safe_load(resources.files("stitch_ops.profiles").joinpath(f"{profile}.yaml").read_text())
    params = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())["stitching"]
    section = StitchingParams(**{**params, **overlay["stitching"], "training": {**params["training"],
                                                                             **overlay["stitching"]["training"]}})
    configs = {method: section.training_config(method, 0) for method in StitchMethod}
    assert all(config.init == "default" for config in configs.values())
    assert configs[StitchMethod.DIRECT_MATCHING].epochs > configs[StitchMethod.DOUBLE_BATCHED].epochs
    assert section.max_positions is None


@pytest.mark.parametrize("losses, reached", [([1.0], False), ([1.0, 0.5], False), ([1.0, 0.995], True),
                                             ([1.0, 1.2], True), ([2.0, 1.0, 0.999], True)])
def test_plateau_is_less_than_the_tolerance_over_the_last_epoch(losses, reached):
    assert plateau_reached([EpochLog(e, v) for e, v in enumerate(losses)], tolerance=0.01) is reached
    # the probe loss (fixed batches) decides where it was measured, not the noisy training mean
    assert plateau_reached([EpochLog(e, 5.0 * (e % 2) + 1, probe=v) for e, v in enumerate(losses)], tolerance=0.01) is reached


def test_probe_loss_is_the_same_objective_on_the_same_batches_every_time(toy_pair, toy_network):
    from stitch_ops.stitching.train import probe_loss

    probe = _batches(toy_pair.train_images)[:2]
    for method in StitchMethod:
        config = StitchTrainingConfig(method, batch_size=8)
        toy_network.set_training(method)
        first, second = (probe_loss(toy_network, probe, config, torch.device("cpu")) for _ in range(2))
        toy_network.set_training(None)
        assert first == second and first > 0, method


def test_bad_initialisation_or_tolerance_is_refused():
    with pytest.raises(ValueError, match="init should be one of"):
        StitchTrainingConfig(init="zeros")
    with pytest.raises(ValueError, match="plateau_tolerance should be in"):
        StitchTrainingConfig(plateau_tolerance=0.0)


def _gradients_from_one_late_switch(network: StitchedNetwork, images: torch.Tensor, method: StitchMethod) -> list[bool]:
    """Which stitches into A get a gradient from the loss at A's last match alone.

    Double-batched: switches average in the second half, loss term MSE(1, 2) only.
    Direct matching: switches on original, as the method requires.
    """
    n = len(network.matches)
    double_batched = method is StitchMethod.DOUBLE_BATCHED
    mode = SwitchMode.AVERAGE if double_batched else SwitchMode.ORIGINAL
    network.configure(SwitchConfiguration((mode,) * n, (mode,) * n))
    network.set_training(method, (LossTerm.FORWARDED,))
    network.switch_losses(images)[-1].a.backward()
    reached = [switch.stitch.layer.weight.grad is not None and bool(switch.stitch.layer.weight.grad.abs().sum() > 0) for switch in network.switches_a]
    network.zero_grad(set_to_none=True)
    network.set_training(None)
    network.configure(SwitchConfiguration.all_original(n))
    return reached


def test_double_batched_gradients_reach_earlier_stitches_through_later_layers(toy_pair, toy_network):
    images = toy_pair.train_images[:4]
    reached = _gradients_from_one_late_switch(toy_network, images, StitchMethod.DOUBLE_BATCHED)
    assert all(reached[:-1]), f"earlier stitches without gradient: {[k for k, r in enumerate(reached) if not r]}"
    direct = _gradients_from_one_late_switch(toy_network, images, StitchMethod.DIRECT_MATCHING)
    assert direct == [False] * (len(direct) - 1) + [True]  # direct matching trains each stitch on its own


def test_parents_weights_and_normalisation_statistics_do_not_change(toy_pair):
    spec_a, network_a = tiny_parent(0, features=(4, 8, 16), norm="batch")
    spec_b, network_b = tiny_parent(1, features=(6, 12, 24), norm="batch")
    network = StitchedNetwork.from_parents(spec_a, network_a, spec_b, network_b)
    before = {key: value.clone() for key, value in network.state_dict().items() if key.startswith("parent_")}
    assert any("running_mean" in key for key in before)
    for method in StitchMethod:
        config = StitchTrainingConfig(method, epochs=1, iterations_per_epoch=3, batch_size=8, lr=0.05)
        train_stitches(network, _batches(toy_pair.train_images), config, progress=False)
    after = network.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_double_batched_stitches_do_not_collapse(toy_pair, toy_network):
    """Every loss term is anchored to the reference: stitched maps keep explaining the reference's variance."""
    config = StitchTrainingConfig(StitchMethod.DOUBLE_BATCHED, epochs=2, iterations_per_epoch=12, batch_size=8, lr=0.05,
                                  init="default")  # from the stitches' own start, not the least-squares fit
    train_stitches(toy_network, _batches(toy_pair.train_images), config, progress=False)
    explained = []
    with torch.no_grad():
        for (map_a, map_b), switch_a, switch_b in zip(toy_network.matched_maps(toy_pair.val_images), toy_network.switches_a, toy_network.switches_b):
            for reference, stitched in ((map_a, switch_a.stitch(map_b)), (map_b, switch_b.stitch(map_a))):
                residual = (reference - stitched).pow(2).mean()
                spread = (reference - reference.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
                explained.append(float(1 - residual / spread))
    assert sum(explained) / len(explained) > 0.3, f"mean explained variance {sum(explained) / len(explained):.3f}"


def _validation_dice(network: StitchedNetwork, images, labels, counts, generator) -> dict[int, float]:
    result = {}
    with torch.no_grad():
        for active in counts:
            scores = []
            for _ in range(3):
                network.configure(sample_configuration(len(network.matches), active, generator))
                scores.append(dice(network(images).argmax(1), labels))
            result[active] = sum(scores) / len(scores)
    network.configure(SwitchConfiguration.all_original(len(network.matches)))
    return result


def test_direct_and_double_batched_with_many_stitches_active(toy_pair):
    """RQ1 on a tiny pair: mechanics asserted, validation Dice printed whichever way it falls."""
    results = {}
    for method in StitchMethod:
        network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
        config = StitchTrainingConfig(method, epochs=2, iterations_per_epoch=25, batch_size=8, lr=0.05, weight_decay=0.0,
                                      init="default")
        history = train_stitches(network, _batches(toy_pair.train_images), config, progress=False)
        assert history[-1].loss < history[0].loss
        n = len(network.matches)
        results[method] = _validation_dice(network, toy_pair.val_images, toy_pair.val_labels, (0, n // 4, n // 2, n, 2 * n), torch.Generator().manual_seed(0))
    print("\nRQ1 (tiny pair) validation Dice by number of active stitches:")
    for active in results[StitchMethod.DIRECT_MATCHING]:
        print(f"  {active:3d} active: direct {results[StitchMethod.DIRECT_MATCHING][active]:.3f}  "
              f"double-batched {results[StitchMethod.DOUBLE_BATCHED][active]:.3f}")
    parents = results[StitchMethod.DIRECT_MATCHING][0]
    assert results[StitchMethod.DOUBLE_BATCHED][0] == parents  # no stitch active: a parent's own output
    assert all(score > 0.5 for method in results.values() for score in method.values())


class _CountingBatches:
    """A ``Batches`` callable recording which epochs asked for data; can fail at one epoch like a killed run."""

    def __init__(self, images: torch.Tensor, fail_at_epoch: int | None = None):
        self.batches, self.fail_at_epoch, self.epochs = _batches(images), fail_at_epoch, []

    def __call__(self, epoch: int):
        self.epochs.append(epoch)
        if epoch == self.fail_at_epoch:
            raise KeyboardInterrupt("killed")
        return self.batches


def _fresh(toy_pair) -> StitchedNetwork:
    return StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)


def _stitches(network: StitchedNetwork) -> dict[str, torch.Tensor]:
    return {k: v for k, v in network.state_dict().items() if k.startswith("switches_")}


@pytest.mark.parametrize("method", list(StitchMethod))
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_as_if_never_killed(tmp_path, toy_pair, method):
    config = StitchTrainingConfig(method, epochs=3, iterations_per_epoch=2, batch_size=8, lr=0.05, seed=3)
    uninterrupted = _fresh(toy_pair)
    expected = train_stitches(uninterrupted, _CountingBatches(toy_pair.train_images), config, progress=False)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        train_stitches(_fresh(toy_pair), _CountingBatches(toy_pair.train_images, fail_at_epoch=2), config, tmp_path / "ckpt.pt", progress=False)
    resumed = _fresh(toy_pair)
    batches = _CountingBatches(toy_pair.train_images)
    reported = []
    history = train_stitches(resumed, batches, config, tmp_path / "ckpt.pt", progress=False, on_epoch=reported.append)
    assert [e for e in batches.epochs if e != PROBE_EPOCH] == [2]  # the probe batches are drawn apart
    assert history == expected
    assert tuple(reported) == history  # restored epochs are reported too (a live run gets the whole curve)
    assert 0 < history[-1].lr < history[0].lr < config.lr  # cosine annealing
    assert all(torch.equal(value, _stitches(uninterrupted)[key]) for key, value in _stitches(resumed).items())


def test_raising_epochs_continues_from_the_checkpoint(tmp_path, toy_pair):
    config = StitchTrainingConfig(StitchMethod.DIRECT_MATCHING, epochs=1, iterations_per_epoch=2, batch_size=8, lr=0.05)
    first = train_stitches(_fresh(toy_pair), _CountingBatches(toy_pair.train_images), config, tmp_path / "ckpt.pt", progress=False)
    batches = _CountingBatches(toy_pair.train_images)
    history = train_stitches(_fresh(toy_pair), batches, StitchTrainingConfig(**{**config.to_dict(), "epochs": 2}), tmp_path / "ckpt.pt", progress=False)
    assert [e for e in batches.epochs if e != PROBE_EPOCH] == [1] and len(history) == 2 and history[0] == first[0]
    with pytest.raises(ValueError, match="only epochs may change"):
        train_stitches(_fresh(toy_pair), batches, StitchTrainingConfig(**{**config.to_dict(), "lr": 0.1}), tmp_path / "ckpt.pt", progress=False)


def test_config_validates_itself():
    with pytest.raises(ValueError, match="'double-batched' is not a valid StitchMethod"):
        StitchTrainingConfig.from_dict({"method": "double-batched"})
    with pytest.raises(ValueError, match="epochs should be a positive integer, got 0"):
        StitchTrainingConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown StitchTrainingConfig key"):
        StitchTrainingConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"moment_fraction should be in \(0, 1\] \(1: every position\), got 0"):
        StitchTrainingConfig(moment_fraction=0)
    with pytest.raises(ValueError, match=r"moment_fraction should be in \(0, 1\]"):
        StitchTrainingConfig(moment_fraction=1.5)
    config = StitchTrainingConfig.from_dict({"method": "direct_matching", "loss_terms": ["forwarded"]})
    assert config.loss_terms == (LossTerm.FORWARDED,) and StitchTrainingConfig.from_dict(config.to_dict()) == config


def test_only_direct_matching_below_fraction_one_subsamples_and_each_epoch_draws_the_same_when_rerun():
    direct = StitchTrainingConfig(StitchMethod.DIRECT_MATCHING, seed=3)
    assert moment_sampler(StitchTrainingConfig(StitchMethod.DOUBLE_BATCHED), 0) is None
    assert moment_sampler(StitchTrainingConfig(StitchMethod.DIRECT_MATCHING, moment_fraction=1.0), 0) is None

    def draw(epoch: int) -> list[torch.Tensor]:
        return moment_sampler(direct, epoch).positions(2, 64, torch.device("cpu"))

    assert all(torch.equal(x, y) for x, y in zip(draw(1), draw(1)))
    assert not all(torch.equal(x, y) for x, y in zip(draw(1), draw(2)))


def test_every_stitch_method_has_its_training_method_and_label():
    """A method added to ``StitchMethod`` without its class in the training loop (or its words in
    the report) fails here, not halfway through a stage."""
    from stitch_ops.stitching.train import TRAINING_METHODS, training_method

    assert set(TRAINING_METHODS) == set(StitchMethod)
    for method in StitchMethod:
        assert training_method(method.value).method is method
    labels = [method.label for method in StitchMethod]
    assert len(set(labels)) == len(labels)
