"""FedAvg on real nnU-Net state dicts, where one tensor is listed under several names (the
decoder registers the encoder again as ``decoder.encoder.…``, and every conv block lists
its conv and norm again in ``all_modules``): every parameter must be averaged exactly once."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from stitch_ops.baselines.federated import (
    FedAvgServer,
    FederatedRoundError,
    canonical_state,
    fedavg,
    load_canonical_state,
    state_aliases,
)


def tiny_unet(seed: int) -> PlainConvUNet:
    with torch.random.fork_rng():  # the global generator stays as it was
        torch.manual_seed(seed)
        return PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv2d,
                             kernel_sizes=3, strides=[1, 2, 2], n_conv_per_stage=[1, 1, 1], num_classes=2,
                             n_conv_per_stage_decoder=[1, 1], conv_bias=True, norm_op=torch.nn.InstanceNorm2d,
                             norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                             deep_supervision=True)


def test_nnunet_registers_tensors_under_several_names():
    net = tiny_unet(0)
    aliases = state_aliases(net)
    shared = {name: canonical for name, canonical in aliases.items() if name != canonical}
    assert any(name.startswith("decoder.encoder.") for name in shared)
    assert any(".all_modules." in name for name in shared)
    assert all(name.startswith("decoder.encoder.") or ".all_modules." in name for name in shared)
    assert aliases["decoder.encoder.stages.0.0.convs.0.all_modules.0.weight"] == "encoder.stages.0.0.convs.0.conv.weight"
    # the canonical state has one entry per distinct tensor: exactly the deduplicated parameters and buffers
    distinct = {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}
    assert set(canonical_state(net)) == distinct
    assert len(net.state_dict()) == len(distinct) + len(shared)


def test_fedavg_weighted_mean_of_each_parameter_once():
    a, b = tiny_unet(1), tiny_unet(2)
    state_a, state_b = canonical_state(a), canonical_state(b)
    before = {k: v.clone() for k, v in state_a.items()}
    averaged = fedavg([state_a, state_b], weights=[3, 1])
    assert set(averaged) == set(state_a)
    for name, value in averaged.items():
        torch.testing.assert_close(value, (3 * state_a[name] + state_b[name]) / 4)
    for name, value in state_a.items():  # inputs untouched
        torch.testing.assert_close(value, before[name])

    target = tiny_unet(3)
    load_canonical_state(target, averaged)
    full = target.state_dict()
    for name, canonical in state_aliases(target).items():  # every name, aliases included, holds the average
        torch.testing.assert_close(full[name], averaged[canonical])
    encoder_weight = next(n for n in averaged if n.startswith("encoder.") and n.endswith("weight"))
    expected = (3 * a.state_dict()[encoder_weight] + b.state_dict()[encoder_weight]) / 4
    torch.testing.assert_close(full["decoder." + encoder_weight], expected)  # not averaged twice


def test_fedavg_of_identical_states_is_the_state():
    state = canonical_state(tiny_unet(4))
    for name, value in fedavg([state, state], [10, 7]).items():
        torch.testing.assert_close(value, state[name])


def test_fedavg_keeps_integer_counters_and_checks_inputs():
    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}, {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(9)}]
    averaged = fedavg(states, [1, 1])
    torch.testing.assert_close(averaged["w"], torch.tensor([2.0, 3.0]))
    assert averaged["n"].item() == 5
    with pytest.raises(ValueError, match="weights must be positive"):
        fedavg(states, [1, 0])
    with pytest.raises(ValueError, match="different parameters"):
        fedavg([states[0], {"w": torch.zeros(2)}], [1, 1])


def test_server_rejects_results_of_the_wrong_round():
    state = canonical_state(tiny_unet(5))
    server = FedAvgServer(state, completed_rounds=2)
    with pytest.raises(FederatedRoundError, match="expected round 2"):
        server.aggregate(1, [1, 1], state, state)
    assert server.aggregate(2, [1, 1], state, state) == 3
