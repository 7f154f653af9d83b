"""One typed function per DVC stage of the baselines; ``__main__`` is a thin shell over these.

Each training stage trains (resumably), exports the portable model to
``models/{pair}/{approach}/{trained_on}/fold_k/export``, predicts both parties' test sets
into ``predictions/{pair}/{approach}/{trained_on}/fold_k/test_{a,b}`` and scores them like
any model (:func:`stitch_ops.evaluation.stages.evaluate`), all in the same process: starting
Python with torch, nnU-Net and MONAI costs more than the scoring on a small machine. A
finished training is not redone when the stage reruns (say, after a failed scoring). The
skeleton (live MLflow run, train, budget, predict, curve, score) is written once,
:func:`trained_model_stage`; a training stage gives it its :class:`TrainingStage` record and a
``train`` function.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stitch_ops import approaches
from stitch_ops.approaches import ModelId, other
from stitch_ops.baselines.config import FederatedParams, FinetuneParams, MergedParams
from stitch_ops.baselines.ensemble import ensemble_folders
from stitch_ops.baselines.federated import (GlobalCheckpoint, PartyData, RayOptions, drop_training_state,
                                            load_canonical_state, round_curve, train_federated)
from stitch_ops.baselines.finetune import check_same_architecture, finetune_schedule
from stitch_ops.baselines.lr import LrSource, ResolvedLr, resolve_base_lr
from stitch_ops.baselines.merged import check_no_test_cases, merged_dataset_name
from stitch_ops.baselines.plans import JOINT
from stitch_ops.budget import BUDGET_JSON, Budget, TrainingClock, write_budget
from stitch_ops.config import PARTIES, NnUNetSchedule, Params
from stitch_ops.evaluation.stages import evaluate
from stitch_ops.nnunet import stages as nnunet_stages
from stitch_ops.nnunet.env import NnUNetRoots, configure
from stitch_ops.nnunet.model import build_network, export_model
from stitch_ops.nnunet.plan import PLANS
from stitch_ops.nnunet.train import TrainingRun, train_fold
from stitch_ops.outputs import read_json, write_json
from stitch_ops.paths import PairPaths, dataset_name, dvc_stage, test_set
from stitch_ops.tracking.datasets import DataInput
from stitch_ops.tracking.live import TRAINING_LOG, training_run, write_curve

if TYPE_CHECKING:
    from stitch_ops.baselines.federated import FaultInjection
    from stitch_ops.nnunet.train import EpochCallback
    from stitch_ops.tracking.live import LiveRun

logger = logging.getLogger(__name__)

TEST_SETS = tuple(test_set(p) for p in PARTIES)


def predict_test_sets(paths: PairPaths, model: ModelId, fold: int, params: Params, *, progress: bool = True) -> Path:
    """Predict both parties' test sets with an exported model (softmax kept for ensembles)."""
    return nnunet_stages.predict(paths.pair, model.approach, model.trained_on, fold, params, sets=TEST_SETS,
                                 root=paths.root, progress=progress)


def train_finetuned(paths: PairPaths, party: str, fold: int, params: Params, *, base_lr: float, epochs: int,
                    iterations_per_epoch: int, results_root: Path, progress: bool = True,
                    on_epoch: EpochCallback | None = None, keep_checkpoint: bool = True) -> Path:
    """Fine-tune the other party's basis model of ``fold`` on ``party``'s data (preprocessed
    with the transferred plans) into ``results_root``; returns the export folder.
    ``on_epoch`` gets the training curve after every epoch (a live MLflow run);
    ``keep_checkpoint``: see :func:`~stitch_ops.nnunet.train.train_fold`."""
    settings = FinetuneParams.from_params(params)
    model = approaches.finetuned(party)
    source = other(party)
    pretrained = paths.model_dir(approaches.Approach.LOCAL, source, fold) / "export"
    schedule = finetune_schedule(params.nnunet, base_lr=base_lr, warmup_epochs=min(settings.warmup_epochs, epochs - 1),
                                 epochs=epochs, iterations_per_epoch=iterations_per_epoch,
                                 source_epochs=_read(pretrained / "model.json").get("epochs"))
    preprocessed = paths.preprocessed_root(party, plans_from=source)
    # the plans fine-tuning builds its network from: the transferred plans with the profile's width
    check_same_architecture(_read(pretrained / "plans.json"),
                            schedule.training_plans(_read(preprocessed / dataset_name(paths.pair, party) / f"{PLANS}.json")),
                            schedule.configuration, pretrained)
    configure(NnUNetRoots(preprocessed=preprocessed), training=True)
    from stitch_ops.baselines.trainers import FinetuneTrainer

    run = TrainingRun(dataset_name(paths.pair, party), preprocessed, results_root, fold, schedule,
                      pretrained=pretrained, trainer=FinetuneTrainer.__name__, seed=params.seed)
    warmup = schedule.warmup()
    logger.info("fine-tuning %s's model on %s's data, fold %d: %d epochs x %d iterations, lr %.2g -> %.2g "
                "(warm-up %d epochs) then polynomial decay", source, party, fold, schedule.epochs,
                schedule.iterations_per_epoch, warmup.start_lr, warmup.base_lr, warmup.warmup_epochs)
    return train_fold(run, trainer_class=FinetuneTrainer, progress=progress, on_epoch=on_epoch,
                      keep_checkpoint=keep_checkpoint,
                      provenance={"pair": paths.pair, "approach": model.approach, "trained_on": model.trained_on,
                                  "shorthand": model.shorthand, "base_lr": schedule.initial_lr,
                                  "warmup_start_lr": warmup.start_lr, "warmup_epochs": warmup.warmup_epochs})


