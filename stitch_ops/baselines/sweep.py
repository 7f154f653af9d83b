"""Ray Tune + Optuna sweep of the fine-tuning learning rate.

Each trial fine-tunes the other party's basis model on the fine-tuning party's data with a
base learning rate drawn log-uniformly from ``[sweep.lr_min, sweep.lr_max]`` (Optuna's TPE
sampler, seeded), predicts that party's **validation** cases of the fold and reports their
mean Dice. The test sets are never looked at. The best rate is written to
``sweeps/{pair}/finetune/{other}_to_{party}/fold_k/best.json`` (a DVC metric); set
``finetune.base_lr`` to it to use it. Trial models and Ray's records live in a temporary
folder and are deleted afterwards.

MLflow: the driver (the only writer) logs a parent run tagged ``kind=sweep`` and one
nested run per trial (param ``base_lr``, metrics ``val_dice``/``val_hd95``), after
the trials ran.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitch_ops import approaches
from stitch_ops.baselines.config import SweepParams
from stitch_ops.config import Params

logger = logging.getLogger(__name__)

METRIC = "val_dice"


def sweep_dir(root: Path, pair: str, trained_on: str, fold: int) -> Path:
    return root / "sweeps" / pair / "finetune" / trained_on / f"fold_{fold}"


@dataclass(frozen=True)
class TrialResult:
    """One trial: its learning rate and validation scores."""

    trial_id: str
    base_lr: float
    val_dice: float
    val_hd95: float


def validation_scores(paths: Any, party: str, fold: int, export: Path, params: Params, out: Path,
                      progress: bool = False) -> tuple[float, float]:
    """Mean Dice and HD95 of an exported model on ``party``'s validation cases of ``fold``."""
    from stitch_ops.evaluation.evaluate import evaluate_case
    from stitch_ops.nnunet.__main__ import validation_cases
    from stitch_ops.nnunet.model import load_model
    from stitch_ops.nnunet.predict import predict_folder

    raw = paths.raw_dataset(party)
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    cases = validation_cases(paths, party, fold)
    predict_folder(load_model(export), raw / "imagesTr", out, cases=cases, save_probabilities=False,
                   device=params.nnunet.device, mirroring=params.nnunet.mirroring, progress=progress)
    scores = [evaluate_case(out / f"{c}{ending}", raw / "labelsTr" / f"{c}{ending}") for c in cases]
    dice, hd95 = (float(np.nanmean([s[i] for s in scores])) for i in (0, 1))
    return dice, hd95


def _trial(config: dict[str, Any]) -> None:
    """A Ray Tune trial (runs in a Ray worker; every path is absolute)."""
    from ray import tune

    from stitch_ops.baselines.stages import train_finetuned
    from stitch_ops.config import load_params
    from stitch_ops.paths import PairPaths

    params = load_params(Path(config["params_file"]))
    sweep = SweepParams.from_params(params)
    paths = PairPaths(config["pair"], Path(config["root"]))
    work = Path(config["work"]) / "trials" / f"lr_{config['base_lr']:.3e}"
    export = train_finetuned(paths, config["party"], config["fold"], params, base_lr=config["base_lr"],
                             epochs=sweep.epochs, iterations_per_epoch=sweep.iterations_per_epoch,
                             results_root=work / "model", progress=False)
    dice, hd95 = validation_scores(paths, config["party"], config["fold"], export, params, work / "val")
    tune.report({METRIC: dice, "val_hd95": hd95})


