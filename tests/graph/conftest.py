"""Fixtures for the graph tests: nnU-Net architectures built directly, one CPU thread."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: tiny networks run much faster without thread contention on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_unet(dims: int = 2, features=(4, 8, 16), residual: bool = False, deep_supervision: bool = False, seed: int = 0):
    """A small nnU-Net architecture (in-place LeakyReLU, instance norm) in eval mode."""
    n = len(features)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
    norm = {1: torch.nn.InstanceNorm1d, 2: torch.nn.InstanceNorm2d, 3: torch.nn.InstanceNorm3d}[dims]
    architecture = ResidualEncoderUNet if residual else PlainConvUNet
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return architecture(
            1, n, features, conv, 3, (1,) + (2,) * (n - 1), 1 if residual else 2, 2, 1,
            conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision,
        ).eval()


@pytest.fixture
def unet():
    """Factory fixture: ``unet(dims=2, features=(4, 8, 16), residual=False, ...)``."""
    return make_unet
