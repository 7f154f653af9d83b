"""Fixtures for the stitching tests: one CPU thread, a tiny pair of parents trained on a toy task."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from tiny_nets import tiny_parent, toy_segmentation, train_segmenter
from torch import Tensor, nn

from stitch_ops.stitching import ParentSpec


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: tiny networks run much faster without thread contention on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass(frozen=True)
class ToyPair:
    """Two differently shaped parents trained (with labels) on the same toy task, and data for stitching."""

    spec_a: ParentSpec
    network_a: nn.Module
    spec_b: ParentSpec
    network_b: nn.Module
    train_images: Tensor  # N 1 32 32, used without labels by the stitches
    val_images: Tensor
    val_labels: Tensor  # N 32 32


@pytest.fixture(scope="session")
def toy_pair() -> ToyPair:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    images, labels = toy_segmentation(96, 32, generator)
    val_images, val_labels = toy_segmentation(24, 32, generator)
    spec_a, network_a = tiny_parent(seed=0, features=(4, 8, 16))
    spec_b, network_b = tiny_parent(seed=1, features=(6, 12, 16, 24))
    train_segmenter(network_a, images[:48], labels[:48], 150, generator)
    train_segmenter(network_b, images[48:], labels[48:], 150, generator)
    torch.set_num_threads(previous)
    return ToyPair(spec_a, network_a, spec_b, network_b, images, val_images, val_labels)
