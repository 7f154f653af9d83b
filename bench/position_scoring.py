"""Scoring N stitch positions with shared prefixes / N separate stitch-ensemble inferences (goal <= 0.5).

The shared path is :class:`~stitch_ops.stitching.positions.PositionEnsembles`: each parent
runs once, and per position only the layers after its stitch; the separate path runs
:func:`~stitch_ops.stitching.extract_stitch_ensemble` at each k, one after the other.
Measured side by side, interleaved, for N = 16 evenly spread positions and for every
position, two ways:

- forward of one patch (``torch.inference_mode``), as nnU-Net's sliding window runs it;
- through nnU-Net's predictor on one preprocessed image (``predict_logits_from_preprocessed_data``,
  same settings as the pipeline): one stacked prediction (one logits accumulator per
  position) against N predictors.

``bound`` is what sharing prefixes can reach at best: 1/N (one run of both parents) plus the
mean share of the parents' layer time that lies after the positions' stitches, from a
per-layer CPU-time profile of the parents.

    python bench/position_scoring.py [--base-features 32] [--patch 128] [--image 192] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("nnUNet_compile", "f")  # before nnunetv2 is imported: eager networks on both paths
os.environ.setdefault("nnUNet_def_n_proc", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import interleaved_medians, print_table, save_results, bench_parents  # noqa: E402
from torch import fx  # noqa: E402

from stitch_ops.nnunet.model import NnUNetModel  # noqa: E402
from stitch_ops.nnunet.predict import predictor_for  # noqa: E402
from stitch_ops.stitching import StitchedNetwork, extract_stitch_ensemble  # noqa: E402
from stitch_ops.stitching.pipeline import evaluated_positions  # noqa: E402
from stitch_ops.stitching.positions import PositionEnsembles  # noqa: E402


class _LayerTimes(fx.Interpreter):
    """Runs a traced parent and adds up each node's CPU time."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.seconds: dict[str, float] = {}

    def run_node(self, node: fx.Node):
        start = time.process_time()
        result = super().run_node(node)
        self.seconds[node.name] = self.seconds.get(node.name, 0.0) + time.process_time() - start
        return result


def _after_shares(network: StitchedNetwork, x: torch.Tensor, repeats: int) -> list[float]:
    """Per match k: the share of both parents' layer time spent on layers that depend on ``a_k`` / ``b_k``."""
    def profile(module: fx.GraphModule) -> dict[str, float]:
        interpreter = _LayerTimes(module)
        with torch.inference_mode():
            for _ in range(repeats):
                interpreter.run(x)
        return interpreter.seconds

    def descendants(module: fx.GraphModule, name: str) -> set[str]:
        changed: set[fx.Node] = set()
        for node in module.graph.nodes:
            if node.name == name or any(arg in changed for arg in node.all_input_nodes):
                changed.add(node)
        return {node.name for node in changed if node.name != name}

    times_a, times_b = profile(network.parent_a), profile(network.parent_b)
    total = sum(times_a.values()) + sum(times_b.values())
    return [(sum(times_a.get(n, 0.0) for n in descendants(network.parent_a, m.node_a))
             + sum(times_b.get(n, 0.0) for n in descendants(network.parent_b, m.node_b))) / total
            for m in network.matches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-features", type=int, default=32)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--image", type=int, default=192, help="image side for the predictor (2 x 2 sliding windows)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--positions", type=int, nargs="+", default=[16, 0],
                        help="numbers of evenly spread positions; 0: every position")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    f, patch = args.base_features, (args.patch, args.patch)
    (spec_a, net_a), (spec_b, net_b) = bench_parents(f, patch_size=patch)
    network = StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b)
    n = len(network.matches)
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(0))
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, args.image, args.image)).astype(np.float32))
    shares = _after_shares(network, x, args.repeats)

    def as_model(module: torch.nn.Module) -> NnUNetModel:
        return NnUNetModel(module, spec_a.plans, spec_a.dataset_json, spec_a.configuration, None, "bench")

    rows, results = [], {**vars(args), "matches": n, "after_share": shares, "runs": {}}
    for requested in args.positions:
        positions = evaluated_positions(n, requested or None)
        shared = PositionEnsembles(network, positions).eval()
        separate = [extract_stitch_ensemble(network, k).eval() for k in positions]

        def forward_shared():
            with torch.inference_mode():
                shared(x)

        def forward_separate():
            with torch.inference_mode():
                for ensemble in separate:
                    ensemble(x)

        forward = interleaved_medians({"shared": forward_shared, "separate": forward_separate}, args.repeats, warmup=1)
        stacked_predictor = predictor_for(as_model(shared), torch.device("cpu"), False, len(positions))
        predictors = [predictor_for(as_model(ensemble), torch.device("cpu"), False) for ensemble in separate]
        predictor = interleaved_medians({
            "shared": lambda: stacked_predictor.predict_logits_from_preprocessed_data(image),
            "separate": lambda: [p.predict_logits_from_preprocessed_data(image) for p in predictors],
        }, args.repeats, warmup=1)
        bound = 1 / len(positions) + float(np.mean([shares[k] for k in positions]))
        label = f"{len(positions)}" + (" (all)" if len(positions) == n else "")
        for how, times in ((f"forward, 1 x {args.patch}^2 patch", forward),
                           (f"nnU-Net predictor, {args.image}^2 image", predictor)):
            rows.append((label, how, f"{times['shared']:.2f}", f"{times['separate']:.2f}",
                         f"{times['shared'] / times['separate']:.3f}", f"{bound:.3f}"))
        results["runs"][label] = {"positions": positions, "forward_seconds": forward, "predictor_seconds": predictor,
                                  "bound": bound}
    print_table(
        f"shared scoring of N positions / N stitch-ensemble inferences [goal <= 0.5]; 2-D parents with {f} base "
        f"features ({n} matches), patch {args.patch}, {args.threads} thread(s), CPU-time median of {args.repeats}",
        rows, ("N", "how", "shared s", "separate s", "ratio", "bound"),
    )
    save_results("position_scoring", results)


if __name__ == "__main__":
    main()
