"""Match the layers of two networks (DESIGN.md, "The method in one page", step 2).

A *match* pairs a feature map ``a_k`` of network A with a feature map ``b_k``
of network B; stitches are added between them in both directions. Matches are
chosen so that the combined graph stays acyclic: only feature maps with the same
spatial downsampling factor can match, and the chosen pairs are an
order-preserving alignment of the two topological orders (if ``a_k`` comes
before ``a_l`` then ``b_k`` comes before ``b_l``). Within those constraints the
total score is maximal.

Score of a pair (p = progress in [0, 1], h = max(in, out degree) - 1)::

    score(a, b) = (1 - (p_a - p_b)^2 + c) / (1 + c) * (1 + boost * min(h_a, h_b))

The constant ``c`` interpolates between matching by progress (``c = 0``) and
matching as many pairs as possible (``c -> inf``: every allowed pair scores
about the same, so the alignment maximises the count). The boost favours
pairing the start and end points of parallel branches (U-Net skips, residual
additions, concatenations) with each other.

The alignment is the edit-distance dynamic program with free gaps, computed in
linear memory by Hirschberg's divide and conquer (Hirschberg, "A linear space
algorithm for computing maximal common subsequences", CACM 1975): the table of
``len(A) x len(B)`` scores is never held at once.

Example::

    >>> matches = match_networks(trace_network(a, probe), trace_network(b, probe))
    >>> matches[0].node_a, matches[0].node_b
    ('encoder_stages_0_0_convs_0_conv', 'encoder_stages_0_0_convs_0_conv')
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stitch_ops.graph.trace import GraphNode, NetworkGraph

__all__ = ["Match", "MatchingConfig", "combined_graph_is_acyclic", "last_merge_match", "match_networks", "match_nodes"]


@dataclass(frozen=True)
class Match:
    """A matched pair of feature maps ``(a_k, b_k)``; ``k`` is its place in the match list.

    Attributes:
        node_a: fx node name of ``a_k`` in network A.
        node_b: fx node name of ``b_k`` in network B.
        index_a: topological position of ``a_k`` in A.
        index_b: topological position of ``b_k`` in B.
        score: the pair's score.
    """

    node_a: str
    node_b: str
    index_a: int
    index_b: int
    score: float


@dataclass(frozen=True)
class MatchingConfig:
    """Knobs of the matching score.

    Attributes:
        count_weight: ``c`` in the score; 0 matches purely by progress, large
            values maximise the number of matches.
        branch_boost: how much a pair of branching nodes (in- or out-degree > 1)
            is favoured.
    """

    count_weight: float = 0.1
    branch_boost: float = 1.0

    def __post_init__(self) -> None:
        if self.count_weight < 0:
            raise ValueError(f"count_weight should be >= 0, got {self.count_weight}")
        if self.branch_boost < 0:
            raise ValueError(f"branch_boost should be >= 0, got {self.branch_boost}")


def match_networks(graph_a: NetworkGraph, graph_b: NetworkGraph, config: MatchingConfig = MatchingConfig()) -> list[Match]:
    """Match the feature maps of two traced networks (probed with the same input shape).

    Raises:
        ValueError: if the networks were probed with different input shapes, which
            would make their downsampling factors incomparable.
    """
    if graph_a.probe_shape[2:] != graph_b.probe_shape[2:]:
        raise ValueError(
            f"both networks must be traced with the same spatial probe shape, got "
            f"{graph_a.probe_shape[2:]} for A and {graph_b.probe_shape[2:]} for B"
        )
    return match_nodes(graph_a.feature_maps(), graph_b.feature_maps(), config)


def match_nodes(nodes_a: Sequence[GraphNode], nodes_b: Sequence[GraphNode], config: MatchingConfig = MatchingConfig()) -> list[Match]:
    """Order-preserving maximum-score matching of two node sequences (each in topological order)."""
    scorer = _Scorer(nodes_a, nodes_b, config)
    pairs = _hirschberg(scorer, 0, len(nodes_a), 0, len(nodes_b))
    return [
        Match(
            node_a=nodes_a[i].name,
            node_b=nodes_b[j].name,
            index_a=nodes_a[i].index,
            index_b=nodes_b[j].index,
            score=float(scorer.row(i, j, j + 1)[0]),
        )
        for i, j in pairs
    ]


def last_merge_match(graph_a: NetworkGraph, matches: Sequence[Match]) -> int:
    """The k of the first match at or after A's last merge of parallel branches.

    A *merge* is a feature map with more than one input (a U-Net skip concatenation, a
    residual addition). Matches before the last merge carry a stitch whose output the
    network later combines with its own earlier features (in a U-Net, the encoder's skip
    bypasses the stitch); from it on, every feature map lies on the one path to the output.
    Positions measured from this landmark (``k - last_merge_match``) mean the same place in
    networks of different depths, unlike ``k / len(matches)``. ``len(matches)`` when no
    match follows the last merge; 0 when A has no merge.
    """
    merges = [node.index for node in graph_a.feature_maps() if node.in_degree > 1]
    if not merges:
        return 0
    return next((k for k, match in enumerate(matches) if match.index_a >= merges[-1]), len(matches))


def combined_graph_is_acyclic(nodes_a: Sequence[GraphNode], nodes_b: Sequence[GraphNode], matches: Sequence[Match]) -> bool:
    """Whether networks A and B with every stitch of ``matches`` form a DAG.

    The combined graph has, per match k, a switch at ``a_k`` (reading ``a_k`` and,
    through a stitch, ``b_k``) and a switch at ``b_k``; every consumer of ``a_k``
    reads the switch instead of ``a_k``. Checked with Kahn's algorithm.
    """
    switch_of = {("a", m.node_a): ("switch_a", k) for k, m in enumerate(matches)}
    switch_of |= {("b", m.node_b): ("switch_b", k) for k, m in enumerate(matches)}
    edges: dict[tuple, list[tuple]] = defaultdict(list)
    for side, nodes in (("a", nodes_a), ("b", nodes_b)):
        for node in nodes:
            for name in node.inputs:
                edges[switch_of.get((side, name), (side, name))].append((side, node.name))
    for k, m in enumerate(matches):
        for source in (("a", m.node_a), ("b", m.node_b)):
            edges[source] += [("switch_a", k), ("switch_b", k)]
    vertices = set(edges) | {v for targets in edges.values() for v in targets}
    in_degree = dict.fromkeys(vertices, 0)
    for targets in edges.values():
        for target in targets:
            in_degree[target] += 1
    ready = deque(v for v, d in in_degree.items() if d == 0)
    visited = 0
    while ready:
        vertex = ready.popleft()
        visited += 1
        for target in edges[vertex]:
            in_degree[target] -= 1
            if in_degree[target] == 0:
                ready.append(target)
    return visited == len(vertices)


class _Scorer:
    """Scores of one node of A against a slice of B's nodes, computed on demand."""

    def __init__(self, nodes_a: Sequence[GraphNode], nodes_b: Sequence[GraphNode], config: MatchingConfig):
        scales: dict[tuple, int] = {}
        self.config = config
        self.progress_a, self.branch_a, self.scale_a = _arrays(nodes_a, scales)
        self.progress_b, self.branch_b, self.scale_b = _arrays(nodes_b, scales)

    def row(self, i: int, lo: int, hi: int) -> np.ndarray:
        """``score(a_i, b_j)`` for ``j`` in ``[lo, hi)``; ``-inf`` where they cannot match."""
        c = self.config.count_weight
        closeness = (1.0 - (self.progress_a[i] - self.progress_b[lo:hi]) ** 2 + c) / (1.0 + c)
        boost = 1.0 + self.config.branch_boost * np.minimum(self.branch_a[i], self.branch_b[lo:hi])
        return np.where(self.scale_a[i] == self.scale_b[lo:hi], closeness * boost, -np.inf)


