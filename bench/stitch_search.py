"""How many Optuna trials find a stitch position within 0.01 Dice of the exhaustive best?

On each embedded pair (synthetic, smoke-sized by default): generate and split the data, plan
and preprocess it in this process, train both basis models (fold 0, a short schedule), then

- *exhaustive*: train the stitches of ``a←[a]→b`` once at ``stitching.training.lr`` on the
  search's short schedule and score **every** position k on a's validation cases, as the grid
  does (one shared-prefix pass, :func:`~stitch_ops.stitching.scoring.score_positions`);
- *Optuna*: :func:`~stitch_ops.stitching.search.run_search` (Ray Tune + Optuna TPE over
  (k, lr), the same short schedule, the same validation cases) with ``--trials`` trials.

Reported per pair (trials counted in the order they ran, 1-based): ``trials_to_within`` = the
first trial whose own validation Dice is within ``--tolerance`` of the exhaustive best (or
above it: a trial's rate may beat the grid's); ``trials_to_k_within`` = the first trial whose
position k is within the tolerance *in the exhaustive table* (the position found, whatever the
rate). Not timed (a shared machine); ``bench/results/stitch_search.json`` keeps every trial.

    python bench/stitch_search.py [--pairs polyp pelvis] [--trials 16] [--workdir /tmp/stitch_search]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("nnUNet_compile", "f")
os.environ.setdefault("nnUNet_def_n_proc", "1")

from pathlib import Path  # noqa: E402

from _common import ROOT, print_table, save_results  # noqa: E402

sys.path.insert(0, str(ROOT))  # tests.baselines.tiny_pair: nnU-Net's fingerprint in this process

SIZES = {"polyp": ({"a": 18, "b": 18}, 64), "pelvis": ({"a": 12, "b": 12}, 48)}  # the smoke profile's


def prepare(pair: str, root: Path, basis_epochs: int, basis_iterations: int, progress: bool) -> None:
    """Data of ``pair`` under ``root`` (pipeline layout) and both parties' basis models of fold 0."""
    from tests.baselines.tiny_pair import fingerprint_in_process

    from stitch_ops.baselines.plans import plan_from_fingerprint, preprocess_with_plans, transfer_plans
    from stitch_ops.config import PARTIES, NnUNetSchedule
    from stitch_ops.data.splits import split_raw_dataset
    from stitch_ops.data.synthetic import generate_pair
    from stitch_ops.nnunet.train import TrainingRun, train_fold
    from stitch_ops.paths import PairPaths, dataset_name

    paths = PairPaths(pair, root)
    if all((paths.model_dir("local", p, 0) / "export").is_dir() for p in PARTIES):
        return
    cases, size = SIZES[pair]
    generate_pair(pair, paths.source, cases, seed=0, image_size=size, progress=progress)
    schedule = NnUNetSchedule(epochs=basis_epochs, iterations_per_epoch=basis_iterations, val_iterations_per_epoch=2,
                              batch_size=4, device="cpu")
    for party in PARTIES:
        raw = paths.raw_dataset(party)
        split_raw_dataset(paths.source / party, raw, seed=0)
        fingerprint = fingerprint_in_process(raw)
        plans = plan_from_fingerprint(fingerprint, raw, root / "scratch", "2d")
        preprocess_with_plans(transfer_plans(plans, raw), raw, paths.preprocessed_root(party), "2d",
                              fingerprint=fingerprint, progress=progress)
        train_fold(TrainingRun(dataset_name(pair, party), paths.preprocessed_root(party),
                               paths.model_dir("local", party, 0), 0, schedule),
                   progress=progress, provenance={"approach": "local", "trained_on": party})


def params_for(pair: str, trials: int, search_epochs: int, search_iterations: int) -> object:
    from stitch_ops.config import parse_params

    cases, size = SIZES[pair]
    return parse_params({
        "profile": "bench", "seed": 0, "pairs": [pair], "folds": [0],
        "data": {pair: {"source": "synthetic", "cases": cases, "image_size": size}},
        "nnunet": {"epochs": 1, "iterations_per_epoch": 1, "val_iterations_per_epoch": 1, "batch_size": 4,
                   "device": "cpu"},
        "stitching": {"c_parties": ["a"], "methods": ["direct_matching"], "selection": "current_fold",
                      "finetuned_c_parties": [], "training": {"batch_size": 4},
                      "search": "optuna", "trials": trials,
                      "search_training": {"epochs": search_epochs, "iterations_per_epoch": search_iterations}}})


