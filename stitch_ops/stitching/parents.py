"""The parents of a combined network: nnU-Net architectures described as plain data.

A stitch-ensemble is saved as weights plus a description from which its
networks are rebuilt. For each parent that description is a
:class:`ParentSpec`: the nnU-Net ``plans.json``, ``dataset.json`` and the
configuration name, all JSON. Because a foreign description is data, not code,
:meth:`ParentSpec.build` only instantiates architectures from
``dynamic_network_architectures`` with building blocks from ``torch.nn``
unless the caller says the description is trusted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from stitch_ops.errors import UserError
from stitch_ops.nnunet.model import build_network

__all__ = ["ParentSpec", "probe_shape"]


@dataclass(frozen=True, eq=False)
class ParentSpec:
    """How to rebuild one parent network.

    Attributes:
        plans: the nnU-Net plans (``plans.json``) the network was trained with.
        dataset_json: the nnU-Net ``dataset.json`` (channels and labels).
        configuration: the plans' configuration name, e.g. ``"2d"`` or ``"3d_fullres"``.
    """

    plans: Mapping[str, Any]
    dataset_json: Mapping[str, Any]
    configuration: str

    def __post_init__(self) -> None:
        available = list(self.plans.get("configurations", {}))
        if self.configuration not in available:
            raise UserError(f"configuration {self.configuration!r} is not in the plans; available: {available}")

    @property
    def architecture(self) -> Mapping[str, Any]:
        """The plans' ``architecture`` entry of the configuration (class name and kwargs)."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(dict(self.plans)).get_configuration(self.configuration).configuration["architecture"]

    @classmethod
    def of_model(cls, model) -> ParentSpec:
        """The description of a loaded nnU-Net model (``stitch_ops.nnunet.model.NnUNetModel``)."""
        return cls(plans=model.plans, dataset_json=model.dataset_json, configuration=model.configuration)

    @property
    def patch_size(self) -> tuple[int, ...]:
        """The configuration's training patch size (spatial), e.g. for sampling stitch training patches."""
        return tuple(self.plans["configurations"][self.configuration]["patch_size"])

    @property
    def input_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def total_strides(self) -> tuple[int, ...]:
        """Total downsampling of the network per spatial axis (product of the stage strides)."""
        strides = self.architecture["arch_kwargs"]["strides"]
        return tuple(math.prod(int(_per_axis(s, len(strides[-1]))[axis]) for s in strides) for axis in range(len(strides[-1])))

    def build(self, trusted: bool = False) -> nn.Module:
        """A fresh network of this architecture (random weights, deep supervision off).

        Args:
            trusted: allow class names outside ``dynamic_network_architectures`` / ``torch.nn``
                (they are imported and instantiated, i.e. run as code).

        Raises:
            ModelError: if the description names a class outside the allowed ones
                (:func:`~stitch_ops.nnunet.model.check_architecture`) and ``trusted`` is False.
        """
        return build_network(dict(self.plans), dict(self.dataset_json), self.configuration, trusted=trusted)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, inverse of :meth:`from_dict`."""
        return {"plans": dict(self.plans), "dataset_json": dict(self.dataset_json), "configuration": self.configuration}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParentSpec:
        missing = {"plans", "dataset_json", "configuration"} - set(data)
        if missing:
            raise UserError(f"a parent description needs plans, dataset_json and configuration; missing {sorted(missing)}")
        return cls(plans=data["plans"], dataset_json=data["dataset_json"], configuration=data["configuration"])


def probe_shape(spec_a: ParentSpec, spec_b: ParentSpec, batch_size: int = 2) -> tuple[int, ...]:
    """Smallest probe input ``B C H W [D]`` both networks can be traced with.

    Each spatial size is twice the least common multiple of the two networks'
    total strides, so every stage of both networks sees at least 2 voxels per
    axis and the downsampling factors of the two networks are comparable.

    Raises:
        ValueError: if the parents differ in input channels or dimensionality and so
            cannot read the same image.
    """
    if spec_a.input_channels != spec_b.input_channels:
        raise UserError(f"parents must read the same images: A has {spec_a.input_channels} input channels, B {spec_b.input_channels}")
    strides_a, strides_b = spec_a.total_strides, spec_b.total_strides
    if len(strides_a) != len(strides_b):
        raise UserError(f"parents must have the same dimensionality, got {len(strides_a)}-D and {len(strides_b)}-D")
    spatial = tuple(2 * math.lcm(a, b) for a, b in zip(strides_a, strides_b))
    return (batch_size, spec_a.input_channels, *spatial)


def _per_axis(stride: int | Sequence[int], dims: int) -> Sequence[int]:
    return [stride] * dims if isinstance(stride, int) else stride