def finetune(pair: str, party: str, fold: int, params: Params, *, base_lr: float | None = None,
             root: Path = Path("."), progress: bool = True) -> Path:
    """``other→party``: the other party's basis model fine-tuned on ``party``'s data with
    the warm-up schedule (``finetune`` params), then predicted on both test sets and scored. The base
    learning rate is ``base_lr`` if given, else ``finetune.base_lr`` (a number, or ``sweep``:
    the sweep's ``best.json``, :func:`~stitch_ops.baselines.lr.resolve_base_lr`); the rate
    and its source go to ``budget.json`` and the MLflow run."""
    paths = PairPaths(pair, root)
    settings = FinetuneParams.from_params(params)
    model = approaches.finetuned(party)
    lr, source = ResolvedLr(base_lr, LrSource.FIXED) if base_lr else resolve_base_lr(paths, party, fold, params)
    logger.info("fine-tuning %s fold %d with base learning rate %.3g (%s)", model.shorthand, fold, lr, source)

    def train(live: LiveRun) -> Path:
        exported = train_finetuned(paths, party, fold, params, base_lr=lr,
                                   epochs=settings.epochs, iterations_per_epoch=settings.iterations_per_epoch,
                                   results_root=paths.model_dir(model.approach, model.trained_on, fold),
                                   progress=progress, on_epoch=live.log_epoch, keep_checkpoint=False)
        write_training_budget(paths, model, fold, params, settings.epochs, settings.iterations_per_epoch,
                              base_lr=lr, base_lr_source=source.value, warmup_epochs=settings.warmup_epochs)
        predict_test_sets(paths, model, fold, params, progress=progress)
        return exported

    return trained_model_stage(
        TrainingStage(pair, model, fold, params, dvc_stage("finetune", pair, model.trained_on, fold), root, progress,
                      {"finetune.base_lr": lr, "finetune.base_lr_source": source.value,
                       "finetune.epochs": settings.epochs,
                       "finetune.iterations_per_epoch": settings.iterations_per_epoch,
                       "finetune.warmup_epochs": settings.warmup_epochs},
                      {f"{pair}/{party}/train": paths.preprocessed_root(party, plans_from=other(party))}), train)


def ensemble(pair: str, fold: int, params: Params, *, finetuned_for: str | None = None, root: Path = Path("."),
             progress: bool = True) -> Path:
    """``a&b`` (``finetuned_for=None``): the two basis models' test predictions averaged;
    ``a&b→p``: party p's basis model with the other's model fine-tuned on p's data. Scored
    like any model in the same process."""
    paths = PairPaths(pair, root)
    local = approaches.Approach.LOCAL
    if finetuned_for is None:
        model = approaches.ensemble()
        members = [paths.predictions(local, p, fold) for p in PARTIES]
    else:
        model = approaches.ensemble_finetuned(finetuned_for)
        tuned = approaches.finetuned(finetuned_for)
        members = [paths.predictions(local, finetuned_for, fold),
                   paths.predictions(tuned.approach, tuned.trained_on, fold)]
    dataset_json = _read(paths.raw_dataset(PARTIES[0]) / "dataset.json")
    out = paths.predictions(model.approach, model.trained_on, fold)
    for name in TEST_SETS:
        ensemble_folders([m / name for m in members], out / name, dataset_json, progress=progress)
    stage = dvc_stage("ensemble", pair, fold) if finetuned_for is None else \
        dvc_stage("ensemble_finetuned", pair, finetuned_for, fold)
    _score(pair, model, fold, params, stage, root, progress)
    return out


def _score(pair: str, model: ModelId, fold: int, params: Params, stage: str, root: Path, progress: bool) -> None:
    """Score the model's predictions and finish its MLflow run, as ``python -m stitch_ops.evaluation`` does."""
    evaluate(pair, model.approach.value, model.trained_on, fold, params, stage=stage, root=root, progress=progress)


