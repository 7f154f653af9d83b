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

Two more tables, each before / after side by side (``--parts``):

- ``select``: the validation work of a ``stitch_select`` stage per position, every position
  scored, on ``--cases`` generated validation images (``--image`` side, PNG, with labels) in a
  raw folder. Before: the positions' run, the no-stitch reference predicted and scored on its
  own, the selected position's validation cases preprocessed and predicted again (with
  probabilities). After: one run scores the positions and the reference and keeps the logits
  the selected position's validation predictions are exported from. The selected k is the
  best by validation Dice (any k costs the same). Identical files are checked by the tests.
- ``rq1``: the forward of every network RQ1 samples (quick's ``rq1`` settings: 9 counts, 3
  samples, both outputs) on one patch, with every switch run (before) and with switches on
  original as wires (after), outputs checked equal; per network also with ``--rq1-tiles``
  patches and the after path's one program build per network.

    python bench/position_scoring.py [--base-features 32] [--patch 128] [--image 192] [--threads 1] [--repeats 3]
                                     [--parts shared select rq1] [--cases 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("nnUNet_compile", "f")  # before nnunetv2 is imported: eager networks on both paths
os.environ.setdefault("nnUNet_def_n_proc", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import interleaved_medians, print_table, save_results, bench_parents  # noqa: E402
from torch import fx  # noqa: E402

from stitch_ops.nnunet.model import NnUNetModel  # noqa: E402
from stitch_ops.nnunet.predict import predictor_for  # noqa: E402
from stitch_ops.stitching import StitchedNetwork, SwitchConfiguration, extract_stitch_ensemble  # noqa: E402
from stitch_ops.stitching.scoring import evaluated_positions  # noqa: E402
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
    parser.add_argument("--parts", nargs="+", default=["shared", "select", "rq1"], choices=["shared", "select", "rq1"])
    parser.add_argument("--cases", type=int, default=8, help="validation cases of the select part")
    parser.add_argument("--rq1-tiles", type=int, default=40,
                        help="patches RQ1 predicts per network (quick polyp: 40 cases of one 80 x 80 patch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    f, patch = args.base_features, (args.patch, args.patch)
    (spec_a, net_a), (spec_b, net_b) = bench_parents(f, patch_size=patch)
    network = StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b)
    n = len(network.matches)
    if "select" in args.parts:
        _select(network, spec_a, args)
    if "rq1" in args.parts:
        _rq1(network, args)
    if "shared" not in args.parts:
        return
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


def _validation_folder(root: Path, cases: int, side: int) -> Path:
    """``cases`` toy images (a bright disc in noise, 8-bit PNG) and their labels, as an nnU-Net raw folder."""
    from PIL import Image
    from tiny_nets import toy_segmentation

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    images, labels = toy_segmentation(cases, side, torch.Generator().manual_seed(7))
    for i, (image, label) in enumerate(zip(images[:, 0], labels)):
        pixels = ((image.clamp(-1, 2) + 1) / 3 * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "imagesTr" / f"case{i:03d}_0000.png")
        Image.fromarray(label.to(torch.uint8).numpy()).save(root / "labelsTr" / f"case{i:03d}.png")
    return root


def _select(network: StitchedNetwork, spec, args) -> None:
    """A stitch_select stage's validation work, every position, before / after (per position)."""
    from stitch_ops.nnunet.predict import predict_folder, predict_preprocessed, preprocess_cases
    from stitch_ops.stitching import TwoModelEnsemble
    from stitch_ops.stitching import scoring

    n = len(network.matches)
    positions = list(range(n))
    identity = {"pair": "bench", "test_party": "val_a", "approach": "stitch", "trained_on": "bench", "fold": 0}

    def as_model(module: torch.nn.Module, description: str) -> NnUNetModel:
        return NnUNetModel(module, spec.plans, spec.dataset_json, spec.configuration, None, description)

    with tempfile.TemporaryDirectory() as folder:
        raw = _validation_folder(Path(folder) / "raw", args.cases, args.image)
        own = as_model(network.parent_a, "own")
        labels = raw / "labelsTr"
        work = Path(folder) / "work"

        def best(scores: dict) -> int:
            return max(scores, key=lambda k: (scores[k]["dice"].mean(), -k))

        def before():
            cases = preprocess_cases(own, raw / "imagesTr", progress=False)
            scored = scoring.score_positions(network, positions, own, cases, labels, work / "before", "cpu",
                                              **identity)
            scoring.score_on_validation(as_model(TwoModelEnsemble(network.parent_a, network.parent_b), "reference"),
                                         cases, labels, work / "before_no_stitch", "cpu", **identity)
            k = best(scored)
            predict_folder(as_model(extract_stitch_ensemble(network, k), f"k={k}"), raw / "imagesTr",
                           work / "before_val", device="cpu", progress=False)

        def after():
            cases = preprocess_cases(own, raw / "imagesTr", progress=False)
            run = scoring.score_positions_and_reference(network, positions, own, cases, labels, work / "after", "cpu",
                                                         identity=identity, no_stitch=True,
                                                         keep_logits=scoring.KEPT_LOGITS_MEMORY)
            k = best(run.positions)
            predict_preprocessed(as_model(extract_stitch_ensemble(network, k), f"k={k}"), cases, work / "after_val",
                                 device="cpu", progress=False, logits=run.logits[k])

        times = interleaved_medians({"before": before, "after": after}, args.repeats, warmup=1)
    print_table(
        f"stitch_select's validation work, every position ({n}), {args.cases} cases of {args.image}^2, 2-D parents "
        f"with {args.base_features} base features, patch {args.patch}, {args.threads} thread(s), CPU-time median of "
        f"{args.repeats}",
        [("before", f"{times['before']:.2f}", f"{1000 * times['before'] / n:.1f}", ""),
         ("after", f"{times['after']:.2f}", f"{1000 * times['after'] / n:.1f}", f"{times['after'] / times['before']:.3f}")],
        ("path", "s", "ms per position", "after / before"))
    save_results("position_scoring_select", {**vars(args), "matches": n, "seconds": times,
                                             "ratio": times["after"] / times["before"]})


def _rq1(network: StitchedNetwork, args) -> None:
    """RQ1's sampled networks (quick's settings), every switch run / switches on original as wires."""
    from stitch_ops.stitching import Parent
    from stitch_ops.stitching.rq1 import eligible_switches, output_matches, sample_networks, stitch_counts

    n = len(network.matches)
    excluded = output_matches(network)
    generator = torch.Generator().manual_seed(0)
    configurations = [c for count in stitch_counts(len(eligible_switches(n, excluded)), 9)
                      for c in sample_networks(n, excluded, count, 3, generator)]
    every_switch = {parent: network._program(lambda m, p=parent: m.output_a if p is Parent.A else m.output_b)
                    for parent in Parent}
    x = torch.randn(1, 1, args.patch, args.patch, generator=torch.Generator().manual_seed(0))
    network.eval()
    with torch.inference_mode():
        for configuration in configurations:
            network.configure(configuration)
            assert torch.equal(network(x), every_switch[configuration.output](x)), configuration
    network.configure(SwitchConfiguration.all_original(n))

    configured = [network._configured_program(configuration) for configuration in configurations]

    def before():
        with torch.inference_mode():
            for configuration in configurations:
                every_switch[configuration.output](x)

    def after():
        with torch.inference_mode():
            for program in configured:
                program(x)

    def build():
        for configuration in configurations:
            network._configured_program(configuration)

    times = interleaved_medians({"before": before, "after": after, "A": lambda: _no_grad(network.parent_a, x),
                                 "build": build}, args.repeats, warmup=1)
    per = {name: 1000 * seconds / len(configurations) for name, seconds in times.items()}
    tiles = args.rq1_tiles
    print_table(
        f"RQ1: forward of its {len(configurations)} sampled networks on one {args.patch}^2 patch, {args.threads} "
        f"thread(s), CPU-time median of {args.repeats}; parent A alone {1000 * times['A']:.1f} ms; building a "
        f"network's program (once per network) {per['build']:.1f} ms",
        [("every switch run (before)", f"{per['before']:.1f}", "", f"{per['before'] * tiles / 1000:.2f}", ""),
         ("original switches as wires (after)", f"{per['after']:.1f}", f"{times['after'] / times['before']:.3f}",
          f"{(per['after'] * tiles + per['build']) / 1000:.2f}",
          f"{(per['after'] * tiles + per['build']) / (per['before'] * tiles):.3f}")],
        ("path", "ms per network and patch", "after / before", f"s per network, {tiles} patches", "after / before"))
    save_results("position_scoring_rq1", {**vars(args), "matches": n, "networks": len(configurations),
                                          "seconds": times, "ratio": times["after"] / times["before"]})


def _no_grad(module: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        module(x)


if __name__ == "__main__":
    main()
