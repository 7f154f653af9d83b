"""Ray Tune + Optuna search over the stitch position k and the stitch learning rate.

``stitching.search: optuna`` (default ``grid``: no search). Each trial samples a learning
rate, log-uniform in ``[stitching.search_lr_min, stitching.search_lr_max]``, and a position
k among the matches (Optuna's TPE sampler, seeded by ``seed``); it trains every stitch of the
two parents on c's unlabeled training images with that rate on a short schedule
(``stitching.training`` with ``stitching.search_training`` on top), and scores the
stitch-ensemble at k on c's **validation** cases of the fold (mean Dice, the search's
objective; HD95 beside it). No test case is ever read. ``stitching.trials`` trials run,
``stitching.search_concurrent`` at a time, one CPU each; the first quarter (at least two)
are drawn at random before TPE models the results. They run on a Ray started here, or on an
existing cluster at ``stitching.search_address`` (:mod:`stitch_ops.ray_session`).

How the best (k, lr) feeds the stitch stages (:mod:`stitch_ops.stitching.stages`):
``stitch_train`` runs the search first and trains the final stitches at the best rate; its
record is ``models/{pair}/stitch/{slug}/fold_k/network/search.json``. ``stitch_select``
scores the best k on the final stitches beside the evenly spread positions, and selection
strategies 1-3 choose among them as with ``grid``: a trial's stitches had a short schedule,
so its ranking of positions is a proposal, not a verdict on the final stitches.

MLflow: the driver (the only writer) logs, after the trials, a parent run tagged
``kind=stitch_search`` and one nested run per trial (params ``k``, ``lr``; metrics
``val_dice``, ``val_hd95``), like the fine-tuning sweep (:mod:`stitch_ops.baselines.sweep`).
Trial stitches and Ray's records live in a scratch folder, deleted afterwards.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stitch_ops import approaches, tracking
from stitch_ops.config import PARTIES, Params, load_section, parse_params
from stitch_ops.data.splits import read_fold
from stitch_ops.nnunet.model import load_model
from stitch_ops.nnunet.predict import preprocess_cases
from stitch_ops.outputs import read_json, scratch_dir, write_json
from stitch_ops.paths import VALIDATION_SET, PairPaths, dvc_stage
from stitch_ops.ray_session import RayOptions, ray_connection
from stitch_ops.stitching import StitchedNetwork
from stitch_ops.stitching.artifacts import (APPROACH, CHECKPOINT, load_parents, parent_dirs, stage_name, trained_on,
                                            training_images)
from stitch_ops.stitching.scoring import score_positions
from stitch_ops.stitching.settings import StitchingParams
from stitch_ops.stitching.train import patch_size, train_stitch_network

logger = logging.getLogger(__name__)

METRIC = "val_dice"


@dataclass(frozen=True)
class SearchTrial:
    """One trial: the sampled position and learning rate, and the validation cases it was scored on."""

    trial: int
    k: int
    lr: float
    val_dice: float
    val_hd95: float
    cases: tuple[str, ...]


@dataclass(frozen=True)
class TrialJob:
    """What every trial of one search shares (sent to the Ray workers once)."""

    params: Mapping[str, Any]
    pair: str
    c: str
    method: str
    fold: int
    finetuned: bool
    root: str
    work: str


def score_trial(params: Params, job: TrialJob, k: int, lr: float, work: Path) -> tuple[float, float, list[str]]:
    """Train the stitches at ``lr`` (the search's short schedule) and score the stitch-ensemble
    at ``k`` on c's validation cases of the fold: mean Dice, mean HD95 and the cases scored."""
    section = load_section(params, "stitching", StitchingParams)
    paths = PairPaths(job.pair, Path(job.root))
    model_a, model_b = (load_model(folder) for folder in parent_dirs(paths, job.c, job.fold, job.finetuned))
    own = model_a if job.c == PARTIES[0] else model_b  # c's basis model: its plans feed the ensemble
    config = section.search_config(job.method, params.seed, lr)
    network, _ = train_stitch_network(model_a, model_b, training_images(paths, job.c, job.fold, own), patch_size(own),
                                      config, work / "network", progress=False)
    raw = paths.raw_dataset(job.c)
    cases = list(read_fold(raw, job.fold).val)
    preprocessed = preprocess_cases(own, raw / "imagesTr", cases, progress=False)
    scores = score_positions(network, [k], own, preprocessed, raw / "labelsTr", work / "positions",
                             params.nnunet.device, pair=job.pair, test_party=f"{VALIDATION_SET}_{job.c}",
                             approach=APPROACH, trained_on=trained_on(job.c, job.method, job.finetuned),
                             fold=job.fold, cases=cases)[k]
    return float(scores["dice"].mean()), float(scores["hd95"].mean()), sorted(scores["case"].astype(str))


def _trial(config: dict[str, Any], job: TrialJob) -> None:
    """A Ray Tune trial (in a Ray worker; every path is absolute)."""
    from ray import tune

    started = time.time()
    k, lr = int(config["k"]), float(config["lr"])
    work = Path(job.work) / f"trial_{tune.get_context().get_trial_id()}"
    try:
        dice, hd95, cases = score_trial(parse_params(dict(job.params)), job, k, lr, work)
    finally:  # the trial's stitches and predictions: only its scores are kept
        shutil.rmtree(work, ignore_errors=True)
    tune.report({METRIC: dice, "val_hd95": hd95, "cases": ",".join(cases), "started": started})


def settings(params: Params, method: str) -> dict[str, Any]:
    """What decides a search's outcome: a saved record with other settings is searched again."""
    section = load_section(params, "stitching", StitchingParams)
    return {"seed": params.seed, "method": method, "trials": section.trials, "lr_min": section.search_lr_min,
            "lr_max": section.search_lr_max, "training": dict(section.training),
            "search_training": dict(section.search_training)}


def searched(params: Params, pair: str, c: str, method: str, fold: int, record_file: Path, *,
             finetuned: bool = False, progress: bool = True, root: Path = Path(".")) -> dict[str, Any]:
    """The search's record in ``record_file`` if ``stitch_train`` resumes (the stitches'
    checkpoint lies beside it: they train at its rate) and it was made with these settings;
    otherwise a new search (:func:`run_search`) written there. A finished training deletes its
    checkpoint, so a stage that reruns because its parents changed searches again."""
    if record_file.is_file() and record_file.with_name(CHECKPOINT).is_file():
        record = read_json(record_file, hint="delete it to search again")
        if record.get("settings") == settings(params, method):
            logger.info("reusing the stitch search in %s: k=%d, lr=%.3g", record_file, record["best_k"],
                        record["best_lr"])
            return record
    record = run_search(params, pair, c, method, fold, finetuned=finetuned, progress=progress, root=root)
    write_json(record_file, record)
    return record


def run_search(params: Params, pair: str, c: str, method: str, fold: int, *, finetuned: bool = False,
               progress: bool = True, root: Path = Path(".")) -> dict[str, Any]:
    """Search (k, learning rate) for the stitches of ``a←[c]→b`` (or ``a←[a]→b→a`` with
    ``finetuned``) at ``fold`` on c's validation cases, log it to MLflow, and return the record:
    ``best_k``, ``best_relative_position``, ``best_lr``, ``best_val_dice``, ``best_val_hd95``,
    ``matches``, ``settings`` and every trial (in the order they ran).

    Raises:
        RuntimeError: a trial failed, or none produced a validation Dice.
    """
    root = root.resolve()
    paths = PairPaths(pair, root)
    matches = len(StitchedNetwork.from_models(*load_parents(paths, c, fold, finetuned)).matches)
    slug = trained_on(c, method, finetuned)
    with scratch_dir(paths.model_dir(APPROACH, slug, fold) / "search_trials") as work:
        job = TrialJob(dict(params.raw), pair, c, method, fold, finetuned, str(root), str(work))
        trials = _run_trials(params, job, matches, work, progress)
    finite = [t for t in trials if math.isfinite(t.val_dice)]
    if not finite:
        raise RuntimeError(f"no stitch search trial produced a validation Dice: {trials}")
    best = max(finite, key=lambda t: t.val_dice)  # the earliest of equals
    record = {"pair": pair, "c": c, "method": method, "fold": fold, "finetuned": finetuned, "trained_on": slug,
              "matches": matches, "best_k": best.k, "best_relative_position": best.k / matches,
              "best_lr": best.lr, "best_val_dice": best.val_dice, "best_val_hd95": best.val_hd95,
              "settings": settings(params, method), "trials": [asdict(t) for t in trials]}
    _log_search(record, params)
    logger.info("%s %s fold %d: best of %d trials k=%d, lr=%.3g (validation Dice %.3f)", pair, slug, fold,
                len(trials), best.k, best.lr, best.val_dice)
    return record


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: a quarter, at least two."""
    return max(2, trials // 4)


def _run_trials(params: Params, job: TrialJob, matches: int, work: Path, progress: bool) -> list[SearchTrial]:
    """Run the Ray Tune trials (Optuna's TPE sampler, seeded); their results in the order they ran."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    section = load_section(params, "stitching", StitchingParams)
    with ray_connection(RayOptions(section.search_address), section.search_concurrent):  # a joined cluster keeps running
        sampler = optuna.samplers.TPESampler(seed=params.seed, n_startup_trials=startup_trials(section.trials),
                                             multivariate=True)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, job=job), {"cpu": 1}),
            param_space={"k": tune.randint(0, matches), "lr": tune.loguniform(section.search_lr_min,
                                                                               section.search_lr_max)},
            tune_config=tune.TuneConfig(search_alg=OptunaSearch(metric=METRIC, mode="max", sampler=sampler),
                                        num_samples=section.trials, max_concurrent_trials=section.search_concurrent),
            run_config=tune.RunConfig(name="stitch_search", storage_path=str(work / "ray"), verbose=1 if progress else 0),
        )
        grid = tuner.fit()
    results = []
    for result in grid:
        if result.error is not None or METRIC not in (result.metrics or {}):
            raise RuntimeError(f"stitch search trial failed: {result.error}")
        results.append(result)
    results.sort(key=lambda r: float(r.metrics["started"]))  # Ray's trial ids are random: order by start
    return [SearchTrial(index, int(r.config["k"]), float(r.config["lr"]), float(r.metrics[METRIC]),
                        float(r.metrics["val_hd95"]), tuple(str(r.metrics["cases"]).split(",")))
            for index, r in enumerate(results)]


