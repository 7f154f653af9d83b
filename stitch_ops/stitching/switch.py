"""The switch: what the consumers of a matched feature map read.

Every consumer of a matched node ``a_k`` reads a switch instead of ``a_k``. The
switch owns the stitch ``b_k -> a_k`` and returns, per its :class:`SwitchMode`,
the original map, the stitched map of the other network, their average, or a
random choice per sample.

In double-batched training (DESIGN.md, "The method in one page", step 4) the
switch also computes its loss, because it is the one place where all the maps
involved meet. The batch holds every sample twice: the first copy carries the
parents' unstitched reference maps, the second copy whatever the switches pass
on. With (1) the reference ``a_k``, (2) the forwarded ``a_k`` (second copy), (3) the
stitched reference ``stitch(b_k)`` and (4) the stitched forwarded ``stitch(b_k)``,
the loss is a sum of :class:`LossTerm` s, each anchored to (1): by default
``MSE(1, 2) + MSE(1, 3) + MSE(1, 4)``. The paper's text reads "between (1) and
(2), (3) and (4)"; taken literally ``MSE(3, 4)`` lets a stitch shrink towards
zero, so every term here is anchored to the reference. Direct matching needs no
switch: the combined network computes it from the matched maps'
:class:`~stitch_ops.stitching.stitch.PairStatistics`.

The reference copy is the parents' own forward pass (every earlier switch passes the
reference on, and no layer of a frozen nnU-Net mixes the samples of a batch), and nothing
in it depends on a stitch. So it is not put through the combined network at all: the
combined network computes the reference maps once per step without autograd
(:meth:`~stitch_ops.stitching.network.StitchedNetwork.switch_losses`) and hands each
switch its pair, ``reference`` and ``other_reference``; the switches then see only the
forwarded copy. Same losses and gradients as concatenating the two copies into one batch
(to float rounding; ``tests/stitching/test_double_batched.py`` compares both), without
the reference copy's share of the later layers, its backward pass and the
concatenation at every switch (``bench/training_step.py``).

Random choices use an explicit :class:`torch.Generator`, never the global RNG.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stitch_ops.stitching.stitch import Stitch

__all__ = ["DEFAULT_LOSS_TERMS", "LossTerm", "Switch", "SwitchMode", "SwitchOutput"]


class SwitchMode(StrEnum):
    """What a switch passes on (in the second half of a double batch, while training)."""

    ORIGINAL = "original"
    STITCHED = "stitched"
    AVERAGE = "average"
    RANDOM = "random"


class LossTerm(StrEnum):
    """One double-batched loss term, each an MSE against the reference map (1)."""

    FORWARDED = "forwarded"  # MSE(1, 2): the network's own map after earlier switches
    STITCHED_ORIGINAL = "stitched_original"  # MSE(1, 3): the stitch on the other network's reference map
    STITCHED_FORWARDED = "stitched_forwarded"  # MSE(1, 4): the stitch on the other network's forwarded map


DEFAULT_LOSS_TERMS = (LossTerm.FORWARDED, LossTerm.STITCHED_ORIGINAL, LossTerm.STITCHED_FORWARDED)


class SwitchOutput(NamedTuple):
    """The map consumers read, and the switch's training loss (``None`` when not training)."""

    map: Tensor
    loss: Tensor | None


class Switch(nn.Module):
    """Chooses between a feature map and the stitched feature map of the other network.

    Args:
        stitch: maps the other network's feature map into this one's space.
    """

    def __init__(self, stitch: Stitch):
        super().__init__()
        self.stitch = stitch
        self.mode = SwitchMode.ORIGINAL
        self.generator: torch.Generator | None = None
        self.loss_terms: tuple[LossTerm, ...] | None = None

    def set_mode(self, mode: SwitchMode | str, generator: torch.Generator | None = None) -> None:
        """Set what the switch passes on; ``RANDOM`` needs a ``generator``."""
        mode = SwitchMode(mode)
        if mode is SwitchMode.RANDOM and generator is None:
            raise ValueError("SwitchMode.RANDOM needs an explicit torch.Generator; none was given")
        self.mode, self.generator = mode, generator

    def set_double_batched(self, loss_terms: tuple[LossTerm | str, ...] | None) -> None:
        """Expect double batches and compute the loss from ``loss_terms``; ``None``: plain batches, no loss."""
        if loss_terms is not None and not loss_terms:
            raise ValueError(f"loss_terms should name at least one of {[t.value for t in LossTerm]}, got none")
        self.loss_terms = None if loss_terms is None else tuple(LossTerm(term) for term in loss_terms)

    def forward(self, original: Tensor, other: Tensor, reference: Tensor | None = None,
                other_reference: Tensor | None = None) -> SwitchOutput:
        """``original``: this network's map ``B C_b ...``; ``other``: the other network's map ``B C_a ...``.

        Double-batched training also takes ``reference`` and ``other_reference``: the two
        parents' own (unstitched) maps at this match for the same images, computed without
        autograd; ``original`` and ``other`` are then the forwarded copy's maps.
        """
        if self.loss_terms is not None:
            return self._double_batched(original, other, reference, other_reference)
        if self.mode is SwitchMode.ORIGINAL:
            return SwitchOutput(original, None)
        return SwitchOutput(self._choose(original, self.stitch(other)), None)

    def extra_repr(self) -> str:
        return f"mode={self.mode.value}, double_batched={self.loss_terms is not None}"

    def _choose(self, original: Tensor, stitched: Tensor) -> Tensor:
        if self.mode is SwitchMode.ORIGINAL:
            return original
        if self.mode is SwitchMode.STITCHED:
            return stitched
        if self.mode is SwitchMode.AVERAGE:
            return torch.lerp(original, stitched, 0.5)  # (original + stitched) / 2 in one pass
        take_stitched = torch.rand(len(original), generator=self.generator, device=self.generator.device) < 0.5
        take_stitched = take_stitched.to(original.device).view(-1, *([1] * (original.dim() - 1)))
        return torch.where(take_stitched, stitched, original)

    def _double_batched(self, forwarded: Tensor, other_forwarded: Tensor, reference: Tensor | None,
                        other_reference: Tensor | None) -> SwitchOutput:
        """The loss against the reference (1), and the mode's choice for the forwarded copy."""
        if reference is None or other_reference is None:
            raise ValueError("a double-batched switch needs the reference maps of both parents "
                             "(StitchedNetwork.switch_losses computes them); got none")
        if reference.shape != forwarded.shape or other_reference.shape != other_forwarded.shape:
            raise ValueError(f"the reference maps should have the forwarded maps' shapes {tuple(forwarded.shape)} and "
                             f"{tuple(other_forwarded.shape)}, got {tuple(reference.shape)} and "
                             f"{tuple(other_reference.shape)}")
        stitched_forwarded = self.stitch(other_forwarded)

        def compared(term: LossTerm) -> Tensor:
            if term is LossTerm.FORWARDED:
                return forwarded
            if term is LossTerm.STITCHED_ORIGINAL:
                return self.stitch(other_reference)
            return stitched_forwarded

        loss = sum(F.mse_loss(compared(term), reference) for term in self.loss_terms)
        return SwitchOutput(self._choose(forwarded, stitched_forwarded), loss)
