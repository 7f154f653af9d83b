"""Tracing networks into DAGs of feature maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stitch_ops.graph import make_out_of_place, trace_network


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_traced_network_computes_the_same_output(unet, dims, residual):
    network = unet(dims=dims, residual=residual)
    graph = trace_network(network, (2, 1) + (16,) * dims)
    x = torch.randn((3, 1) + (16,) * dims, generator=torch.Generator().manual_seed(0))
    assert torch.equal(graph.module(x), network(x))


def test_in_place_activations_become_out_of_place_in_the_copy_only(unet):
    network = unet()
    graph = trace_network(network, (2, 1, 16, 16))
    assert not any(getattr(m, "inplace", False) for m in graph.module.modules())
    assert all(m.inplace for m in network.modules() if isinstance(m, nn.LeakyReLU))


def _norm_output_after_forward(network: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The first norm's output as the hook saw it (a copy), and the same tensor after the whole forward."""
    taps = {}

    def hook(module, inputs, output):
        taps["copy"], taps["tensor"] = output.clone(), output

    network.get_submodule("encoder.stages.0.0.convs.0.norm").register_forward_hook(hook)
    network(torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    return taps["copy"], taps["tensor"]


def test_a_tapped_map_stays_intact_after_the_next_layer(unet):
    """The norm output feeds nnU-Net's in-place LeakyReLU: in the traced copy it must survive the forward."""
    seen, after = _norm_output_after_forward(unet())
    assert not torch.equal(seen, after), "the original network overwrites the map (else this test proves nothing)"
    seen, after = _norm_output_after_forward(trace_network(unet(), (2, 1, 16, 16)).module)
    assert torch.equal(seen, after)


class _FunctionalInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y = F.relu(y, inplace=True)
        y += 1
        return torch.relu_(y.mul_(2))


def test_functional_in_place_ops_are_rewritten():
    network = _FunctionalInPlace()
    graph = trace_network(network, (2, 1, 8, 8))
    targets = [node.target for node in graph.module.graph.nodes]
    assert "mul_" not in targets and torch.relu_ not in targets
    assert all(node.kwargs.get("inplace") is not True for node in graph.module.graph.nodes)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(graph.module(x), network(x))


class _Aliased(nn.Module):
    def forward(self, x):
        y = x * 1
        z = F.relu(y, inplace=True)
        return z + y  # reads y after relu overwrote it


def test_in_place_op_on_a_map_read_elsewhere_is_refused():
    with pytest.raises(ValueError, match="in place while 1 other node"):
        trace_network(_Aliased(), (2, 1, 4, 4))


def test_make_out_of_place_on_a_traced_module():
    traced = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(inplace=True)))
    make_out_of_place(traced)
    assert traced.get_submodule("1").inplace is False


def test_node_records_on_a_three_stage_unet(unet):
    graph = trace_network(unet(features=(4, 8, 16)), (2, 1, 32, 32))
    first, last = graph.feature_maps()[0], graph.feature_maps()[-1]
    assert (first.name, first.shape, first.downsampling) == ("encoder_stages_0_0_convs_0_conv", (2, 4, 32, 32), (1.0, 1.0))
    assert (last.name, last.shape, last.downsampling) == ("decoder_seg_layers_1", (2, 2, 32, 32), (1.0, 1.0))
    bottleneck = graph.node("encoder_stages_2_0_convs_1_nonlin")
    assert bottleneck.shape == (2, 16, 8, 8) and bottleneck.downsampling == (4.0, 4.0)
    skip = graph.node("encoder_stages_0_0_convs_1_nonlin")
    assert skip.out_degree == 2  # next stage and the decoder's concatenation
    assert graph.node("cat").in_degree == 2 and graph.node("cat").channels == 16
    progress = [node.progress for node in graph.nodes]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert not graph.node("x").is_feature_map and not graph.node("output").is_feature_map


class _Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_b_c_tensors_are_feature_maps_without_spatial_axes():
    graph = trace_network(_Classifier(), (2, 1, 8, 8))
    assert graph.node("conv").downsampling == (2.0, 2.0)
    assert graph.node("mean").downsampling == () and graph.node("head").downsampling == ()


def test_deep_supervision_is_refused_with_a_hint(unet):
    with pytest.raises(ValueError, match="deep_supervision=False"):
        trace_network(unet(deep_supervision=True), (2, 1, 16, 16))


class _DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_untraceable_network_gets_a_clear_error():
    with pytest.raises(ValueError, match="could not trace _DataDependent"):
        trace_network(_DataDependent(), (2, 1, 4, 4))
