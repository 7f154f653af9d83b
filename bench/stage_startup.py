"""CPU time a pipeline stage pays before its work, with and without ``import monai``.

Every stage that trains or assembles a model also scores it (Dice and HD95) in the same
process. Each candidate here is a fresh Python process that imports what such a stage imports
(nnU-Net's predictor, MLflow) and scores one case's HD95:

- ``monai``: HD95 with ``monai.metrics.compute_hausdorff_distance``, as the pipeline did (MONAI's
  ``__init__`` imports every MONAI submodule, torchvision among them);
- ``stitch_ops``: :func:`stitch_ops.evaluation.metrics.hd95`, MONAI's computation without
  importing MONAI (the same float: ``tests/evaluation/test_evaluation_metrics.py``).

The candidates run in turn; each is measured by its process's CPU time (user + system, from
``getrusage`` of the finished child), so other load on a shared machine does not count.

    python bench/stage_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, save_results  # noqa: E402

SETUP = """
import numpy as np
import mlflow
import nnunetv2.inference.predict_from_raw_data
ref = np.zeros((64, 64), bool); ref[10:40, 12:44] = True
pred = np.zeros((64, 64), bool); pred[12:42, 10:40] = True
"""

CANDIDATES = {
    "monai": SETUP + """
import torch
from monai.metrics import compute_hausdorff_distance
as_batch = lambda mask: torch.from_numpy(mask.astype(np.float32))[None, None]
value = float(compute_hausdorff_distance(as_batch(pred), as_batch(ref), include_background=True, percentile=95,
                                         spacing=[1.0, 1.0])[0, 0])
print(value)
""",
    "stitch_ops": SETUP + """
from stitch_ops.evaluation.metrics import hd95
print(hd95(pred, ref, (1.0, 1.0)))
""",
}


def child_cpu_seconds(code: str) -> tuple[float, str]:
    """CPU time (user + system) of a fresh ``python -c code``, and what it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), output.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    times: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    values: dict[str, set[str]] = {name: set() for name in CANDIDATES}
    for _ in range(args.repeats):
        for name, code in CANDIDATES.items():
            seconds, value = child_cpu_seconds(code)
            times[name].append(seconds)
            values[name].add(value)
    if values["monai"] != values["stitch_ops"]:
        raise SystemExit(f"HD95 differs: {values}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["stitch_ops"] / medians["monai"]
    print_table(f"a scoring stage's start-up, CPU s (median of {args.repeats}); HD95 = {values['monai'].pop()} both",
                [(name, f"{m:.2f}") for name, m in medians.items()] + [("stitch_ops / monai", f"{ratio:.3f}")],
                ("candidate", "CPU s"))
    save_results("stage_startup", {"repeats": args.repeats, "cpu_s": times, "median_cpu_s": medians, "ratio": ratio})


if __name__ == "__main__":
    main()
