"""The combined network: exactness with switches on original, stitches, switches, configuration."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_nets import tiny_parent
from torch import nn

from stitch_ops.errors import InputFileError
from stitch_ops.stitching import (
    MomentSampler,
    PairStatistics,
    Parent,
    Stitch,
    StitchedNetwork,
    Switch,
    SwitchConfiguration,
    SwitchMode,
    load_stitched_network,
    sample_configuration,
    save_stitched_network,
)

PARENT_PAIRS = {
    "2d_plain_vs_residual": (dict(features=(4, 8, 16)), dict(features=(6, 12, 16, 24), residual=True)),
    "3d_residual_vs_plain": (dict(dims=3, features=(4, 8), residual=True), dict(dims=3, features=(2, 4, 8))),
}


@pytest.mark.parametrize("pair", PARENT_PAIRS.values(), ids=PARENT_PAIRS.keys())
def test_all_switches_original_reproduce_each_parent_exactly(pair):
    (spec_a, net_a), (spec_b, net_b) = tiny_parent(0, **pair[0]), tiny_parent(1, **pair[1])
    network = StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b)
    dims = len(spec_a.total_strides)
    x = torch.randn((3, 1) + (16,) * dims, generator=torch.Generator().manual_seed(0))
    assert len(network.matches) > 10
    network.configure(SwitchConfiguration.all_original(len(network.matches), Parent.A))
    assert torch.equal(network(x), net_a(x))
    network.configure(SwitchConfiguration.all_original(len(network.matches), Parent.B))
    assert torch.equal(network(x), net_b(x))


@pytest.fixture(scope="module")
def pair_network():
    (spec_a, net_a), (spec_b, net_b) = tiny_parent(0, features=(4, 8, 16)), tiny_parent(1, features=(6, 12, 24), norm="batch")
    return StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b), net_a, net_b


def test_configuration_changes_at_run_time_without_rebuilding(pair_network):
    network, net_a, _ = pair_network
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    n = len(network.matches)
    programs = dict(network._programs)
    network.configure(SwitchConfiguration((SwitchMode.STITCHED,) + (SwitchMode.ORIGINAL,) * (n - 1), (SwitchMode.ORIGINAL,) * n))
    assert not torch.allclose(network(x), net_a(x))
    network.configure(SwitchConfiguration.all_original(n))
    assert torch.equal(network(x), net_a(x))
    assert network._programs == programs


def test_parents_are_frozen_and_stay_in_eval_mode(pair_network):
    network, _, _ = pair_network
    network.train()
    assert not network.parent_a.training and not network.parent_b.training
    assert not any(p.requires_grad for p in network.parent_a.parameters())
    assert not any(p.requires_grad for p in network.parent_b.parameters())
    assert all(p.requires_grad for p in network.stitch_parameters())
    assert sum(1 for _ in network.stitch_parameters()) == 4 * len(network.matches)  # weight + bias, both directions
    network.eval()


def test_stitches_map_channels_of_the_matched_maps(pair_network):
    network, _, _ = pair_network
    for match, switch_a, switch_b in zip(network.matches, network.switches_a, network.switches_b):
        channels_a = network.graph_a.node(match.node_a).channels
        channels_b = network.graph_b.node(match.node_b).channels
        assert (switch_b.stitch.in_channels, switch_b.stitch.out_channels) == (channels_a, channels_b)
        assert (switch_a.stitch.in_channels, switch_a.stitch.out_channels) == (channels_b, channels_a)


def test_matched_maps_are_the_parents_own_maps(pair_network):
    network, net_a, _ = pair_network
    x = torch.randn(2, 1, 16, 16)
    maps = network.matched_maps(x)
    assert len(maps) == len(network.matches)
    assert torch.equal(maps[-1][0], net_a(x))  # the last match is the segmentation layer


@pytest.mark.parametrize("tensor_dims, layer", [(2, nn.Linear), (3, nn.Conv1d), (4, nn.Conv2d), (5, nn.Conv3d)])
def test_stitch_layer_follows_the_tensor_dimensionality(tensor_dims, layer):
    stitch = Stitch(3, 5, tensor_dims)
    assert isinstance(stitch.layer, layer)
    x = torch.randn((2, 3) + (4,) * (tensor_dims - 2))
    assert stitch(x).shape == (2, 5) + (4,) * (tensor_dims - 2)


def test_identity_stitch_is_exact_and_needs_equal_channels():
    stitch = Stitch(4, 4, 4)
    stitch.set_identity_()
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(stitch(x), x)
    with pytest.raises(ValueError, match="C_a == C_b, got 4 -> 5"):
        Stitch(4, 5, 4).set_identity_()


def test_stitch_rejects_unknown_dimensionality():
    with pytest.raises(ValueError, match="tensor_dims should be one of \\[2, 3, 4, 5\\]"):
        Stitch(3, 3, 6)


def test_least_squares_recovers_an_affine_channel_map():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(5, 3, generator=generator), torch.randn(5, generator=generator)
    statistics = None
    for _ in range(3):  # streamed over batches
        source = torch.randn(4, 3, 6, 6, generator=generator)
        batch = PairStatistics.of(source, torch.einsum("oi,bihw->bohw", weight, source) + bias.view(1, 5, 1, 1))
        statistics = batch if statistics is None else statistics + batch
    stitch = Stitch(3, 5, 4)
    stitch.set_affine_(*statistics.least_squares(ridge=0.0))
    assert torch.allclose(stitch.layer.weight.squeeze(), weight, atol=1e-4)
    assert torch.allclose(stitch.layer.bias, bias, atol=1e-4)
    assert statistics.stitch_mse(stitch).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("tensor_dims", [2, 4, 5])
def test_stitch_mse_from_statistics_equals_the_mse_of_the_stitched_map(tensor_dims):
    generator = torch.Generator().manual_seed(0)
    spatial = (5,) * (tensor_dims - 2)
    map_a, map_b = torch.randn((3, 4) + spatial, generator=generator), torch.randn((3, 6) + spatial, generator=generator) + 2
    stitch = Stitch(4, 6, tensor_dims)
    expected = torch.nn.functional.mse_loss(stitch(map_a), map_b)
    expected.backward()
    expected_gradient = stitch.layer.weight.grad.clone()
    stitch.zero_grad()
    loss = PairStatistics.of(map_a, map_b).stitch_mse(stitch)
    loss.backward()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(stitch.layer.weight.grad, expected_gradient, rtol=1e-4, atol=1e-6)
    closed_loss, weight_gradient, bias_gradient = PairStatistics.of(map_a, map_b).stitch_mse_gradient(stitch)
    assert torch.allclose(closed_loss, expected, rtol=1e-5)
    assert torch.allclose(weight_gradient.view_as(stitch.layer.weight), expected_gradient, rtol=1e-4, atol=1e-6)
    assert torch.allclose(bias_gradient, stitch.layer.bias.grad, rtol=1e-4, atol=1e-6)
    reverse = Stitch(6, 4, tensor_dims)
    assert torch.allclose(PairStatistics.of(map_a, map_b).swapped().stitch_mse(reverse), torch.nn.functional.mse_loss(reverse(map_b), map_a), rtol=1e-5)


def test_moment_sampler_draws_a_fixed_share_of_positions_without_replacement():
    sampler = MomentSampler(0.25, torch.Generator().manual_seed(0))
    chosen = sampler.positions(3, 10, torch.device("cpu"))  # 30 positions -> ceil(7.5) = 8
    flat = torch.cat([index + i * 10 for i, index in enumerate(chosen)])
    assert len(flat) == 8 and len(flat.unique()) == 8 and all(0 <= int(i) < 10 for index in chosen for i in index)
    assert sampler.positions(3, 10, torch.device("cpu")) is chosen  # shared within a step
    sampler.new_step()
    assert not torch.equal(torch.cat(sampler.positions(3, 10, torch.device("cpu"))), torch.cat(chosen))
    with pytest.raises(ValueError, match=r"fraction should be in \(0, 1\] \(1: every position\), got 0"):
        MomentSampler(0, torch.Generator())


def test_subsampled_pair_statistics_are_an_unbiased_estimate():
    """The mean over many draws approaches the exact statistics (within 4 standard errors per entry);
    a single draw does not equal them, and fraction 1 gives them exactly."""
    generator = torch.Generator().manual_seed(0)
    map_a = torch.randn(2, 3, 6, 5, generator=generator) + torch.linspace(0, 3, 5)  # positions differ
    map_b = torch.randn(2, 4, 6, 5, generator=generator) * 2 + 1
    map_b[:, 0] += map_a[:, 0] ** 2  # nonlinear dependence
    exact = PairStatistics.of(map_a, map_b)
    sampler = MomentSampler(0.2, torch.Generator().manual_seed(1))
    draws = []
    for _ in range(4000):
        sampler.new_step()
        draws.append(PairStatistics.of(map_a, map_b, sampler))
    for name in ("moments_a", "moments_b", "cross"):
        values = torch.stack([getattr(draw, name) for draw in draws])
        mean, standard_error = values.mean(0), values.std(0) / len(draws) ** 0.5
        assert torch.all((mean - getattr(exact, name)).abs() <= 4 * standard_error + 1e-9), name
        assert not torch.allclose(values[0], getattr(exact, name), rtol=0.05), name  # one draw is only an estimate
        assert torch.allclose(values[:, -1, -1], torch.tensor(60.0, dtype=torch.float64))  # the count stays exact
    whole = PairStatistics.of(map_a, map_b, MomentSampler(1.0, torch.Generator()))
    assert all(torch.equal(getattr(whole, name), getattr(exact, name)) for name in ("moments_a", "moments_b", "cross"))


def _switch() -> tuple[Switch, torch.Tensor, torch.Tensor]:
    stitch = Stitch(2, 3, 4)
    generator = torch.Generator().manual_seed(0)
    return Switch(stitch), torch.randn(8, 3, 4, 4, generator=generator), torch.randn(8, 2, 4, 4, generator=generator)


def test_switch_modes():
    switch, original, other = _switch()
    stitched = switch.stitch(other)
    assert switch(original, other).map is original
    switch.set_mode(SwitchMode.STITCHED)
    assert torch.equal(switch(original, other).map, stitched)
    switch.set_mode(SwitchMode.AVERAGE)
    assert torch.allclose(switch(original, other).map, (original + stitched) / 2, atol=1e-6)
    assert switch(original, other).loss is None


def test_random_switch_chooses_per_sample_from_its_own_generator():
    switch, original, other = _switch()
    stitched = switch.stitch(other)
    switch.set_mode(SwitchMode.RANDOM, torch.Generator().manual_seed(3))
    global_state = torch.get_rng_state()
    chosen = switch(original, other).map
    assert torch.equal(torch.get_rng_state(), global_state)
    from_stitch = [torch.equal(chosen[i], stitched[i]) for i in range(8)]
    from_original = [torch.equal(chosen[i], original[i]) for i in range(8)]
    assert all(s != o for s, o in zip(from_stitch, from_original)) and 0 < sum(from_stitch) < 8
    switch.set_mode(SwitchMode.RANDOM, torch.Generator().manual_seed(3))
    assert torch.equal(switch(original, other).map, chosen)


def test_random_switch_without_generator_is_refused():
    switch, _, _ = _switch()
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        switch.set_mode(SwitchMode.RANDOM)


def test_sampled_configurations_have_the_requested_number_of_active_stitches():
    generator = torch.Generator().manual_seed(0)
    outputs = set()
    for active in range(0, 11):
        configuration = sample_configuration(5, active, generator)
        assert configuration.active_stitches == active
        outputs.add(configuration.output)
    assert outputs == {Parent.A, Parent.B}
    with pytest.raises(ValueError, match="active_stitches should be in \\[0, 10\\]"):
        sample_configuration(5, 11, generator)


def test_configuration_for_the_wrong_number_of_matches_is_refused(pair_network):
    network, _, _ = pair_network
    with pytest.raises(ValueError, match=f"expected a configuration for {len(network.matches)} matches, got 2"):
        network.configure(SwitchConfiguration.all_original(2))


def test_save_and_load_roundtrip(tmp_path, pair_network):
    network, net_a, net_b = pair_network
    with torch.no_grad():
        for parameter in network.stitch_parameters():
            parameter.add_(0.1)
    save_stitched_network(network, tmp_path / "stitched.pt")
    saved = torch.load(tmp_path / "stitched.pt", weights_only=True)["state_dict"]
    assert saved and all(key.startswith(("switches_a.", "switches_b.")) for key in saved)  # no parent weights
    loaded = load_stitched_network(tmp_path / "stitched.pt", net_a, net_b)
    configuration = sample_configuration(len(network.matches), 6, torch.Generator().manual_seed(0))
    network.configure(configuration)
    loaded.configure(configuration)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(loaded(x), network(x))
    assert loaded.matches == network.matches
    network.configure(SwitchConfiguration.all_original(len(network.matches)))


def test_loading_stitches_onto_other_parents_is_refused(tmp_path, pair_network):
    network, net_a, net_b = pair_network
    save_stitched_network(network, tmp_path / "stitched.pt")
    _, other_a = tiny_parent(7, features=(4, 8, 16))  # a's architecture, other weights
    with pytest.raises(InputFileError, match="trained with another parent A"):
        load_stitched_network(tmp_path / "stitched.pt", other_a, net_b)


def test_a_network_saved_in_the_old_format_is_refused_with_a_hint(tmp_path, pair_network):
    network, net_a, net_b = pair_network
    torch.save({"description": json.dumps({"format": "stitch_ops.stitched_network/1"}), "state_dict": {}},
               tmp_path / "old.pt")
    with pytest.raises(InputFileError, match="format 1 embedded the parents' weights.*train the stitches again"):
        load_stitched_network(tmp_path / "old.pt", net_a, net_b)


def test_combining_two_exported_nnunet_models(tmp_path):
    """The pipeline's path: models exported and loaded as data by ``stitch_ops.nnunet.model``, then combined."""
    from stitch_ops.nnunet.model import export_model, load_model

    models = []
    for party, (seed, features) in {"a": (0, (4, 8, 16)), "b": (1, (6, 12, 16, 24))}.items():
        spec, network = tiny_parent(seed, features=features)
        folder = export_model(network, dict(spec.plans), dict(spec.dataset_json), configuration=spec.configuration,
                              target=tmp_path / party, mirroring_axes=None, provenance={"trained_on": party})
        models.append(load_model(folder))
    network = StitchedNetwork.from_models(*models)
    x = torch.randn(2, 1, 32, 32)
    for parent, model in zip(Parent, models):
        network.configure(SwitchConfiguration.all_original(len(network.matches), parent))
        assert torch.equal(network(x), model.network(x))
    assert network.parent_specs[1].patch_size == (32, 32)


