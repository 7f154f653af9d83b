"""Torch threads of a stitch training beside another stage: torch's default (one per core) / one.

``stitch-ops repro`` runs two stages side by side on a 2-core machine, with
``OMP_WAIT_POLICY=PASSIVE`` so that waiting OpenMP threads sleep instead of spinning. A stitch
training with torch's default thread count then runs two threads on a core it shares. This
measures the wall time of stitch-training steps in worker processes (each a new Python process
with its own network, as a stage is; the imports and the network's construction are not timed):

- ``side by side``: two workers at once, one double-batched and one direct matching, as two
  stitch_train stages of the pipeline run (the time of the slower);
- ``alone``: one double-batched worker, as the last stage of a run is.

Each with torch's default thread count and with one thread; the candidates run in turn,
``--repeats`` times, and the median is reported. Wall time, not CPU time: the question is how
the two processes share the cores, so run it on an otherwise idle machine.

    python bench/stitch_threads.py [--base-features 16] [--patch 80] [--batch 4] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import print_table, save_results

METHODS = ("double_batched", "direct_matching")


def worker(args: argparse.Namespace) -> None:
    """Build the bench parents' stitched network and time ``--steps`` training steps; print the seconds."""
    import torch
    from _common import bench_parents

    from stitch_ops.stitching import (StitchedNetwork, StitchMethod, StitchTrainingConfig, SwitchConfiguration,
                                      SwitchMode)
    from stitch_ops.stitching.stitch import MomentSampler
    from stitch_ops.stitching.train import DEFAULT_MOMENT_FRACTION, stitch_optimizer, training_step

    if args.threads:
        torch.set_num_threads(args.threads)
    (spec_a, net_a), (spec_b, net_b) = bench_parents(args.base_features)
    network = StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b)
    optimizer = stitch_optimizer(network, StitchTrainingConfig(lr=1e-4))
    images = torch.randn((args.batch, 1, args.patch, args.patch), generator=torch.Generator().manual_seed(0))
    n = len(network.matches)
    method = StitchMethod(args.method)
    network.set_training(method)
    sampler = None
    if method is StitchMethod.DOUBLE_BATCHED:
        network.configure(SwitchConfiguration((SwitchMode.RANDOM,) * n, (SwitchMode.RANDOM,) * n),
                          torch.Generator().manual_seed(0))
    else:
        network.configure(SwitchConfiguration.all_original(n))
        sampler = MomentSampler(DEFAULT_MOMENT_FRACTION, torch.Generator().manual_seed(0))
    training_step(network, optimizer, images, sampler)  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        training_step(network, optimizer, images, sampler)
    print(json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}))


def run_workers(args: argparse.Namespace, methods: tuple[str, ...], threads: int) -> tuple[float, int]:
    """Start one worker per method at once; the slowest one's seconds and its thread count."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(args.steps),
               "--base-features", str(args.base_features), "--patch", str(args.patch), "--batch", str(args.batch)]
    processes = [subprocess.Popen([*command, "--method", method], env=env, stdout=subprocess.PIPE, text=True)
                 for method in methods]
    results = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"a worker failed (exit {process.returncode})")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return max(r["seconds"] for r in results), results[0]["threads"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--patch", type=int, default=80)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)  # 0: torch's default
    parser.add_argument("--method", choices=METHODS, default=METHODS[0], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    candidates = {(layout, threads): methods for layout, methods in (("side by side", METHODS), ("alone", METHODS[:1]))
                  for threads in (0, 1)}
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in candidates}
    default_threads = 0
    for _ in range(args.repeats):
        for (layout, threads), methods in candidates.items():
            wall, used = run_workers(args, methods, threads)
            seconds[(layout, threads)].append(wall)
            default_threads = used if threads == 0 else default_threads
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    rows = []
    for layout in ("side by side", "alone"):
        default, one = medians[(layout, 0)], medians[(layout, 1)]
        rows.append((layout, f"{default:.2f}", f"{one:.2f}", f"{one / default:.2f}"))
    print_table(f"{args.steps} stitch-training steps, f = {args.base_features}, batch {args.batch}, {args.patch}^2, "
                f"OMP_WAIT_POLICY=PASSIVE, wall s, median of {args.repeats}",
                rows, ("workers", f"{default_threads} threads (torch's default)", "1 thread", "ratio"))
    save_results("stitch_threads", {**{k: v for k, v in vars(args).items() if k not in ("worker", "threads", "method")},
                                    "default_threads": default_threads,
                                    "seconds": {f"{layout}, {threads or 'default'} threads": values
                                                for (layout, threads), values in seconds.items()}})


if __name__ == "__main__":
    main()
