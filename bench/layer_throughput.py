"""How fast the parents' layers run on one core: is there a kernel-level lever left?

Stitch training and position scoring spend most of their time in the frozen nnU-Nets' layers
(``bench/README.md``, "Where the 20 minutes stand"). This times those layers at the shapes of
``quick``'s 2-D nnU-Nets (``--base-features`` wide, ``--patch`` pixels, one stage per halving
down to 4 pixels, features doubling up to 16 x the base), one torch thread, CPU time, median of
``--repeats``, candidates in turn:

- the 3x3 convolution of each stage (``batch 1``: a sliding-window tile; ``--batch``: a
  training batch) in GFLOP/s, next to a large matrix product's GFLOP/s (what this core reaches
  at best); with PyTorch's default (oneDNN), without oneDNN, and channels-last, and whether each
  alternative gives the default's result bit for bit;
- the instance normalisation of each stage: ``nn.InstanceNorm2d`` / the same
  ``torch.batch_norm`` call ATen's ``instance_norm`` makes (on ``1 x (B C) x ...``), and
  whether both give the same output bit for bit.

    python bench/layer_throughput.py [--base-features 16] [--patch 64] [--batch 4] [--repeats 50]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _common import interleaved_medians, print_table, save_results


def stage_shapes(base_features: int, patch: int) -> list[tuple[int, int]]:
    """(channels, pixels per side) of each stage: halving down to 4 pixels, at most 16 x the base."""
    shapes, channels, side = [], base_features, patch
    while side >= 4:
        shapes.append((channels, side))
        channels, side = min(2 * channels, 16 * base_features), side // 2
    return shapes


def gemm_gflops(repeats: int) -> float:
    """A 1024 x 1024 float32 matrix product's GFLOP/s: the core's practical peak."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    seconds = interleaved_medians({"mm": lambda: torch.mm(a, b)}, repeats)["mm"]
    return 2 * 1024 ** 3 / seconds / 1e9


def conv_row(batch: int, channels: int, side: int, repeats: int) -> dict:
    x = torch.randn(batch, channels, side, side)
    weight, bias = torch.randn(channels, channels, 3, 3), torch.randn(channels)
    x_last, weight_last = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))

    def default() -> torch.Tensor:
        return F.conv2d(x, weight, bias, padding=1)

    def without_onednn() -> torch.Tensor:
        with torch.backends.mkldnn.flags(enabled=False):
            return F.conv2d(x, weight, bias, padding=1)

    def channels_last() -> torch.Tensor:
        return F.conv2d(x_last, weight_last, bias, padding=1)

    candidates: dict[str, Callable[[], torch.Tensor]] = {"default": default, "no_onednn": without_onednn,
                                                         "channels_last": channels_last}
    seconds = interleaved_medians(candidates, repeats)
    flops = 2 * batch * channels * channels * 9 * side * side
    reference = default()
    return {"batch": batch, "channels": channels, "side": side,
            **{f"{name}_us": seconds[name] * 1e6 for name in candidates},
            "gflops": flops / seconds["default"] / 1e9,
            **{f"{name}_equal": bool(torch.equal(reference, run())) for name, run in candidates.items()
               if name != "default"}}


def norm_row(batch: int, channels: int, side: int, repeats: int) -> dict:
    x = torch.randn(batch, channels, side, side)
    norm = torch.nn.InstanceNorm2d(channels, eps=1e-5, affine=True)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)

    def batch_norm_call() -> torch.Tensor:
        flat = x.reshape(1, batch * channels, side, side)
        out = torch.batch_norm(flat, norm.weight.repeat(batch), norm.bias.repeat(batch), None, None, True, 0.0,
                               norm.eps, False)
        return out.view_as(x)

    seconds = interleaved_medians({"module": lambda: norm(x), "batch_norm": batch_norm_call}, repeats)
    return {"batch": batch, "channels": channels, "side": side, "module_us": seconds["module"] * 1e6,
            "batch_norm_us": seconds["batch_norm"] * 1e6, "equal": bool(torch.equal(norm(x), batch_norm_call()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="the training batch (inference tiles are batch 1)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = stage_shapes(args.base_features, args.patch)
    with torch.no_grad():
        peak = gemm_gflops(args.repeats)
        convs = [conv_row(b, c, s, args.repeats) for b in (1, args.batch) for c, s in shapes]
        norms = [norm_row(b, c, s, args.repeats) for b in (1, args.batch) for c, s in shapes]
    print(f"1024 x 1024 matrix product: {peak:.0f} GFLOP/s")
    print_table("3x3 convolution, one thread (us; GFLOP/s and share of the matrix product's, default)",
                [(r["batch"], r["channels"], f"{r['side']}^2", f"{r['default_us']:.0f}", f"{r['gflops']:.0f}",
                  f"{r['gflops'] / peak:.2f}", f"{r['no_onednn_us']:.0f} ({r['no_onednn_equal']})",
                  f"{r['channels_last_us']:.0f} ({r['channels_last_equal']})") for r in convs],
                ("batch", "C", "map", "default", "GFLOP/s", "of mm", "no oneDNN (equal)", "channels-last (equal)"))
    print_table("instance normalisation, one thread (us)",
                [(r["batch"], r["channels"], f"{r['side']}^2", f"{r['module_us']:.0f}", f"{r['batch_norm_us']:.0f}",
                  f"{r['batch_norm_us'] / r['module_us']:.2f}", r["equal"]) for r in norms],
                ("batch", "C", "map", "InstanceNorm2d", "batch_norm call", "ratio", "equal"))
    print(f"\nwrote {save_results('layer_throughput', {'args': vars(args), 'gemm_gflops': peak, 'conv': convs, 'norm': norms})}")


if __name__ == "__main__":
    main()
