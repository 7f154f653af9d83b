"""Tiny real nnU-Net networks, a toy segmentation task and channel permutations, for stitching tests.

The networks are built from nnU-Net plans exactly as the pipeline builds them
(``ParentSpec.build`` -> ``get_network_from_plans``), only with few stages and
channels so a test runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from stitch_ops.stitching.parents import ParentSpec

_RESAMPLING = "resample_data_or_seg_to_shape"


def tiny_plans(
    dims: int = 2,
    features: Sequence[int] = (4, 8, 16),
    residual: bool = False,
    norm: str = "instance",
    num_classes: int = 2,
    patch_size: Sequence[int] | None = None,
) -> tuple[dict, dict, str]:
    """``(plans, dataset_json, configuration)`` of a tiny nnU-Net with one stride-2 stage per extra feature level."""
    n = len(features)
    patch = list(patch_size or [2 ** (n + 1)] * dims)
    norm_op = {"instance": "instancenorm.InstanceNorm", "batch": "batchnorm.BatchNorm"}[norm]
    blocks_key = "n_blocks_per_stage" if residual else "n_conv_per_stage"
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet."
        + ("ResidualEncoderUNet" if residual else "PlainConvUNet"),
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
            "kernel_sizes": [[3] * dims] * n,
            "strides": [[1] * dims] + [[2] * dims] * (n - 1),
            blocks_key: [1 if residual else 2] * n,
            "n_conv_per_stage_decoder": [1] * (n - 1),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.{norm_op}{dims}d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    configuration = "2d" if dims == 2 else "3d_fullres"
    resampling = {"order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": "Dataset001_tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, *patch] if dims == 2 else patch,
        "image_reader_writer": "NaturalImage2DIO" if dims == 2 else "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3.0, "mean": 0.0, "median": 0.0, "min": -3.0, "percentile_00_5": -3.0, "percentile_99_5": 3.0, "std": 1.0}
        },
        "configurations": {
            configuration: {
                "data_identifier": f"nnUNetPlans_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": patch,
                "spacing": [1.0] * dims,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": _RESAMPLING,
                "resampling_fn_seg": _RESAMPLING,
                "resampling_fn_probabilities": _RESAMPLING,
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resampling},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resampling},
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resampling},
                "batch_dice": True,
                "architecture": architecture,
            }
        },
    }
    labels = {"background": 0, **{f"class_{i}": i for i in range(1, num_classes)}}
    dataset_json = {"channel_names": {"0": "image"}, "labels": labels, "numTraining": 1, "file_ending": ".png"}
    return plans, dataset_json, configuration


def tiny_parent(seed: int = 0, **plan_kwargs) -> tuple[ParentSpec, nn.Module]:
    """A tiny nnU-Net in eval mode with weights drawn from ``seed`` (global RNG untouched)."""
    spec = ParentSpec(*tiny_plans(**plan_kwargs))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = spec.build()
    return spec, network.eval()


def permute_hidden_channels(network: nn.Module, generator: torch.Generator) -> nn.Module:
    """A copy of a PlainConvUNet computing the same function with every hidden layer's channels permuted.

    Each convolution gets a random output permutation (the last, the
    segmentation layer, keeps its order); normalisation parameters follow their
    input, concatenations concatenate their inputs' permutations.
    """
    network = copy.deepcopy(network)
    traced = fx.symbolic_trace(network)
    output_node = next(n for n in traced.graph.nodes if n.op == "output").args[0]
    order: dict[fx.Node, Tensor] = {}
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            order[node] = torch.arange(_input_channels(network))
        elif node.op == "call_module":
            module = traced.get_submodule(node.target)
            keep = node is output_node
            order[node] = _permute_module(module, order[node.args[0]], keep, generator)
        elif node.op == "call_function" and node.target is torch.cat:
            parts, offset = [], 0
            for part in node.args[0]:
                parts.append(order[part] + offset)
                offset += len(order[part])
            order[node] = torch.cat(parts)
        elif node.op != "output":
            raise ValueError(f"permute_hidden_channels does not handle {node.op} {node.target}")
    return network


def _input_channels(network: nn.Module) -> int:
    return next(m for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd)).in_channels


@torch.no_grad()
def _permute_module(module: nn.Module, incoming: Tensor, keep: bool, generator: torch.Generator) -> Tensor:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        outgoing = _new_order(module.out_channels, keep, generator)
        module.weight.copy_(module.weight[incoming][:, outgoing])
        module.bias.copy_(module.bias[outgoing])
        return outgoing
    if isinstance(module, nn.modules.conv._ConvNd):
        outgoing = _new_order(module.out_channels, keep, generator)
        module.weight.copy_(module.weight[:, incoming][outgoing])
        module.bias.copy_(module.bias[outgoing])
        return outgoing
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(module, name, None)
        if tensor is not None:
            tensor.copy_(tensor[incoming])
    return incoming


def _new_order(channels: int, keep: bool, generator: torch.Generator) -> Tensor:
    return torch.arange(channels) if keep else torch.randperm(channels, generator=generator)


def toy_segmentation(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` noisy 2-D images ``n 1 size size`` with one bright disc each, and the disc masks ``n size size``."""
    coords = torch.arange(size, dtype=torch.float32)
    centres = torch.rand(n, 2, generator=generator) * (size * 0.5) + size * 0.25
    radii = torch.rand(n, 1, 1, generator=generator) * (size * 0.15) + size * 0.12
    distance = (coords.view(1, -1, 1) - centres[:, 0].view(-1, 1, 1)) ** 2 + (coords.view(1, 1, -1) - centres[:, 1].view(-1, 1, 1)) ** 2
    labels = (distance <= radii**2).long()
    images = labels.float() + 0.4 * torch.randn(n, size, size, generator=generator)
    return images.unsqueeze(1), labels


def train_segmenter(network: nn.Module, images: Tensor, labels: Tensor, steps: int, generator: torch.Generator) -> nn.Module:
    """Supervised training of a parent on the toy task (Adam, cross-entropy); returns it in eval mode."""
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = torch.randint(len(images), (8,), generator=generator)
        loss = F.cross_entropy(network(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval()


def dice(prediction: Tensor, reference: Tensor) -> float:
    """Foreground Dice of two label maps (1.0 when both are empty)."""
    prediction, reference = prediction.bool(), reference.bool()
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else float(2 * (prediction & reference).sum() / total)


__all__ = [
    "dice",
    "permute_hidden_channels",
    "tiny_parent",
    "tiny_plans",
    "toy_segmentation",
    "train_segmenter",
]
