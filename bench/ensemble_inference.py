"""Inference cost of a stitch-ensemble relative to the plain two-model ensemble (goal <= 1.05).

Both ensembles return the log of the averaged softmax of the same two parents
(each ensemble with its own copy of the weights, as deployed); the
stitch-ensemble adds two 1x1 stitches and two averages at match k.
Measured side by side, interleaved, on the same batch (plain forward under
``torch.inference_mode``) and through nnU-Net's sliding-window predictor with the
same settings for both (``manual_initialization`` + ``predict_single_npy_array``).

    python bench/ensemble_inference.py [--base-features 32] [--patch 128] [--image 256] [--threads 1] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("nnUNet_compile", "f")  # before nnunetv2 is imported: eager networks for both ensembles
os.environ.setdefault("nnUNet_def_n_proc", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import interleaved_medians, print_table, save_results, bench_parents  # noqa: E402

from stitch_ops.stitching import StitchedNetwork, TwoModelEnsemble, extract_stitch_ensemble  # noqa: E402


def _positions(network: StitchedNetwork) -> dict[str, int]:
    """Matches to time: first, middle, last, and the one whose stitches cost most (C_a * C_b * positions)."""
    def cost(k: int) -> float:
        node_a, node_b = network.graph_a.node(network.matches[k].node_a), network.graph_b.node(network.matches[k].node_b)
        return node_a.channels * node_b.channels / np.prod(node_a.downsampling)

    n = len(network.matches)
    return {"first": 0, "middle": n // 2, "last": n - 1, "costliest": max(range(n), key=cost)}


def _predictor(spec, model):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    plans = PlansManager(dict(spec.plans))
    predictor.manual_initialization(model, plans, plans.get_configuration(spec.configuration), [model.state_dict()],
                                    dict(spec.dataset_json), "nnUNetTrainer", None)
    return predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-features", type=int, default=32)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image", type=int, default=256, help="raw image side for the predictor (sliding windows)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    f, patch = args.base_features, (args.patch, args.patch)
    (spec_a, net_a), (spec_b, net_b) = bench_parents(f, patch_size=patch)
    network = StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b)
    plain = TwoModelEnsemble(net_a, net_b).eval()  # the nnU-Net networks themselves (traced copies live in `network`)
    positions = _positions(network)
    ensembles = {name: extract_stitch_ensemble(network, k).eval() for name, k in positions.items()}
    images = torch.randn(args.batch, 1, *patch, generator=torch.Generator().manual_seed(0))

    def forward(model):
        def run():
            with torch.inference_mode():
                model(images)
        return run

    forward_times = interleaved_medians({"plain": forward(plain), **{n: forward(e) for n, e in ensembles.items()}}, args.repeats)
    rows = [(f"forward, batch {args.batch}", "plain two-model", "-", f"{forward_times['plain'] * 1000:.1f}", "1.000")]
    rows += [(f"forward, batch {args.batch}", f"stitch k={positions[n]} ({n})", network.matches[positions[n]].node_a,
              f"{forward_times[n] * 1000:.1f}", f"{forward_times[n] / forward_times['plain']:.3f}") for n in ensembles]

    raw = np.random.default_rng(0).normal(size=(1, 1, args.image, args.image)).astype(np.float32)
    predictors = {"plain": _predictor(spec_a, plain), **{n: _predictor(spec_a, ensembles[n]) for n in ("middle", "costliest")}}

    def predict(predictor):
        return lambda: predictor.predict_single_npy_array(raw, {"spacing": [999.0, 1.0, 1.0]}, None, None, False)

    predictor_times = interleaved_medians({n: predict(p) for n, p in predictors.items()}, args.repeats, warmup=1)
    rows.append((f"nnU-Net predictor, {args.image}^2", "plain two-model", "-", f"{predictor_times['plain'] * 1000:.1f}", "1.000"))
    rows += [(f"nnU-Net predictor, {args.image}^2", f"stitch k={positions[n]} ({n})", network.matches[positions[n]].node_a,
              f"{predictor_times[n] * 1000:.1f}", f"{predictor_times[n] / predictor_times['plain']:.3f}") for n in ("middle", "costliest")]
    print_table(
        f"stitch-ensemble / plain ensemble inference [goal <= 1.05]; 2-D parents with {f} base features "
        f"({len(network.matches)} matches), patch {args.patch}, {args.threads} thread(s), median of {args.repeats}",
        rows, ("how", "ensemble", "node a_k", "ms", "ratio"),
    )
    save_results("ensemble_inference", {**vars(args), "positions": positions, "forward_seconds": forward_times, "predictor_seconds": predictor_times})


if __name__ == "__main__":
    main()
