"""The stitch-ensembles at many positions k, computed together with shared prefixes.

Scoring positions (DESIGN.md, "Selecting k") runs the stitch-ensemble at every evaluated k
on the same validation cases. The ensembles at k and k' compute the same thing up to the
earlier of their two stitches: both parents' own, unstitched maps. :class:`PositionEnsembles`
is one network that runs each parent once, keeps its maps, and for each k recomputes only
the layers that depend on the stitched map at ``a_k`` (in A) or ``b_k`` (in B) - the
descendants of the match - reading every other input (e.g. a U-Net skip from before the
stitch) from the parents' own run. Each position's output is exactly what
:func:`~stitch_ops.stitching.ensemble.extract_stitch_ensemble` gives at k: the same layers
applied to the same inputs.

The positions' outputs are stacked along the channel axis (``B (N K) H W [D]``, position by
position). nnU-Net's sliding window accumulates every channel on its own, so predicting this
network once (:func:`~stitch_ops.nnunet.predict.predict_preprocessed_stacked`) gives each
position the logits its own stitch-ensemble would get, for every patch, with one logits
accumulator per position.

With ``reference=True`` the no-stitch reference (both parents' own outputs, softmax averaged:
what :class:`~stitch_ops.stitching.ensemble.TwoModelEnsemble` gives on the same parents) is
stacked last: the parents' own run is there already, so it costs their last layers at most.

Example::

    >>> ensembles = PositionEnsembles(network, positions=[0, 10, 20])
    >>> ensembles(x).shape            # x: B C H W; K classes
    torch.Size([B, 3 * K, H, W])
    >>> ensembles.split(ensembles(x))[1]   # == extract_stitch_ensemble(network, 10)(x)
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn

from stitch_ops.stitching.ensemble import log_mean_softmax
from stitch_ops.stitching.network import StitchedNetwork
from stitch_ops.stitching.switch import Switch, SwitchMode

__all__ = ["PositionEnsembles"]


class PositionEnsembles(nn.Module):
    """The stitch-ensembles of ``network`` at ``positions``, one network with shared prefixes.

    Args:
        network: the combined network whose trained stitches are used (copied: the
            module is standalone, like an extracted stitch-ensemble).
        positions: the matches k to evaluate, distinct; the output stacks them in this order.
        reference: stack the no-stitch reference after the positions.

    Raises:
        ValueError: if ``positions`` is empty, repeats a k or names a k outside the matches.
    """

    def __init__(self, network: StitchedNetwork, positions: Sequence[int], reference: bool = False):
        super().__init__()
        self.positions = tuple(int(k) for k in positions)
        self.reference = reference
        n = len(network.matches)
        if not self.positions or len(set(self.positions)) != len(self.positions):
            raise ValueError(f"positions should be distinct matches k, at least one, got {list(positions)}")
        outside = [k for k in self.positions if not 0 <= k < n]
        if outside:
            raise IndexError(f"positions should be in [0, {n}), got {outside}")
        self.parent_a = copy.deepcopy(network.parent_a).eval().requires_grad_(False)
        self.parent_b = copy.deepcopy(network.parent_b).eval().requires_grad_(False)
        self.switches_a = nn.ModuleList(_averaging(network.switches_a[k]) for k in self.positions)
        self.switches_b = nn.ModuleList(_averaging(network.switches_b[k]) for k in self.positions)
        self.matches = tuple(network.matches[k] for k in self.positions)
        self._program = self._build()

    @property
    def stacked(self) -> int:
        """How many predictions the output stacks: one per position, plus the reference if asked for."""
        return len(self.positions) + self.reference

    def forward(self, x: Tensor) -> Tensor:
        """Images ``B C H W [D]`` -> each position's log averaged probabilities (then the
        reference's), stacked: ``B (N K) H W [D]``."""
        return self._program(x)

    def split(self, stacked: Tensor, dim: int = 1) -> tuple[Tensor, ...]:
        """The output (or an accumulation of it, e.g. nnU-Net's ``(N K) H W [D]`` logits with
        ``dim=0``) cut into one tensor per position, in the order of ``positions`` (the
        reference last)."""
        return stacked.chunk(self.stacked, dim=dim)

    def train(self, mode: bool = True) -> PositionEnsembles:
        """Like ``nn.Module.train``, but the parents' normalisation stays in eval mode."""
        super().train(mode)
        self.parent_a.eval()
        self.parent_b.eval()
        return self

    def _build(self) -> fx.GraphModule:
        """One fx graph: each parent copied once (unstitched), then per position the two
        switches and the descendants of ``a_k`` and ``b_k``; dead code (a parent's own output,
        maps no position reads) is dropped."""
        graph = fx.Graph()
        x = graph.placeholder("x")
        source_a, source_b = self.parent_a.graph, self.parent_b.graph
        own_a, output_a = _copy(source_a, "parent_a", graph, x, {}, None)
        own_b, output_b = _copy(source_b, "parent_b", graph, x, {}, None)
        outputs = []
        for i, match in enumerate(self.matches):
            node_a, node_b = _named(source_a, match.node_a), _named(source_b, match.node_b)
            original_a, original_b = own_a[node_a], own_b[node_b]
            switched_a = graph.call_function(operator.getitem, (graph.call_module(f"switches_a.{i}", (original_a, original_b)), 0))
            switched_b = graph.call_function(operator.getitem, (graph.call_module(f"switches_b.{i}", (original_b, original_a)), 0))
            _, stitched_a = _copy(source_a, "parent_a", graph, x, {**own_a, node_a: switched_a}, node_a)
            _, stitched_b = _copy(source_b, "parent_b", graph, x, {**own_b, node_b: switched_b}, node_b)
            outputs.append(graph.call_function(log_mean_softmax, (stitched_a, stitched_b)))
        if self.reference:
            outputs.append(graph.call_function(log_mean_softmax, (output_a, output_b)))
        graph.output(graph.call_function(torch.cat, (tuple(outputs),), {"dim": 1}))
        graph.eliminate_dead_code(is_impure_node=lambda node: node.op != "call_module" and node.is_impure())
        graph.lint()
        return fx.GraphModule(self, graph)