def merged(pair: str, fold: int, params: Params, *, root: Path = Path("."), progress: bool = True) -> Path:
    """``a+b``: one nnU-Net on the pooled dataset (joint plans), then both test sets, scored."""
    paths = PairPaths(pair, root)
    settings = MergedParams.from_params(params)
    model = approaches.merged()
    preprocessed = paths.preprocessed_root("merged")
    name = merged_dataset_name(pair)
    check_no_test_cases(preprocessed / name, {p: _read(paths.raw_dataset(p) / "test_cases.json") for p in PARTIES},
                        params.nnunet.configuration)
    schedule = NnUNetSchedule(**{**asdict(params.nnunet), "epochs": settings.epochs,
                                 "iterations_per_epoch": settings.iterations_per_epoch})
    run = TrainingRun(name, preprocessed, paths.model_dir(model.approach, model.trained_on, fold), fold, schedule,
                      seed=params.seed)
    def train(live: LiveRun) -> Path:
        exported = train_fold(run, progress=progress, on_epoch=live.log_epoch, keep_checkpoint=False,
                              provenance={"pair": pair, "approach": model.approach, "trained_on": model.trained_on,
                                          "shorthand": model.shorthand})
        write_training_budget(paths, model, fold, params, settings.epochs, settings.iterations_per_epoch)
        predict_test_sets(paths, model, fold, params, progress=progress)
        return exported

    return trained_model_stage(
        TrainingStage(pair, model, fold, params, dvc_stage("merged", pair, fold), root, progress,
                      {"merged.epochs": settings.epochs, "merged.iterations_per_epoch": settings.iterations_per_epoch},
                      {f"{pair}/a+b/train": preprocessed}), train)


def federated(pair: str, fold: int, params: Params, *, root: Path = Path("."), progress: bool = True,
              fault: FaultInjection | None = None) -> Path:
    """``a‖b``: FedAvg with one Ray actor per party on its own data (joint plans), then
    both test sets, scored. Resumes after the last completed round; a changed configuration
    starts over. The live MLflow run gets one step per round (each party's curve and the
    global one); the same curve goes to ``training_log.csv`` next to the model."""
    settings = FederatedParams.from_params(params)
    model = approaches.federated()
    curve = PairPaths(pair, root).model_dir(model.approach, model.trained_on, fold) / TRAINING_LOG
    rows: dict[int, dict[str, float]] = {}

    def train(live: LiveRun) -> Path:
        def on_round(index: int, values: Mapping[str, float]) -> None:
            live.log_epoch(index, values)
            rows[index] = dict(values)
            write_curve(curve, [{"epoch": k, **v} for k, v in sorted(rows.items())])

        return _federated(pair, fold, params, root=root, progress=progress, fault=fault, on_round=on_round)

    inputs = {f"{pair}/{p}/train": PairPaths(pair, root).preprocessed_root(p, plans_from=JOINT) for p in PARTIES}
    return trained_model_stage(
        TrainingStage(pair, model, fold, params, dvc_stage("federated", pair, fold), root, progress,
                      {"federated.rounds": settings.rounds,
                       "federated.iterations_per_epoch": settings.iterations_per_epoch}, inputs), train)