def test_switches_on_original_are_wires_and_the_other_parent_runs_only_as_far_as_needed(pair_network):
    """RQ1's networks: the configured program gives what running every switch gives, and past
    the last active stitch into the output parent's side the other parent is not computed."""
    network, net_a, _ = pair_network
    n = len(network.matches)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    generator = torch.Generator().manual_seed(4)
    for active in (0, 1, 2, 5, n, 2 * n):
        for _ in range(3):
            configuration = sample_configuration(n, active, generator)
            network.configure(configuration)
            every_switch = network._program(lambda m: m.output_a if configuration.output is Parent.A else m.output_b)
            assert torch.equal(network(x), every_switch(x)), (active, configuration)

    def layers(side: str, up_to: str | None = None) -> int:
        module = network.parent_a if side == "a" else network.parent_b
        names = [node.name for node in module.graph.nodes if node.op == "call_module"]
        return len(names) if up_to is None else names.index(up_to) + 1

    k = n // 3  # one stitch into A, at a_k: B runs up to b_k and no further
    switches = [SwitchMode.ORIGINAL] * n
    network.configure(SwitchConfiguration(tuple(switches[:k] + [SwitchMode.STITCHED] + switches[k + 1:]),
                                          tuple(switches), Parent.A))
    assert not torch.equal(network(x), net_a(x))
    called = [node.target for node in network._forward[1].graph.nodes if node.op == "call_module"]
    assert [t for t in called if t.startswith("switches")] == [f"switches_a.{k}"]
    assert sum(t.startswith("parent_a.") for t in called) == layers("a")
    assert sum(t.startswith("parent_b.") for t in called) == layers("b", network.matches[k].node_b)
    network.configure(SwitchConfiguration.all_original(n, Parent.B))
    network(x)
    called = [node.target for node in network._forward[1].graph.nodes if node.op == "call_module"]
    assert called and all(t.startswith("parent_b.") for t in called)  # no stitch: B alone