def _averaging(switch: Switch) -> Switch:
    """A copy of ``switch``'s stitch behind a switch on ``average`` (the stitch-ensemble's mode)."""
    averaging = Switch(copy.deepcopy(switch.stitch))
    averaging.set_mode(SwitchMode.AVERAGE)
    return averaging


def _named(graph: fx.Graph, name: str) -> fx.Node:
    for node in graph.nodes:
        if node.name == name:
            return node
    raise ValueError(f"matched node {name!r} is not in the traced parent")


def _copy(source: fx.Graph, prefix: str, target: fx.Graph, x: fx.Node, env: dict[fx.Node, fx.Node],
          stitched: fx.Node | None) -> tuple[dict[fx.Node, fx.Node], fx.Node]:
    """Copy ``source``'s nodes into ``target``, modules under ``prefix``; returns the map from
    source to copied nodes and the copy of the output.

    ``stitched`` None: every node (the parent's own run). Otherwise only the descendants of
    ``stitched``, whose own value ``env`` maps to the switch; every other input is read
    from ``env`` (the parent's own run).
    """
    env = dict(env)
    changed = {stitched} if stitched is not None else None
    output = None
    for node in source.nodes:
        if node.op == "output":
            output = node
            continue
        if changed is not None and (node is stitched or not any(arg in changed for arg in node.all_input_nodes)):
            continue
        if node.op == "placeholder":
            env[node] = x
            continue
        copied = target.node_copy(node, lambda n: env[n])
        if node.op in ("call_module", "get_attr"):
            copied.target = f"{prefix}.{node.target}"
        env[node] = copied
        if changed is not None:
            changed.add(node)
    return env, env[output.args[0]]
