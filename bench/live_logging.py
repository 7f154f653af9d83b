"""Wall-time overhead of live MLflow logging during nnU-Net training.

A tiny real nnU-Net (synthetic polyp frames, 64 x 64) is trained in turn without and with
a live MLflow run (sqlite store, one ``log_batch`` per epoch, the run opened and closed as
the pipeline does). Reported: the median wall time of each, the time spent inside the
logging calls themselves (opening the run, every epoch's ``log_epoch``, closing it), and
that time as a share of the training. On a shared machine the side-by-side difference is
noisy; the time inside the calls is the direct measure.

    python bench/live_logging.py [--epochs 6] [--iterations 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare(root: Path) -> tuple[str, Path]:
    from stitch_ops.baselines.plans import plan_from_fingerprint, preprocess_with_plans, transfer_plans
    from stitch_ops.data.splits import split_raw_dataset
    from stitch_ops.data.synthetic import generate_pair
    from stitch_ops.paths import PairPaths, dataset_name
    from tests.baselines.tiny_pair import fingerprint_in_process

    paths = PairPaths("polyp", root)
    generate_pair("polyp", paths.source, {"a": 12, "b": 12}, seed=0, image_size=64, progress=False)
    raw = paths.raw_dataset("a")
    split_raw_dataset(paths.source / "a", raw, seed=0)
    fingerprint = fingerprint_in_process(raw)
    plans = plan_from_fingerprint(fingerprint, raw, root / "scratch", "2d")
    preprocess_with_plans(transfer_plans(plans, raw), raw, paths.preprocessed_root("a"), "2d",
                          fingerprint=fingerprint, progress=False)
    return dataset_name("polyp", "a"), paths.preprocessed_root("a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from stitch_ops.config import NnUNetSchedule
    from stitch_ops.nnunet.train import TrainingRun, train_fold
    from stitch_ops.tracking.live import finish_model_run, model_identity, training_run

    schedule = NnUNetSchedule(epochs=args.epochs, iterations_per_epoch=args.iterations, val_iterations_per_epoch=2,
                              batch_size=2, device="cpu")
    results: dict[str, list[float]] = {"without": [], "with": [], "inside_logging": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        name, preprocessed = prepare(root)
        import os

        os.chdir(root)
        for repeat in range(args.repeats):
            for mode in ("without", "with"):
                run = TrainingRun(name, preprocessed, root / f"model_{mode}_{repeat}", 0, schedule)
                start = time.perf_counter()
                if mode == "without":
                    train_fold(run, progress=False)
                else:
                    spent = 0.0
                    opened = time.perf_counter()
                    with training_run(pair="polyp", approach="local", trained_on="a", fold=repeat,
                                      dvc_stage="bench", params={"epochs": args.epochs}, root=root) as live:
                        spent += time.perf_counter() - opened

                        def on_epoch(epoch, values, live=live):
                            nonlocal spent
                            begin = time.perf_counter()
                            live.log_epoch(epoch, values)
                            spent += time.perf_counter() - begin

                        train_fold(run, progress=False, on_epoch=on_epoch)
                    begin = time.perf_counter()
                    finish_model_run(experiment="stitch_ops/polyp", identity=model_identity("polyp", "local", "a", repeat),
                                     tags={}, params={}, metrics={"done": 1.0})
                    spent += time.perf_counter() - begin
                    results["inside_logging"].append(spent)
                results[mode].append(time.perf_counter() - start)
    summary = {key: statistics.median(values) for key, values in results.items()}
    summary["share_inside_logging"] = summary["inside_logging"] / summary["with"]
    summary["epochs"] = args.epochs
    print(json.dumps({"runs": results, "median": summary}, indent=2))
    out = Path(__file__).resolve().parent / "results" / "live_logging.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": results, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
