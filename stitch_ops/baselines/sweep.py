"""Ray Tune + Optuna sweep of the fine-tuning learning rate.

Each trial fine-tunes the other party's basis model on the fine-tuning party's data with a
base learning rate drawn log-uniformly from ``[sweep.lr_min, sweep.lr_max]`` (Optuna's TPE
sampler, seeded), predicts that party's **validation** cases of the fold and reports their
mean Dice. The test sets are never looked at. The best rate is written to
``sweeps/{pair}/finetune/{other}_to_{party}/fold_k/best.json`` (a DVC metric);
``finetune.base_lr: sweep`` makes fine-tuning use it (:mod:`stitch_ops.baselines.lr`).
With ``finetune.lr_rule: smallest_progressing_power_of_ten`` the same trial function runs
on a grid of the powers of ten in the range instead, and the paper's rule picks the
smallest whose validation Dice beats the starting model's. Trial models and Ray's records
live in a temporary folder and are deleted afterwards.

MLflow: the driver (the only writer) logs a parent run tagged ``kind=sweep`` and one
nested run per trial (param ``base_lr``, metrics ``val_dice``/``val_hd95``), after
the trials ran.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitch_ops import approaches, tracking
from stitch_ops.baselines.config import FinetuneParams, SweepParams
from stitch_ops.baselines.lr import (BEST_JSON, BEST_VALIDATION_DICE, not_swept_record, powers_of_ten,
                                     smallest_progressing)
from stitch_ops.baselines.stages import train_finetuned
from stitch_ops.config import Params, load_params
from stitch_ops.data.splits import read_fold
from stitch_ops.evaluation.evaluate import evaluate_case
from stitch_ops.nnunet.model import load_model
from stitch_ops.nnunet.predict import predict_folder
from stitch_ops.outputs import read_json, scratch_dir, write_json
from stitch_ops.paths import PairPaths, dvc_stage
from stitch_ops.ray_session import RayOptions, ray_connection

logger = logging.getLogger(__name__)

METRIC = "val_dice"


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
    raw = paths.raw_dataset(party)
    ending = read_json(raw / "dataset.json", hint="rerun the split stage")["file_ending"]
    cases = list(read_fold(raw, fold).val)
    predict_folder(load_model(export), raw / "imagesTr", out, cases=cases, save_probabilities=False,
                   device=params.nnunet.device, mirroring=params.nnunet.mirroring, progress=progress)
    scores = [evaluate_case(out / f"{c}{ending}", raw / "labelsTr" / f"{c}{ending}") for c in cases]
    dice, hd95 = (float(np.nanmean([s[i] for s in scores])) for i in (0, 1))
    return dice, hd95


def _trial(config: dict[str, Any]) -> None:
    """A Ray Tune trial (runs in a Ray worker; every path is absolute)."""
    from ray import tune

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
              root: Path = Path("."), progress: bool = True, only_configured: bool = False) -> dict[str, Any]:
    """Sweep the fine-tuning learning rate of ``other→party`` on ``party``'s validation data.

    ``only_configured`` (the DVC stage): a route outside ``sweep.pairs``/``sweep.routes``
    is not swept; its ``best.json`` says so (``"swept": false``).

    Returns:
        The record written to ``best.json``.
    """
    sweep = SweepParams.from_params(params)
    rule = FinetuneParams.from_params(params).lr_rule
    model = approaches.finetuned(party)
    root = root.resolve()
    paths = PairPaths(pair, root)
    out = paths.sweep(model.approach, model.trained_on, fold)
    if only_configured and not sweep.covers(pair, model.trained_on):
        record = not_swept_record(pair, model.trained_on, fold)
        write_json(out / BEST_JSON, record)
        logger.info("%s %s is not in sweep.pairs/sweep.routes: not swept (%s)", pair, model.trained_on, out / BEST_JSON)
        return record
    grid = powers_of_ten(sweep.lr_min, sweep.lr_max) if rule else None
    with scratch_dir(out.with_name(f"{out.name}_trials")) as work:  # trial models and Ray's records
        start = None
        if rule:  # the starting model: the other party's basis model, before fine-tuning
            pretrained = paths.model_dir(approaches.Approach.LOCAL, approaches.other(party), fold) / "export"
            start = validation_scores(paths, party, fold, pretrained, params, work / "start")
        trials = _run_trials(sweep, pair, party, fold, params, params_file, root, work, progress, grid=grid)
    finite = [t for t in trials if math.isfinite(t.val_dice)]
    if not finite:
        raise RuntimeError(f"no sweep trial produced a validation Dice: {trials}")
    record: dict[str, Any] = {"pair": pair, "trained_on": model.trained_on, "fold": fold, "swept": True}
    if start is None:
        best = max(finite, key=lambda t: t.val_dice)
        record.update(selected_by=BEST_VALIDATION_DICE, search="optuna TPE")
    else:
        chosen = smallest_progressing([(t.base_lr, t.val_dice - start[0]) for t in trials])
        # no power of ten improved on the starting model: say so and take the best one
        best = (next(t for t in trials if t.base_lr == chosen) if chosen is not None
                else max(finite, key=lambda t: t.val_dice))
        record.update(selected_by=rule, search="grid of powers of ten", start_val_dice=start[0],
                      start_val_hd95=start[1], rule_satisfied=chosen is not None)
        if chosen is None:
            logger.warning("no power of ten in %s improved the validation Dice of %s's starting model (%.3f); "
                           "taking the best one", grid, model.shorthand, start[0])
    record.update(best_base_lr=best.base_lr, best_val_dice=best.val_dice, best_val_hd95=best.val_hd95,
                  trials=[t.__dict__ for t in trials])
    write_json(out / BEST_JSON, record)
    _log_sweep(record, model, params)
    logger.info("best fine-tuning learning rate for %s: %.3g (validation Dice %.3f, %s) among %s", model.shorthand,
                best.base_lr, best.val_dice, record["selected_by"],
                [f"{t.base_lr:.2g}: {t.val_dice:.3f}" for t in trials])
    return record


def _run_trials(sweep: SweepParams, pair: str, party: str, fold: int, params: Params, params_file: Path,
                root: Path, work: Path, progress: bool, grid: tuple[float, ...] | None = None) -> list[TrialResult]:
    """Run the Ray Tune trials (Optuna's TPE sampler, seeded; or one trial per rate of ``grid``);
    their results sorted by learning rate."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    with ray_connection(RayOptions(sweep.address, 1), sweep.max_concurrent):  # a joined cluster keeps running
        searcher = OptunaSearch(metric=METRIC, mode="max", seed=params.seed) if grid is None else None
        space = tune.loguniform(sweep.lr_min, sweep.lr_max) if grid is None else tune.grid_search(list(grid))
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": 1}),
            param_space={"base_lr": space, "pair": pair, "party": party,
                         "fold": fold, "root": str(root), "work": str(work),
                         "params_file": str(params_file.resolve())},
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=sweep.trials if grid is None else 1,
                                        max_concurrent_trials=sweep.max_concurrent),
            run_config=tune.RunConfig(name="lr", storage_path=str(work / "ray"), verbose=1 if progress else 0),
        )
        results = tuner.fit()
    trials = []
    for result in results:
        if result.error is not None or METRIC not in (result.metrics or {}):
            raise RuntimeError(f"sweep trial failed: {result.error}")
        trials.append(TrialResult(result.metrics["trial_id"], float(result.config["base_lr"]),
                                  float(result.metrics[METRIC]), float(result.metrics["val_hd95"])))
    return sorted(trials, key=lambda t: t.base_lr)


