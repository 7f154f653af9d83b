"""Networks as graphs: tracing to a DAG of feature maps, and matching the layers of two networks."""

from stitch_ops.graph.matching import (
    Match,
    MatchingConfig,
    combined_graph_is_acyclic,
    last_merge_match,
    match_networks,
    match_nodes,
)
from stitch_ops.graph.trace import GraphNode, NetworkGraph, make_out_of_place, trace_network

__all__ = [
    "GraphNode",
    "Match",
    "MatchingConfig",
    "NetworkGraph",
    "combined_graph_is_acyclic",
    "last_merge_match",
    "make_out_of_place",
    "match_networks",
    "match_nodes",
    "trace_network",
]
