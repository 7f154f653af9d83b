"""Matching the layers of two networks: order-preserving, same scale, acyclic, linear memory."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from stitch_ops.graph import GraphNode, Match, MatchingConfig, combined_graph_is_acyclic, match_networks, match_nodes, trace_network
from stitch_ops.graph.matching import _Scorer


def _node(index: int, progress: float, scale: float = 1.0, in_degree: int = 1, out_degree: int = 1) -> GraphNode:
    return GraphNode(
        index=index, name=f"n{index}", op="call_module", inputs=(f"n{index - 1}",) if index else (),
        shape=(2, 4, 8, 8), downsampling=(scale, scale), progress=progress, in_degree=in_degree, out_degree=out_degree,
    )


def _chain(progresses, scales=None, branch=()) -> list[GraphNode]:
    scales = scales or [1.0] * len(progresses)
    return [_node(i, p, s, out_degree=2 if i in branch else 1) for i, (p, s) in enumerate(zip(progresses, scales))]


def test_identical_networks_match_one_to_one_on_the_diagonal(unet):
    graph_a = trace_network(unet(residual=True), (2, 1, 32, 32))
    graph_b = trace_network(unet(residual=True, seed=1), (2, 1, 32, 32))
    matches = match_networks(graph_a, graph_b)
    assert [(m.node_a, m.index_a) for m in matches] == [(n.name, n.index) for n in graph_a.feature_maps()]
    assert all(m.node_a == m.node_b and m.index_a == m.index_b for m in matches)


ARCHITECTURE_PAIRS = {
    "deeper_and_wider": (dict(features=(4, 8, 16)), dict(features=(6, 12, 24, 32))),
    "plain_vs_residual": (dict(features=(4, 8, 16)), dict(features=(8, 16, 16), residual=True)),
    "3d_residual_vs_plain": (dict(dims=3, features=(4, 8), residual=True), dict(dims=3, features=(2, 4, 8))),
}


@pytest.mark.parametrize("pair", ARCHITECTURE_PAIRS.values(), ids=ARCHITECTURE_PAIRS.keys())
def test_different_architectures_give_an_acyclic_combined_graph(unet, pair):
    kwargs_a, kwargs_b = pair
    dims = kwargs_a.get("dims", 2)
    graph_a = trace_network(unet(**kwargs_a), (2, 1) + (32,) * dims)
    graph_b = trace_network(unet(**kwargs_b), (2, 1) + (32,) * dims)
    matches = match_networks(graph_a, graph_b)
    assert len(matches) >= min(len(graph_a.feature_maps()), len(graph_b.feature_maps())) // 2
    for m in matches:
        assert graph_a.node(m.node_a).downsampling == graph_b.node(m.node_b).downsampling
    assert [m.index_a for m in matches] == sorted({m.index_a for m in matches})
    assert [m.index_b for m in matches] == sorted({m.index_b for m in matches})
    assert combined_graph_is_acyclic(graph_a.nodes, graph_b.nodes, matches)


def test_acyclicity_check_finds_the_cycle_of_crossing_matches(unet):
    graph = trace_network(unet(), (2, 1, 16, 16))
    early, late = graph.feature_maps()[1], graph.feature_maps()[5]
    crossing = [Match(early.name, late.name, early.index, late.index, 1.0), Match(late.name, early.name, late.index, early.index, 1.0)]
    assert not combined_graph_is_acyclic(graph.nodes, graph.nodes, crossing)
    assert combined_graph_is_acyclic(graph.nodes, graph.nodes, crossing[:1])


def test_only_nodes_at_the_same_downsampling_match():
    nodes_a = _chain([0.0, 0.5, 1.0], scales=[1.0, 2.0, 1.0])
    nodes_b = _chain([0.0, 0.5, 1.0], scales=[1.0, 4.0, 1.0])
    assert [(m.node_a, m.node_b) for m in match_nodes(nodes_a, nodes_b)] == [("n0", "n0"), ("n2", "n2")]


def test_count_weight_interpolates_towards_matching_more_pairs():
    nodes_a, nodes_b = _chain([0.0, 1.0]), _chain([1.0, 1.0])
    assert len(match_nodes(nodes_a, nodes_b, MatchingConfig(count_weight=0.0))) == 1  # progress 0 vs 1 scores 0
    assert len(match_nodes(nodes_a, nodes_b, MatchingConfig(count_weight=1.0))) == 2


def test_branch_boost_pairs_branching_nodes():
    nodes_a = _chain([0.4, 0.5], branch={0})
    nodes_b = _chain([0.5], branch={0})
    assert match_nodes(nodes_a, nodes_b, MatchingConfig(branch_boost=0.0))[0].node_a == "n1"
    assert match_nodes(nodes_a, nodes_b, MatchingConfig(branch_boost=1.0))[0].node_a == "n0"


def _full_table_best_score(scorer: _Scorer, n: int, m: int) -> float:
    """Reference: the quadratic-memory dynamic program."""
    table = np.zeros((n + 1, m + 1))
    for i, j in itertools.product(range(1, n + 1), range(1, m + 1)):
        table[i, j] = max(table[i - 1, j], table[i, j - 1], table[i - 1, j - 1] + scorer.row(i - 1, j - 1, j)[0])
    return table[n, m]


@pytest.mark.parametrize("seed", range(5))
def test_hirschberg_finds_the_optimum_of_the_full_table(seed):
    rng = np.random.default_rng(seed)
    nodes_a = _chain(np.sort(rng.random(23)), scales=rng.choice([1.0, 2.0], 23).tolist(), branch=set(rng.choice(23, 4).tolist()))
    nodes_b = _chain(np.sort(rng.random(17)), scales=rng.choice([1.0, 2.0], 17).tolist(), branch=set(rng.choice(17, 3).tolist()))
    config = MatchingConfig(count_weight=0.05, branch_boost=0.5)
    matches = match_nodes(nodes_a, nodes_b, config)
    best = _full_table_best_score(_Scorer(nodes_a, nodes_b, config), len(nodes_a), len(nodes_b))
    assert sum(m.score for m in matches) == pytest.approx(best)


def test_matching_two_2000_node_graphs_uses_linear_memory():
    n = 2000
    nodes = _chain(np.linspace(0, 1, n), scales=np.repeat([1.0, 2.0, 4.0, 2.0, 1.0], n // 5).tolist())
    tracemalloc.start()
    matches = match_nodes(nodes, nodes)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(matches) == n
    assert peak < n * n * 8 / 20, f"peak {peak / 1e6:.1f} MB is too close to a {n}x{n} table ({n * n * 8 / 1e6:.0f} MB)"