def exhaustive(params, pair: str, root: Path) -> dict[int, float]:
    """Every position's validation Dice for stitches trained at ``training.lr`` on the search's schedule."""
    from stitch_ops.config import load_section
    from stitch_ops.data.splits import read_fold
    from stitch_ops.nnunet.model import load_model
    from stitch_ops.nnunet.predict import preprocess_cases
    from stitch_ops.outputs import scratch_dir
    from stitch_ops.paths import VALIDATION_SET, PairPaths
    from stitch_ops.stitching.artifacts import parent_dirs, training_images
    from stitch_ops.stitching.scoring import score_positions
    from stitch_ops.stitching.settings import StitchingParams
    from stitch_ops.stitching.train import patch_size, train_stitch_network

    section = load_section(params, "stitching", StitchingParams)
    paths = PairPaths(pair, root)
    model_a, model_b = (load_model(folder) for folder in parent_dirs(paths, "a", 0))
    config = section.search_config("direct_matching", params.seed, section.training_config("direct_matching", 0).lr)
    raw = paths.raw_dataset("a")
    cases = list(read_fold(raw, 0).val)
    with scratch_dir(root / "exhaustive") as work:
        network, _ = train_stitch_network(model_a, model_b, training_images(paths, "a", 0, model_a),
                                          patch_size(model_a), config, work / "network", progress=False)
        preprocessed = preprocess_cases(model_a, raw / "imagesTr", cases, progress=False)
        scores = score_positions(network, range(len(network.matches)), model_a, preprocessed, raw / "labelsTr",
                                 work / "positions", "cpu", pair=pair, test_party=f"{VALIDATION_SET}_a",
                                 approach="stitch", trained_on="via_a_direct_matching", fold=0, cases=cases)
    return {k: float(table["dice"].mean()) for k, table in scores.items()}


def first_within(values: list[float], target: float) -> int | None:
    """1-based index of the first value >= ``target``; None if none is."""
    return next((index + 1 for index, value in enumerate(values) if value >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["polyp"], choices=sorted(SIZES))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--basis-epochs", type=int, default=4)
    parser.add_argument("--basis-iterations", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=1)
    parser.add_argument("--search-iterations", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/stitch_search_bench"))
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    from stitch_ops.stitching.search import run_search

    rows, results = [], {}
    for pair in args.pairs:
        root = (args.workdir / pair).resolve()
        prepare(pair, root, args.basis_epochs, args.basis_iterations, args.progress)
        params = params_for(pair, args.trials, args.search_epochs, args.search_iterations)
        table = exhaustive(params, pair, root)
        best_k = max(table, key=table.get)
        target = table[best_k] - args.tolerance
        cwd = Path.cwd()
        os.chdir(root)  # MLflow's store (mlflow.db) goes to the bench's folder, not the checkout
        try:
            record = run_search(params, pair, "a", "direct_matching", 0, progress=args.progress, root=root)
        finally:
            os.chdir(cwd)
        trials = record["trials"]
        own = first_within([t["val_dice"] for t in trials], target)
        by_k = first_within([table[t["k"]] for t in trials], target)
        results[pair] = {"matches": record["matches"], "exhaustive": table, "exhaustive_best_k": best_k,
                         "exhaustive_best_dice": table[best_k], "tolerance": args.tolerance,
                         "trials_to_within": own, "trials_to_k_within": by_k, "search": record}
        rows.append((pair, record["matches"], best_k, f"{table[best_k]:.4f}", len(trials), record["best_k"],
                     f"{record['best_lr']:.2e}", f"{record['best_val_dice']:.4f}",
                     own if own is not None else f">{len(trials)}", by_k if by_k is not None else f">{len(trials)}"))
    print_table(f"Optuna (k, lr) search vs exhaustive positions (within {args.tolerance} Dice; trials 1-based)", rows,
                ("pair", "matches", "best k", "best Dice", "trials", "optuna k", "optuna lr", "optuna Dice",
                 "trials to within", "trials to k within"))
    print(f"\nwritten {save_results('stitch_search', results)}")


if __name__ == "__main__":
    main()