def _log_search(record: dict[str, Any], params: Params) -> None:
    """The search as an MLflow parent run with one nested run per trial."""
    tracking.configure(Path("."))
    model = approaches.stitch_ensemble(record["c"], record["method"], record["finetuned"])
    tags = {"pair": record["pair"], "approach": APPROACH.value, "trained_on": record["trained_on"],
            "fold": str(record["fold"]), "profile": params.profile, "kind": "stitch_search", **model.tags()}
    experiment = tracking.experiment_name(record["pair"])
    stage = dvc_stage(stage_name("stitch_train", record["finetuned"]), record["pair"], record["c"], record["method"],
                      record["fold"])
    setting = record["settings"]
    parent = tracking.log_run(experiment=experiment, tags=tags,
                              params={"lr_min": setting["lr_min"], "lr_max": setting["lr_max"],
                                      "trials": setting["trials"], "matches": record["matches"],
                                      **{f"search_training.{k}": v for k, v in setting["search_training"].items()},
                                      "search": "optuna TPE (ray tune)", "selected_on": "validation"},
                              metrics={}, run_name=f"stitch search:{record['trained_on']}:fold{record['fold']}",
                              dvc_stage=stage)
    for trial in record["trials"]:
        tracking.log_run(experiment=experiment, tags={**tags, "kind": "stitch_search_trial", "trial": str(trial["trial"])},
                         params={"k": trial["k"], "lr": trial["lr"], "relative_position": trial["k"] / record["matches"]},
                         metrics={METRIC: trial["val_dice"], "val_hd95": trial["val_hd95"]},
                         run_name=f"k={trial['k']} lr={trial['lr']:.2e}", dvc_stage=stage, parent_run_id=parent)
    tracking.log_metrics(parent, {"best_k": float(record["best_k"]), "best_lr": record["best_lr"],
                                  "best_val_dice": record["best_val_dice"], "best_val_hd95": record["best_val_hd95"]})
