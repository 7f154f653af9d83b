"""Double-batched losses computed literally: every sample put in one batch twice.

The reference computation of the method's definition (DESIGN.md, step 4), as the package
computed it until the reference copy moved out of the combined network: the images are
concatenated with themselves, the first half carries the reference (passed on detached at
every switch), the second half the switches' choice, and each switch takes its loss from
the two halves. Used by ``test_double_batched.py`` and ``bench/training_step.py`` to check
(and time) :meth:`StitchedNetwork.switch_losses` against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from stitch_ops.stitching import LossTerm, StitchedNetwork
from stitch_ops.stitching.merge import merge_graphs, program
from stitch_ops.stitching.switch import Switch


class _DoubledSwitch(nn.Module):
    """A network's switch (its stitch, mode, generator and loss terms) on a doubled batch."""

    def __init__(self, switch: Switch):
        super().__init__()
        self.switch = switch

    def forward(self, original: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
        reference, forwarded = original.chunk(2)
        other_reference, other_forwarded = other.chunk(2)
        reference = reference.detach()
        stitched_forwarded = self.switch.stitch(other_forwarded)
        compared = {LossTerm.FORWARDED: lambda: forwarded,
                    LossTerm.STITCHED_ORIGINAL: lambda: self.switch.stitch(other_reference.detach()),
                    LossTerm.STITCHED_FORWARDED: lambda: stitched_forwarded}
        loss = sum(F.mse_loss(compared[term](), reference) for term in self.switch.loss_terms)
        return torch.cat([reference, self.switch._choose(forwarded, stitched_forwarded)]), loss


class DoubledBatch(nn.Module):
    """``network``'s parents and stitches, run on the doubled batch (shares the modules)."""

    def __init__(self, network: StitchedNetwork):
        super().__init__()
        self.parent_a, self.parent_b = network.parent_a, network.parent_b
        self.switches_a = nn.ModuleList(_DoubledSwitch(switch) for switch in network.switches_a)
        self.switches_b = nn.ModuleList(_DoubledSwitch(switch) for switch in network.switches_b)
        merged = merge_graphs(network.graph_a.module.graph, network.graph_b.module.graph, network.matches,
                              switch_a=lambda k: f"switches_a.{k}", switch_b=lambda k: f"switches_b.{k}")
        self._program: fx.GraphModule = program(self, merged, tuple(zip(merged.losses_a, merged.losses_b)))

    def forward(self, images: Tensor) -> Tensor:
        """The summed loss of every switch for ``images`` (given once; doubled here)."""
        return sum(a + b for a, b in self._program(torch.cat([images, images])))
