"""Cost of a stitch training step, measured side by side on the same batch.

- direct-matching step / (forward of A + forward of B): goal <= 1.5; both the
  exact step (moments over every position) and the default step (moments
  estimated from a random ``--moment-fraction`` of the positions, as training does);
- double-batched step / exact direct-matching step: reported.

Parents are nnU-Net 2-D networks built from plans (A: 4 stages, B: 5 stages,
different widths), in eval mode; forwards of the parents run without autograd,
as a plain inference would.

    python bench/training_step.py [--dims 2] [--base-features 16] [--batch 4] [--patch 128] [--threads 1] [--repeats 10]
                                  [--moment-fraction 0.125]
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved_medians, print_table, save_results, bench_parents

from stitch_ops.stitching import StitchedNetwork, StitchTrainingConfig, SwitchConfiguration, SwitchMode, StitchMethod
from stitch_ops.stitching.stitch import MomentSampler
from stitch_ops.stitching.train import DEFAULT_MOMENT_FRACTION, stitch_optimizer, training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--moment-fraction", type=float, default=DEFAULT_MOMENT_FRACTION,
                        help="share of positions the subsampled direct-matching step estimates the moments from")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    f = args.base_features
    (spec_a, net_a), (spec_b, net_b) = bench_parents(f, dims=args.dims)
    network = StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b)
    optimizer = stitch_optimizer(network, StitchTrainingConfig(lr=1e-4))
    images = torch.randn((args.batch, 1) + (args.patch,) * args.dims, generator=torch.Generator().manual_seed(0))
    n = len(network.matches)
    generator = torch.Generator().manual_seed(0)

    def parents_forward():
        with torch.no_grad():
            net_a(images)
            net_b(images)

    sampler = MomentSampler(args.moment_fraction, torch.Generator().manual_seed(0))

    def step(method: StitchMethod, subsampled: bool = False):
        def run():
            network.set_training(method)
            if method is StitchMethod.DOUBLE_BATCHED:
                network.configure(SwitchConfiguration((SwitchMode.RANDOM,) * n, (SwitchMode.RANDOM,) * n), generator)
            else:
                network.configure(SwitchConfiguration.all_original(n))
            training_step(network, optimizer, images, sampler if subsampled else None)

        return run

    subsampled = f"direct-matching step, {args.moment_fraction:g} of positions"
    times = interleaved_medians(
        {
            "forward A + forward B": parents_forward,
            "direct-matching step, exact": step(StitchMethod.DIRECT_MATCHING),
            subsampled: step(StitchMethod.DIRECT_MATCHING, subsampled=True),
            "double-batched step": step(StitchMethod.DOUBLE_BATCHED),
        },
        repeats=args.repeats,
    )
    direct_ratio = times["direct-matching step, exact"] / times["forward A + forward B"]
    subsampled_ratio = times[subsampled] / times["forward A + forward B"]
    double_ratio = times["double-batched step"] / times["direct-matching step, exact"]
    print_table(
        f"stitch training step, {args.dims}-D, base features {f}, batch {args.batch}, patch {args.patch}, {n} matches ({2 * n} stitches), "
        f"{args.threads} thread(s), median of {args.repeats}",
        [(name, f"{seconds * 1000:.1f}") for name, seconds in times.items()]
        + [("direct, exact / (A + B)", f"{direct_ratio:.2f}"),
           (f"direct, {args.moment_fraction:g} of positions / (A + B)  [goal <= 1.5]", f"{subsampled_ratio:.2f}"),
           ("double-batched / direct, exact", f"{double_ratio:.2f}")],
        ("what", "ms"),
    )
    save_results(f"training_step_{args.dims}d_{f}", {**vars(args), "matches": n, "seconds": times, "direct_over_forwards": direct_ratio,
                                                          "subsampled_direct_over_forwards": subsampled_ratio, "double_over_direct": double_ratio})


if __name__ == "__main__":
    main()
