"""Cost of a stitch training step, measured side by side on the same batch.

- direct-matching step / (forward of A + forward of B): goal <= 1.5; both the
  exact step (moments over every position) and the default step (moments
  estimated from a random ``--moment-fraction`` of the positions, as training does);
- double-batched step / exact direct-matching step: reported;
- double-batched step as trained (the reference copy once per step without autograd) / the
  same step on one batch holding every sample twice (the reference computation of
  ``tests/stitching/doubled_batch.py``, how training ran before): side by side, after checking
  on one batch that both give the same loss and gradients (relative L2 reported).

Parents are nnU-Net 2-D networks built from plans (A: 4 stages, B: 5 stages,
different widths), in eval mode; forwards of the parents run without autograd,
as a plain inference would.

    python bench/training_step.py [--dims 2] [--base-features 16] [--batch 4] [--patch 128] [--threads 1] [--repeats 10]
                                  [--moment-fraction 0.125]

The stitches keep their default initialisation (the paper's set-up and the pipeline's default);
the cost of a step does not depend on where the schedule is.
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved_medians, print_table, save_results, bench_parents
from doubled_batch import DoubledBatch  # tests/stitching, on the path through _common

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

    doubled = DoubledBatch(network)

    def doubled_step():
        network.set_training(StitchMethod.DOUBLE_BATCHED)
        network.configure(SwitchConfiguration((SwitchMode.RANDOM,) * n, (SwitchMode.RANDOM,) * n), generator)
        optimizer.zero_grad(set_to_none=True)
        doubled(images).backward()
        optimizer.step()

    agreement = _same_gradients(network, doubled, images)
    print(f"double-batched, as trained vs doubled batch, one batch: loss relative difference "
          f"{agreement['loss']:.1e}, gradients relative L2 {agreement['gradients']:.1e}")

    subsampled = f"direct-matching step, {args.moment_fraction:g} of positions"
    before = "double-batched step, doubled batch (before)"
    times = interleaved_medians(
        {
            "forward A + forward B": parents_forward,
            "direct-matching step, exact": step(StitchMethod.DIRECT_MATCHING),
            subsampled: step(StitchMethod.DIRECT_MATCHING, subsampled=True),
            "double-batched step": step(StitchMethod.DOUBLE_BATCHED),
            before: doubled_step,
        },
        repeats=args.repeats,
    )
    direct_ratio = times["direct-matching step, exact"] / times["forward A + forward B"]
    subsampled_ratio = times[subsampled] / times["forward A + forward B"]
    double_ratio = times["double-batched step"] / times["direct-matching step, exact"]
    after_before = times["double-batched step"] / times[before]
    print_table(
        f"stitch training step, {args.dims}-D, base features {f}, batch {args.batch}, patch {args.patch}, {n} matches ({2 * n} stitches), "
        f"{args.threads} thread(s), median of {args.repeats}",
        [(name, f"{seconds * 1000:.1f}") for name, seconds in times.items()]
        + [("direct, exact / (A + B)", f"{direct_ratio:.2f}"),
           (f"direct, {args.moment_fraction:g} of positions / (A + B)  [goal <= 1.5]", f"{subsampled_ratio:.2f}"),
           ("double-batched / direct, exact", f"{double_ratio:.2f}"),
           ("double-batched step / doubled batch (before)", f"{after_before:.3f}"),
           ("double-batched step / (A + B)", f"{times['double-batched step'] / times['forward A + forward B']:.2f}")],
        ("what", "ms"),
    )
    save_results(f"training_step_{args.dims}d_{f}_{args.patch}", {
        **vars(args), "matches": n, "seconds": times, "direct_over_forwards": direct_ratio,
        "subsampled_direct_over_forwards": subsampled_ratio, "double_over_direct": double_ratio,
        "double_over_doubled_batch": after_before, "double_batched_agreement": agreement})


def _same_gradients(network: StitchedNetwork, doubled: DoubledBatch, images: torch.Tensor) -> dict[str, float]:
    """Loss and stitch gradients of one double-batched step both ways, with the same switch draws:
    relative differences (the loss) and relative L2 over every stitch parameter (the gradients)."""
    n = len(network.matches)
    results = []
    for losses in (lambda: doubled(images), lambda: sum(p.a + p.b for p in network.switch_losses(images))):
        network.set_training(StitchMethod.DOUBLE_BATCHED)
        network.configure(SwitchConfiguration((SwitchMode.RANDOM,) * n, (SwitchMode.RANDOM,) * n),
                          torch.Generator().manual_seed(11))
        network.zero_grad(set_to_none=True)
        loss = losses()
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in network.stitch_parameters()])))
    network.zero_grad(set_to_none=True)
    (loss_before, before), (loss_after, after) = results
    return {"loss": float((loss_after - loss_before).abs() / loss_before.abs()),
            "gradients": float((after - before).norm() / before.norm())}


if __name__ == "__main__":
    main()
