"""Matching two 2 000-node graphs: time and peak memory (linear memory: no 2 000 x 2 000 table).

The graphs are synthetic U-Net-like node sequences (encoder down to 1/32, decoder
back up, skip connections from every encoder stage to its decoder stage) with
different depths per stage, so the two sequences do not align trivially.
Memory is traced with ``tracemalloc`` (NumPy reports its buffers to it) in a
second run, so tracing does not inflate the time.

    python bench/matching.py [--nodes 2000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from _common import print_table, save_results

from stitch_ops.graph import GraphNode, combined_graph_is_acyclic, match_nodes


def unet_like(n: int, stages: int, seed: int) -> list[GraphNode]:
    """``n`` nodes: ``stages`` encoder stages then as many decoder stages, stage lengths drawn at random."""
    rng = np.random.default_rng(seed)
    lengths = rng.multinomial(n - 2 * stages, np.ones(2 * stages) / (2 * stages)) + 1
    scales = np.concatenate([[2.0**s] * lengths[s] for s in range(stages)] + [[2.0 ** (stages - 1 - s)] * lengths[stages + s] for s in range(stages)])
    ends = np.cumsum(lengths) - 1
    skip_sources = {int(ends[s]): int(ends[2 * stages - 2 - s]) + 1 for s in range(stages - 1)}  # encoder stage end -> decoder stage start
    skip_targets = {target: source for source, target in skip_sources.items()}
    nodes = []
    for i in range(n):
        inputs = (f"n{i - 1}",) if i else ()
        if i in skip_targets:
            inputs += (f"n{skip_targets[i]}",)
        nodes.append(GraphNode(index=i, name=f"n{i}", op="call_module", inputs=inputs, shape=(2, 8, 8, 8),
                               downsampling=(scales[i], scales[i]), progress=i / (n - 1), in_degree=len(inputs),
                               out_degree=(2 if i in skip_sources else 1) if i < n - 1 else 0))
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    args = parser.parse_args()
    nodes_a, nodes_b = unet_like(args.nodes, stages=6, seed=0), unet_like(args.nodes, stages=6, seed=1)

    start = time.process_time()
    matches = match_nodes(nodes_a, nodes_b)
    seconds = time.process_time() - start
    tracemalloc.start()  # a second run for memory: tracing slows the first one down
    match_nodes(nodes_a, nodes_b)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table = args.nodes * args.nodes * 8
    acyclic = combined_graph_is_acyclic(nodes_a, nodes_b, matches)
    print_table(
        f"matching two {args.nodes}-node graphs (Hirschberg, linear memory)",
        [
            ("CPU time", f"{seconds:.2f} s"),
            ("peak traced memory", f"{peak / 1e6:.2f} MB"),
            (f"one {args.nodes} x {args.nodes} float64 table", f"{table / 1e6:.1f} MB"),
            ("peak / table", f"{peak / table:.4f}"),
            ("matches", str(len(matches))),
            ("combined graph acyclic", str(acyclic)),
        ],
        ("what", "value"),
    )
    save_results("matching", {"nodes": args.nodes, "seconds": seconds, "peak_bytes": peak, "table_bytes": table, "matches": len(matches), "acyclic": acyclic})


if __name__ == "__main__":
    main()