def _log_sweep(record: dict[str, Any], model: approaches.ModelId, params: Params) -> None:
    """The sweep as an MLflow parent run with one nested run per trial."""
    tracking.configure(Path("."))
    sweep = SweepParams.from_params(params)
    tags = {"pair": record["pair"], "approach": model.approach.value, "trained_on": model.trained_on,
            "fold": str(record["fold"]), "profile": params.profile, "kind": "sweep", **model.tags()}
    experiment = tracking.experiment_name(record["pair"])
    stage = dvc_stage("sweep", record["pair"], model.trained_on, record["fold"])
    parent = tracking.log_run(experiment=experiment, tags=tags,
                              params={"lr_min": sweep.lr_min, "lr_max": sweep.lr_max,
                                      "trials": len(record["trials"]), "epochs": sweep.epochs,
                                      "iterations_per_epoch": sweep.iterations_per_epoch,
                                      "search": f"{record['search']} (ray tune)", "selected_by": record["selected_by"],
                                      "selected_on": "validation"},
                              metrics={}, run_name=f"sweep:{model.trained_on}:fold{record['fold']}", dvc_stage=stage)
    for index, trial in enumerate(record["trials"]):
        tracking.log_run(experiment=experiment, tags={**tags, "kind": "sweep_trial", "trial": str(index)},
                         params={"base_lr": trial["base_lr"]},
                         metrics={METRIC: trial["val_dice"], "val_hd95": trial["val_hd95"]},
                         run_name=f"lr={trial['base_lr']:.2e}", dvc_stage=stage, parent_run_id=parent)
    tracking.log_metrics(parent, {"best_base_lr": record["best_base_lr"], "best_val_dice": record["best_val_dice"],
                                  "best_val_hd95": record["best_val_hd95"]})