def run_sweep(pair: str, party: str, fold: int, params: Params, *, params_file: Path = Path("params.yaml"),
              root: Path = Path("."), progress: bool = True) -> dict[str, Any]:
    """Sweep the fine-tuning learning rate of ``other→party`` on ``party``'s validation data.

    Returns:
        The best trial as written to ``best.json``.
    """
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from stitch_ops.baselines.federated import RayOptions, init_ray
    from stitch_ops.paths import PairPaths

    sweep = SweepParams.from_params(params)
    model = approaches.finetuned(party)
    root = root.resolve()
    out = sweep_dir(root, pair, model.trained_on, fold)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="sweep_", dir=out.parent))
    PairPaths(pair, root).raw_dataset(party)  # fail early on a wrong pair
    init_ray(RayOptions(sweep.address, 1), sweep.max_concurrent)
    try:
        searcher = OptunaSearch(metric=METRIC, mode="max", seed=params.seed)
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": 1}),
            param_space={"base_lr": tune.loguniform(sweep.lr_min, sweep.lr_max), "pair": pair, "party": party,
                         "fold": fold, "root": str(root), "work": str(work),
                         "params_file": str(params_file.resolve())},
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=sweep.trials,
                                        max_concurrent_trials=sweep.max_concurrent),
            run_config=tune.RunConfig(name="lr", storage_path=str(work / "ray"), verbose=1 if progress else 0),
        )
        grid = tuner.fit()
    finally:
        if not sweep.address:
            ray.shutdown()
    trials = []
    for result in grid:
        if result.error is not None or METRIC not in (result.metrics or {}):
            raise RuntimeError(f"sweep trial failed: {result.error}")
        trials.append(TrialResult(result.metrics["trial_id"], float(result.config["base_lr"]),
                                  float(result.metrics[METRIC]), float(result.metrics["val_hd95"])))
    trials.sort(key=lambda t: t.base_lr)
    shutil.rmtree(work, ignore_errors=True)  # trial models and Ray's records: large, not needed afterwards
    finite = [t for t in trials if math.isfinite(t.val_dice)]
    if not finite:
        raise RuntimeError(f"no sweep trial produced a validation Dice: {trials}")
    best = max(finite, key=lambda t: t.val_dice)
    record = {"pair": pair, "trained_on": model.trained_on, "fold": fold, "best_base_lr": best.base_lr,
              "best_val_dice": best.val_dice, "best_val_hd95": best.val_hd95,
              "trials": [t.__dict__ for t in trials]}
    (out / "best.json").write_text(json.dumps(record, indent=2))
    _log_sweep(record, model, params)
    logger.info("best fine-tuning learning rate for %s: %.3g (validation Dice %.3f) among %s", model.shorthand,
                best.base_lr, best.val_dice, [f"{t.base_lr:.2g}: {t.val_dice:.3f}" for t in trials])
    return record


def _log_sweep(record: dict[str, Any], model: approaches.ModelId, params: Params) -> None:
    """The sweep as an MLflow parent run with one nested run per trial."""
    from stitch_ops import tracking

    tracking.configure(Path("."))
    sweep = SweepParams.from_params(params)
    tags = {"pair": record["pair"], "approach": model.approach.value, "trained_on": model.trained_on,
            "fold": str(record["fold"]), "profile": params.profile, "kind": "sweep", **model.tags()}
    experiment = tracking.experiment_name(record["pair"])
    stage = f"sweep@{record['pair']}-{model.trained_on}-{record['fold']}"
    parent = tracking.log_run(experiment=experiment, tags=tags,
                              params={"lr_min": sweep.lr_min, "lr_max": sweep.lr_max, "trials": sweep.trials,
                                      "epochs": sweep.epochs, "iterations_per_epoch": sweep.iterations_per_epoch,
                                      "search": "optuna TPE (ray tune)", "selected_on": "validation"},
                              metrics={}, run_name=f"sweep:{model.trained_on}:fold{record['fold']}", dvc_stage=stage)
    for index, trial in enumerate(record["trials"]):
        tracking.log_run(experiment=experiment, tags={**tags, "kind": "sweep_trial", "trial": str(index)},
                         params={"base_lr": trial["base_lr"]},
                         metrics={METRIC: trial["val_dice"], "val_hd95": trial["val_hd95"]},
                         run_name=f"lr={trial['base_lr']:.2e}", dvc_stage=stage, parent_run_id=parent)
    tracking.log_metrics(parent, {"best_base_lr": record["best_base_lr"], "best_val_dice": record["best_val_dice"],
                                  "best_val_hd95": record["best_val_hd95"]})
