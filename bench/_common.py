"""Shared helpers of the benchmarks: networks, side-by-side timing, a small table."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "stitching"))  # tiny_nets: nnU-Net plans for networks of any size

from tiny_nets import tiny_parent, tiny_plans  # noqa: E402

__all__ = ["bench_parents", "interleaved_medians", "print_table", "save_results", "tiny_parent", "tiny_plans"]


def bench_parents(base_features: int, **options) -> tuple[tuple, tuple]:
    """The benchmarks' two parents, ``(spec, network)`` each: A with 4 stages, B with 5 (widths
    f, 2f, 4f, 8f and f, 2f, 4f, 6f, 8f), so their matches pair layers of different depths as
    real parties' plans do. ``options`` go to :func:`tiny_parent` (``dims``, ``patch_size``)."""
    f = base_features
    return (tiny_parent(0, features=(f, 2 * f, 4 * f, 8 * f), **options),
            tiny_parent(1, features=(f, 2 * f, 4 * f, 6 * f, 8 * f), **options))


def interleaved_medians(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median CPU time (s) of this process for each candidate, the candidates run in turn.

    CPU time rather than wall time: on a shared machine, time spent waiting for
    a core is not the candidate's cost. Running the candidates in turn makes
    cache and memory-bandwidth contention hit them alike.
    """
    for _ in range(warmup):
        for run in candidates.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_table(title: str, rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def save_results(name: str, results: dict) -> Path:
    """Write ``bench/results/<name>.json`` (ignored by git) beside the printed table."""
    path = ROOT / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path
