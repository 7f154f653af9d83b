"""Merge two traced networks and their switches into one fx graph.

The combined network is a single :class:`torch.fx.Graph` holding both parents'
operations, interleaved in an order that respects every stitch: for each match
``k`` (in order) we copy A's nodes up to ``a_k``, B's nodes up to ``b_k``, then
add the switch at ``a_k`` (reading ``a_k`` and ``b_k``) and the switch at
``b_k`` (reading ``b_k`` and ``a_k``); every later consumer of ``a_k`` reads
the switch. Because matches are strictly increasing in both networks this is a
topological order of the combined graph; ``Graph.lint`` checks it.

Each user of the merge picks its outputs (a parent's logits, the switch losses,
the matched maps) and dead-code elimination removes whatever those outputs do
not need, so e.g. a stitch-ensemble never runs a stitch it does not use. A switch
that passes its own map on may be made a plain wire (:func:`bypass_switches`), so
that the layers only it read drop out too. :func:`parent_maps` copies the two
parents side by side without any switch (their own matched maps).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from torch import fx, nn

from stitch_ops.graph.matching import Match
from stitch_ops.stitching.stitch import PairStatistics

__all__ = ["MergedGraph", "bypass_switches", "merge_graphs", "parent_maps", "program"]


@dataclass(frozen=True, eq=False)
class MergedGraph:
    """The combined graph and the nodes a caller may want as outputs.

    Attributes:
        graph: the combined fx graph, with no output node yet.
        output_a: A's output (logits) ``B K_a [spatial...]``.
        output_b: B's output (logits).
        maps_a: ``a_k`` (before its switch) for every match k.
        maps_b: ``b_k`` (before its switch).
        losses_a: loss of the switch at ``a_k`` (``None`` at run time unless double-batched).
        losses_b: loss of the switch at ``b_k``.
        statistics: per match, the :class:`PairStatistics` of ``(a_k, b_k)``.
        switches_a: the call of the switch at ``a_k``, for every match k.
        switches_b: the call of the switch at ``b_k``.
    """

    graph: fx.Graph
    output_a: fx.Node
    output_b: fx.Node
    maps_a: tuple[fx.Node, ...]
    maps_b: tuple[fx.Node, ...]
    losses_a: tuple[fx.Node, ...]
    losses_b: tuple[fx.Node, ...]
    statistics: tuple[fx.Node, ...]
    switches_a: tuple[fx.Node, ...] = ()
    switches_b: tuple[fx.Node, ...] = ()


def merge_graphs(
    graph_a: fx.Graph,
    graph_b: fx.Graph,
    matches: Sequence[Match],
    switch_a: Callable[[int], str],
    switch_b: Callable[[int], str],
    prefix_a: str = "parent_a",
    prefix_b: str = "parent_b",
    moments: str | None = None,
    references: bool = False,
) -> MergedGraph:
    """Interleave two parents' graphs with a pair of switches per match.

    Args:
        graph_a: traced graph of A (one placeholder, one tensor output).
        graph_b: traced graph of B.
        matches: strictly increasing in both networks' topological order.
        switch_a: qualified module name of the switch at ``a_k``, given k.
        switch_b: qualified module name of the switch at ``b_k``.
        prefix_a: where A's modules live in the root module.
        prefix_b: where B's modules live.
        moments: qualified name of a module computing the :class:`PairStatistics` of
            ``(a_k, b_k)`` (e.g. on a random subset of positions); ``None``: ``PairStatistics.of``.
        references: the graph takes a second input, ``references``: per match the pair
            ``(a_k, b_k)`` of the parents' own maps (:func:`parent_maps`), which each switch
            gets after its two maps (own reference first): double-batched training.
    """
    merged = fx.Graph()
    x = merged.placeholder("x")
    given = merged.placeholder("references") if references else None
    side_a = _Side(graph_a, prefix_a, merged, x)
    side_b = _Side(graph_b, prefix_b, merged, x)
    maps_a, maps_b, losses_a, losses_b, statistics, calls_a, calls_b = [], [], [], [], [], [], []
    for k, match in enumerate(matches):
        original_a = side_a.copy_through(match.node_a)
        original_b = side_b.copy_through(match.node_b)
        extra_a = extra_b = ()
        if given is not None:
            pair = merged.call_function(operator.getitem, (given, k))
            reference_a = merged.call_function(operator.getitem, (pair, 0))
            reference_b = merged.call_function(operator.getitem, (pair, 1))
            extra_a, extra_b = (reference_a, reference_b), (reference_b, reference_a)
        switched_a = merged.call_module(switch_a(k), (original_a, original_b, *extra_a))
        switched_b = merged.call_module(switch_b(k), (original_b, original_a, *extra_b))
        calls_a.append(switched_a)
        calls_b.append(switched_b)
        side_a.redirect(match.node_a, merged.call_function(operator.getitem, (switched_a, 0)))
        side_b.redirect(match.node_b, merged.call_function(operator.getitem, (switched_b, 0)))
        maps_a.append(original_a)
        maps_b.append(original_b)
        losses_a.append(merged.call_function(operator.getitem, (switched_a, 1)))
        losses_b.append(merged.call_function(operator.getitem, (switched_b, 1)))
        statistics.append(merged.call_function(PairStatistics.of, (original_a, original_b)) if moments is None
                          else merged.call_module(moments, (original_a, original_b)))
    return MergedGraph(
        graph=merged,
        output_a=side_a.copy_rest(),
        output_b=side_b.copy_rest(),
        maps_a=tuple(maps_a),
        maps_b=tuple(maps_b),
        losses_a=tuple(losses_a),
        losses_b=tuple(losses_b),
        statistics=tuple(statistics),
        switches_a=tuple(calls_a),
        switches_b=tuple(calls_b),
    )


def parent_maps(
    graph_a: fx.Graph,
    graph_b: fx.Graph,
    matches: Sequence[Match],
    prefix_a: str = "parent_a",
    prefix_b: str = "parent_b",
) -> MergedGraph:
    """Both parents copied side by side with no switch: ``maps_a`` / ``maps_b`` are their own
    matched maps (the reference of double-batched training); no losses, statistics or switches."""
    merged = fx.Graph()
    x = merged.placeholder("x")
    side_a = _Side(graph_a, prefix_a, merged, x)
    side_b = _Side(graph_b, prefix_b, merged, x)
    maps_a = tuple(side_a.copy_through(match.node_a) for match in matches)
    maps_b = tuple(side_b.copy_through(match.node_b) for match in matches)
    return MergedGraph(graph=merged, output_a=side_a.copy_rest(), output_b=side_b.copy_rest(), maps_a=maps_a,
                       maps_b=maps_b, losses_a=(), losses_b=(), statistics=())


def bypass_switches(merged: MergedGraph, switches: Sequence[fx.Node]) -> MergedGraph:
    """Make each of ``switches`` (switch calls of ``merged``) a wire: whatever read the map it
    passes on (a parent's output included) reads the switch's own input instead. Only for
    switches that pass their own map on (on ``original``, outside double-batched training): the
    values are the same, and dead-code elimination (:func:`program`) then drops the switch and
    every layer only it read. Returns ``merged`` with its outputs updated (same graph)."""
    wired: dict[fx.Node, fx.Node] = {}
    for switch in switches:
        for user in list(switch.users):
            if user.target is operator.getitem and user.args[1] == 0:
                user.replace_all_uses_with(switch.args[0])
                wired[user] = switch.args[0]
    return replace(merged, output_a=wired.get(merged.output_a, merged.output_a),
                   output_b=wired.get(merged.output_b, merged.output_b))


def program(root: nn.Module, merged: MergedGraph, outputs) -> fx.GraphModule:
    """A runnable module returning ``outputs`` (nodes of ``merged``, possibly nested in tuples).

    Consumes ``merged`` (its graph gets the output node). The module shares its
    submodules with ``root``; nothing is copied.
    """
    merged.graph.output(outputs)
    merged.graph.eliminate_dead_code(is_impure_node=_is_impure)
    merged.graph.lint()
    return fx.GraphModule(root, merged.graph)


def _is_impure(node: fx.Node) -> bool:
    """Modules (parents' layers, switches) are pure: their output is all they give; other nodes as fx decides."""
    return node.op != "call_module" and node.is_impure()


class _Side:
    """Copies one parent's nodes into the merged graph, in order, on demand."""

    def __init__(self, source: fx.Graph, prefix: str, target: fx.Graph, x: fx.Node):
        self.nodes = [node for node in source.nodes if node.op != "output"]
        self.output = next(node for node in source.nodes if node.op == "output")
        self.position = {node.name: i for i, node in enumerate(self.nodes)}
        self.prefix, self.target, self.x = prefix, target, x
        self.env: dict[fx.Node, fx.Node] = {}
        self.copied = 0

    def copy_through(self, name: str) -> fx.Node:
        """Copy every node up to and including ``name``; return the copy of ``name``."""
        if name not in self.position:
            raise ValueError(f"matched node {name!r} is not in the traced graph of {self.prefix}")
        stop = self.position[name] + 1
        if stop <= self.copied:
            raise ValueError(
                f"matches must be strictly increasing in both networks' topological order; "
                f"{name!r} ({self.prefix}) comes at or before an earlier match"
            )
        while self.copied < stop:
            self._copy(self.nodes[self.copied])
            self.copied += 1
        return self.env[self.nodes[stop - 1]]

    def redirect(self, name: str, replacement: fx.Node) -> None:
        """From now on, consumers of ``name`` read ``replacement`` (the switch)."""
        self.env[self.nodes[self.position[name]]] = replacement

    def copy_rest(self) -> fx.Node:
        """Copy the remaining nodes; return the copy of the network's output."""
        while self.copied < len(self.nodes):
            self._copy(self.nodes[self.copied])
            self.copied += 1
        return self.env[self.output.args[0]]

    def _copy(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.env[node] = self.x
            return
        copied = self.target.node_copy(node, lambda n: self.env[n])
        if node.op in ("call_module", "get_attr"):
            copied.target = f"{self.prefix}.{node.target}"
        self.env[node] = copied