def _arrays(nodes: Sequence[GraphNode], scales: dict[tuple, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    progress = np.array([n.progress for n in nodes], dtype=np.float64)
    branch = np.array([max(n.in_degree, n.out_degree, 1) - 1 for n in nodes], dtype=np.float64)
    scale = np.array([scales.setdefault(n.downsampling, len(scales)) for n in nodes], dtype=np.int64)
    return progress, branch, scale


def _hirschberg(scorer: _Scorer, a_lo: int, a_hi: int, b_lo: int, b_hi: int) -> list[tuple[int, int]]:
    """Best alignment of A[a_lo:a_hi] with B[b_lo:b_hi] as (i, j) pairs, in O(len(B)) memory.

    Any order-preserving matching splits at some ``t``: the first half of A
    matches only within B[:t], the second half within B[t:]. The forward scores
    of the first half and the backward scores of the second half give the best
    ``t``; each half is then solved recursively.
    """
    if a_hi <= a_lo or b_hi <= b_lo:
        return []
    if a_hi - a_lo == 1:
        scores = scorer.row(a_lo, b_lo, b_hi)
        j = int(np.argmax(scores))
        return [(a_lo, b_lo + j)] if scores[j] > 0 else []
    mid = (a_lo + a_hi) // 2
    forward = _last_row(scorer, range(a_lo, mid), b_lo, b_hi, reverse=False)
    backward = _last_row(scorer, range(a_hi - 1, mid - 1, -1), b_lo, b_hi, reverse=True)
    split = int(np.argmax(forward + backward[::-1]))
    return _hirschberg(scorer, a_lo, mid, b_lo, b_lo + split) + _hirschberg(scorer, mid, a_hi, b_lo + split, b_hi)


def _last_row(scorer: _Scorer, rows: range, b_lo: int, b_hi: int, reverse: bool) -> np.ndarray:
    """Last row of the alignment table: ``best[t]`` = best score using the first ``t`` of B's nodes.

    With free gaps the recurrence ``F[i][j] = max(F[i-1][j], F[i][j-1], F[i-1][j-1] + s)``
    becomes a running maximum over ``max(F[i-1][j], F[i-1][j-1] + s)``, one
    vectorised pass per row. With ``reverse`` both sequences are read backwards
    (``t`` then counts B's nodes from the end).
    """
    best = np.zeros(b_hi - b_lo + 1)
    for i in rows:
        scores = scorer.row(i, b_lo, b_hi)
        if reverse:
            scores = scores[::-1]
        best[1:] = np.maximum.accumulate(np.maximum(best[1:], best[:-1] + scores))
    return best
