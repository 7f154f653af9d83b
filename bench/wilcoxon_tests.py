"""The report's statistics on the hand-made report tree (``tests/evaluation/report_tree.py``):
every Wilcoxon test of both perspectives, with :func:`stitch_ops.evaluation.stats._wilcoxon`
(scipy's sign-flip permutation test, vectorized) against :func:`scipy.stats.wilcoxon` with
``method="auto"`` (one statistic per sign flip), run in turn, after checking that both give
the same statistic and p-value for every test.

    python bench/wilcoxon_tests.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from scipy.stats import wilcoxon

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import interleaved_medians, print_table, save_results  # noqa: E402
from stitch_ops.evaluation import stats  # noqa: E402
from stitch_ops.evaluation.report import _stats  # noqa: E402
from stitch_ops.evaluation.results import load_pair  # noqa: E402
from tests.evaluation.report_tree import PAIR, write_tree  # noqa: E402


def report_differences() -> list[np.ndarray]:
    """The paired differences of every test the report of the hand-made tree runs."""
    seen: list[np.ndarray] = []

    def recording(differences: np.ndarray) -> tuple[float, float]:
        seen.append(differences.copy())
        return 0.0, 1.0

    with tempfile.TemporaryDirectory() as folder, mock.patch.object(stats, "_wilcoxon", recording):
        _stats(load_pair(PAIR, write_tree(Path(folder))))
    return seen


def scipy_auto(differences: np.ndarray) -> tuple[float, float]:
    if not np.any(differences != 0):
        return 0.0, 1.0
    result = wilcoxon(differences, zero_method="wilcox", alternative="two-sided", method="auto")
    return float(result.statistic), float(result.pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tests = report_differences()
    for differences in tests:
        assert stats._wilcoxon(differences) == scipy_auto(differences), differences
    permutation = sum(stats._sign_flips_used(d) for d in tests if np.any(d != 0))
    medians = interleaved_medians({"scipy method=auto": lambda: [scipy_auto(d) for d in tests],
                                   "vectorized sign flips": lambda: [stats._wilcoxon(d) for d in tests]},
                                  args.repeats, warmup=1)
    before, after = medians["scipy method=auto"], medians["vectorized sign flips"]
    print_table(f"the report's {len(tests)} Wilcoxon tests ({permutation} by sign flips), CPU s, median of "
                f"{args.repeats}; same statistic and p for every test",
                [("scipy method=auto", f"{before:.2f}"), ("vectorized sign flips", f"{after:.3f}"),
                 ("ratio", f"{after / before:.4f}")], ("", "CPU s"))
    print(f"results: {save_results('wilcoxon_tests', {'tests': len(tests), 'sign_flip_tests': permutation, **medians})}")


if __name__ == "__main__":
    main()