def _federated(pair: str, fold: int, params: Params, *, root: Path = Path("."), progress: bool = True,
               fault: FaultInjection | None = None,
               on_round: Callable[[int, Mapping[str, float]], None] | None = None) -> Path:
    """:func:`federated` without its MLflow run; ``on_round`` gets each round's curve."""
    paths = PairPaths(pair, root)
    settings = FederatedParams.from_params(params)
    model = approaches.federated()
    results = paths.model_dir(model.approach, model.trained_on, fold)
    schedule = NnUNetSchedule(**{**asdict(params.nnunet), "epochs": settings.rounds,
                                 "iterations_per_epoch": settings.iterations_per_epoch})
    parties = [PartyData(p, dataset_name(pair, p), paths.preprocessed_root(p, plans_from=JOINT).resolve(),
                         (results / "parties" / p).resolve()) for p in PARTIES]
    fingerprint = hashlib.sha256(json.dumps([str(schedule), [str(p) for p in parties], fold, params.seed])
                                 .encode()).hexdigest()[:16]
    marker = results / "run_config.json"
    if marker.is_file() and _read(marker).get("fingerprint") == fingerprint:
        if (results / "export" / "weights.pth").is_file():
            logger.info("%s is already trained; nothing to do", results / "export")

            drop_training_state(results)  # a run killed between its export and this clean-up

            for record in GlobalCheckpoint(results / "global").history() if on_round is not None else []:
                on_round(int(record["round"]), round_curve(record))
            write_training_budget(paths, model, fold, params, settings.rounds, settings.iterations_per_epoch,
                                  parties=len(parties), rounds=settings.rounds)
            predict_test_sets(paths, model, fold, params, progress=progress)
            return results / "export"
    else:
        shutil.rmtree(results, ignore_errors=True)
        results.mkdir(parents=True)
        write_json(marker, {"fingerprint": fingerprint, "schedule": str(schedule)})
    options = RayOptions(settings.address, settings.cpus_per_party, settings.pin_parties)
    logger.info("federated training of %s fold %d: %d rounds x %d iterations per party, Ray at %s", pair, fold,
                settings.rounds, settings.iterations_per_epoch, settings.address or "this machine")
    with TrainingClock(results):
        state, mirroring, history = train_federated(parties, fold, schedule, results / "global",
                                                    ray_options=options, fault=fault, seed=params.seed,
                                                    progress=progress, on_round=on_round)

    folder = parties[0].preprocessed_root / parties[0].dataset_name
    plans, dataset_json = schedule.training_plans(_read(folder / f"{PLANS}.json")), _read(folder / "dataset.json")
    network = build_network(plans, dataset_json, schedule.configuration)
    load_canonical_state(network, state)
    last = history[-1]["parties"] if history else []
    export_model(network, plans, dataset_json, configuration=schedule.configuration, target=results / "export",
                 mirroring_axes=mirroring,
                 provenance={"pair": pair, "approach": model.approach, "trained_on": model.trained_on,
                             "shorthand": model.shorthand, "fold": fold, "epochs": settings.rounds,
                             "rounds": settings.rounds, "trainer": "FedAvg(ScheduledTrainer)",
                             "pseudo_dice": {m["party"]: m["pseudo_dice"] for m in last}})
    drop_training_state(results)
    write_training_budget(paths, model, fold, params, settings.rounds, settings.iterations_per_epoch,
                          parties=len(parties), rounds=settings.rounds)
    predict_test_sets(paths, model, fold, params, progress=progress)
    return results / "export"


def _publish_curve(paths: PairPaths, model: ModelId, fold: int) -> None:
    from stitch_ops.tracking.curves import TRAINING_LOG, publish_curve

    publish_curve(paths.model_dir(model.approach, model.trained_on, fold) / TRAINING_LOG,
                  paths.training_curve(model.approach, model.trained_on, fold))


@dataclass(frozen=True)
class TrainingStage:
    """One run of a stage that trains a model: what its live MLflow run records.

    Attributes:
        stage: the DVC stage (``finetune@polyp-b_to_a-0``).
        stage_params: the stage's own settings, logged beside ``nnunet.*``.
        inputs: the training data's dataset names (``polyp/a/train``) and folders.
    """

    pair: str
    model: ModelId
    fold: int
    params: Params
    stage: str
    root: Path
    progress: bool
    stage_params: Mapping[str, Any]
    inputs: Mapping[str, Path]


def trained_model_stage(run: TrainingStage, train: Callable[[LiveRun], Path]) -> Path:
    """The skeleton every training stage shares: ``train`` (which trains resumably, writes the
    budget and predicts both test sets; it gets the live MLflow run for its curve) inside the
    model's live run, then the curve published for ``dvc plots`` and the predictions scored
    like any model's. Returns what ``train`` returned (the export folder)."""
    model, params = run.model, run.params
    with training_run(pair=run.pair, approach=model.approach, trained_on=model.trained_on,
                      fold=run.fold, dvc_stage=run.stage, profile=params.profile, root=run.root, tags=model.tags(),
                      inputs=[DataInput(name, path, "training") for name, path in run.inputs.items()],
                      params={**{f"nnunet.{k}": v for k, v in vars(params.nnunet).items()},
                              **run.stage_params}) as live:
        exported = train(live)
    _publish_curve(PairPaths(run.pair, run.root), model, run.fold)
    _score(run.pair, model, run.fold, params, run.stage, run.root, run.progress)
    return exported


def write_training_budget(paths: PairPaths, model: ModelId, fold: int, params: Params, epochs: int,
                          iterations_per_epoch: int, **extra: object) -> Path:
    """``budget.json`` of a trained model: its schedule, the batch size it trained with (from
    the exported plans) and the wall time its results folder's clock summed over attempts."""
    results = paths.model_dir(model.approach, model.trained_on, fold)
    plans = _read(results / "export" / "plans.json")
    batch_size = plans["configurations"][params.nnunet.configuration]["batch_size"]
    budget = Budget.of_schedule(epochs, iterations_per_epoch, batch_size, TrainingClock(results).seconds, **extra)
    return write_budget(paths.metrics(model.approach, model.trained_on, fold) / BUDGET_JSON, budget)


def _read(path: Path) -> dict:
    return read_json(path, hint="run the stage that makes it first (`dvc repro`)")
