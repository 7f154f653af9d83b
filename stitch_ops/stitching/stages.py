"""The stitching stages of the pipeline, on the two parties' basis models.

``train``: build the combined network of the two parents of a fold and train its stitches on
the *unlabeled* training images of the stitching party c. The parents are the two basis
models (``a←[c]→b``) or, with ``finetuned``, c's basis model and the other party's model
fine-tuned on c's data (``a←[a]→b→a``; the ``finetune`` approach's ``other_to_c`` model).
``select``: score the stitch-ensemble at every evaluated position k on c's validation cases
(``scores/{pair}/stitch/{slug}/fold_k/positions.csv``; all positions in one sliding window that
runs the parents' layers before each stitch once, :func:`~stitch_ops.stitching.scoring.score_positions`), log one MLflow run per position and
one for the no-stitch reference, pick k by selection strategy 1, export that stitch-ensemble
and predict both parties' test sets with it, like any other model. Strategies 2 and 3 and the
no-stitch reference's own stage are in :mod:`stitch_ops.stitching.strategies`.

Work ``select`` does once for every candidate, not once per candidate (the same for every
position; test cases are never part of it): the validation cases are preprocessed once; the
no-stitch reference is scored in the positions' run (stacked after them: the parents run there
anyway); and the selected position's validation predictions are exported from the logits that
run computed (kept up to :data:`~stitch_ops.stitching.scoring.KEPT_LOGITS_MEMORY`; a case beyond it is predicted again by the
selected stitch-ensemble). The exported files and every score are those of predicting each model
on its own (``tests/stitching/test_positions.py``). The selected model's validation cases are
still scored by :func:`~stitch_ops.evaluation.stages.evaluate` from its exported predictions, as
every model's: the scoring run exports segmentations without probabilities (the argmax of the
logits), the model's folder with them (the argmax of the softmax), which nnU-Net computes apart.

The stitch-ensemble is fed with c's preprocessing (c's ``plans.json``): the party that
runs it only has its own pipeline. Both parents see that input; for the embedded data
the parties' plans differ only slightly (per-image z-scoring; in-plane spacing).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from stitch_ops import tracking
from stitch_ops.budget import BUDGET_JSON, Budget, TrainingClock, write_budget
from stitch_ops.config import PARTIES, Params, load_section
from stitch_ops.data.splits import read_fold
from stitch_ops.evaluation.selection import select_position
from stitch_ops.evaluation.stages import evaluate
from stitch_ops.graph.matching import last_merge_match
from stitch_ops.nnunet.env import nnunet_threads
from stitch_ops.nnunet.model import NnUNetModel, load_model
from stitch_ops.nnunet.predict import predict_folder, predict_preprocessed, preprocess_cases
from stitch_ops.outputs import read_json, scratch_dir, write_table
from stitch_ops.paths import VALIDATION_SET, PairPaths, dvc_stage, test_set
from stitch_ops.stitching import extract_stitch_ensemble
from stitch_ops.stitching.artifacts import (APPROACH, NETWORK_FILE, SEARCH_FILE, basis_export, export_ensemble,
                                            load_parents, load_trained_network, stage_name, trained_on, training_images)
from stitch_ops.stitching.scoring import KEPT_LOGITS_MEMORY, evaluated_positions, score_positions_and_reference
from stitch_ops.stitching.search import searched
from stitch_ops.stitching.settings import StitchingParams
from stitch_ops.stitching.train import patch_size, plateau_reached, train_stitch_network
from stitch_ops.tracking.curves import TRAINING_LOG, publish_curve, write_curve
from stitch_ops.tracking.datasets import DataInput
from stitch_ops.tracking.live import training_run

logger = logging.getLogger(__name__)


def train(params: Params, pair: str, c: str, method: str, fold: int, progress: bool = True,
          finetuned: bool = False) -> Path:
    """Train the stitches of the parents at ``fold`` on c's unlabeled images (the fold's training
    cases, labels never read); writes ``<model dir>/network/`` and returns the saved network.
    ``stitching.search: optuna``: at the learning rate the search found best on c's validation
    cases (its record: ``network/search.json``, reused by a run that resumes from the checkpoint)."""
    section = load_section(params, "stitching", StitchingParams)
    config = section.training_config(method, params.seed)
    paths = PairPaths(pair)
    slug = trained_on(c, method, finetuned)
    out = paths.model_dir(APPROACH, slug, fold) / "network"
    if section.search == "optuna":
        config = replace(config, lr=searched(params, pair, c, method, fold, out / SEARCH_FILE, finetuned=finetuned,
                                             progress=progress)["best_lr"])
    else:  # the network folder persists between runs: no record of an earlier search may stay in it
        (out / SEARCH_FILE).unlink(missing_ok=True)
    model_a, model_b = load_parents(paths, c, fold, finetuned)
    own = model_a if c == PARTIES[0] else model_b
    images = training_images(paths, c, fold, own)
    logger.info("%s: training stitches on %d unlabeled images of party %s (%s)", pair, len(images), c, method)

    rows: list[dict[str, float]] = []
    with training_run(pair=pair, approach=APPROACH, trained_on=slug, fold=fold,
                      dvc_stage=dvc_stage(stage_name("stitch_train", finetuned), pair, c, method, fold),
                      profile=params.profile,
                      inputs=[DataInput(f"{pair}/{c}/train (unlabeled)", paths.preprocessed_root(c), "training")],
                      params={"method": method, "c": c, "finetuned": finetuned, "search": section.search,
                              **{f"stitching.training.{k}": v for k, v in config.to_dict().items()}}) as live:
        def on_epoch(log: Any) -> None:
            rows.append({"epoch": log.epoch, "train_loss": log.loss, "lr": log.lr})
            live.log_epoch(log.epoch, {"train_loss": log.loss, "lr": log.lr})
            write_curve(out / TRAINING_LOG, rows)

        with nnunet_threads():  # as many threads as prediction: beside another stage, a second one costs more than it gives
            _, history = train_stitch_network(model_a, model_b, images, patch_size(own), config, out, progress,
                                              on_epoch=on_epoch)
    publish_curve(out / TRAINING_LOG, paths.training_curve(APPROACH, slug, fold))
    plateau = plateau_reached(history, config.plateau_tolerance)
    if not plateau:  # recorded, never a stop: the schedule is fixed, as in the paper
        logger.info("%s %s fold %d: the probe loss still improved by >= %.1f %% in the last epoch", pair, slug,
                    fold, 100 * config.plateau_tolerance)
    write_budget(paths.metrics(APPROACH, slug, fold) / BUDGET_JSON,
                 Budget.of_schedule(config.epochs, config.iterations_per_epoch, config.batch_size,
                                    TrainingClock(out).seconds, method=config.method.value, init=config.init,
                                    loss_per_epoch=[e.loss for e in history],
                                    probe_loss_per_epoch=[e.probe for e in history], plateau_reached=plateau,
                                    plateau_tolerance=config.plateau_tolerance, lr=config.lr, search=section.search))
    return out / NETWORK_FILE


def select(params: Params, pair: str, c: str, method: str, fold: int, progress: bool = True,
           finetuned: bool = False) -> int:
    """Score positions on c's validation cases, select k (strategy 1), export it to
    ``<model dir>/export``, predict both test sets and c's validation cases and score those
    predictions like any model's (``metrics/``, its MLflow run); returns k.
    ``scores/{pair}/stitch/{slug}/fold_k/positions.csv`` holds every scored k (``k,
    relative_position, from_last_merge, matches, node_a, node_b, dice, hd95, cases, selected``;
    ``from_last_merge``: k minus the k of the first match after the last skip concatenation)."""
    section = load_section(params, "stitching", StitchingParams)
    paths = PairPaths(pair)
    slug = trained_on(c, method, finetuned)
    model_dir = paths.model_dir(APPROACH, slug, fold)
    network = load_trained_network(paths, c, method, fold, finetuned)
    own = load_model(basis_export(paths, c, fold))
    raw = paths.raw_dataset(c)
    val_cases = list(read_fold(raw, fold).val)

    def as_model(module: Any, description: str) -> NnUNetModel:
        return NnUNetModel(module, own.plans, own.dataset_json, own.configuration, None, description)

    tracking.configure(Path("."))
    experiment = tracking.experiment_name(pair)
    identity = {"pair": pair, "approach": APPROACH, "trained_on": slug, "fold": str(fold)}
    stage = dvc_stage(stage_name("stitch_select", finetuned), pair, c, method, fold)
    parent = tracking.log_run(experiment=experiment, tags={**identity, "kind": "position_selection"},
                              params={"method": method, "c": c, "finetuned": finetuned,
                                      "selection": section.selection, "matches": len(network.matches),
                                      "search": section.search},
                              metrics={}, run_name=f"{APPROACH}:{slug}:fold{fold}:positions",
                              dvc_stage=stage)
    preprocessed = preprocess_cases(own, raw / "imagesTr", val_cases, progress)  # once, for all k
    rows = []
    with scratch_dir(model_dir / "positions") as scratch:
        evaluated = evaluated_positions(len(network.matches), section.max_positions)
        if section.search == "optuna":  # the search's best k is always among the scored positions
            record = read_json(model_dir / "network" / SEARCH_FILE,
                               hint="rerun the stitch_train stage with stitching.search: optuna")
            evaluated = sorted({*evaluated, int(record["best_k"])})
        # one run scores every position and the no-stitch reference, and keeps the logits the selected
        # position's validation predictions are exported from
        run = score_positions_and_reference(network, evaluated, own, preprocessed, raw / "labelsTr", scratch,
                                            params.nnunet.device, no_stitch=True, keep_logits=KEPT_LOGITS_MEMORY,
                                            identity=dict(pair=pair, test_party=f"{VALIDATION_SET}_{c}",
                                                          approach=APPROACH, trained_on=slug, fold=fold,
                                                          cases=val_cases))
        scored = run.positions
        landmark = last_merge_match(network.graph_a, network.matches)
        for k in evaluated:
            match, scores = network.matches[k], scored[k]
            row = {"k": k, "relative_position": k / len(network.matches), "from_last_merge": k - landmark,
                   "matches": len(network.matches), "node_a": match.node_a, "node_b": match.node_b,
                   "dice": scores["dice"].mean(), "hd95": scores["hd95"].mean(), "cases": len(scores)}
            rows.append(row)
            tracking.log_run(experiment=experiment, tags={**identity, "k": str(k)},
                             params={"k": k, "relative_position": row["relative_position"], "node_a": match.node_a,
                                     "node_b": match.node_b, "method": method},
                             metrics={f"{VALIDATION_SET}_{c}/dice_mean": row["dice"],
                                      f"{VALIDATION_SET}_{c}/hd95_mean": row["hd95"]},
                             run_name=f"k={k} {match.node_a}", parent_run_id=parent)
            logger.info("k=%d (%s / %s): val Dice %.4f, HD95 %.2f", k, match.node_a, match.node_b,
                        row["dice"], row["hd95"])
        _log_no_stitch(run.no_stitch, c, experiment, identity, parent)
    positions = pd.DataFrame(rows)
    k = select_position(positions, section.selection)
    positions["selected"] = positions["k"] == k
    write_table(paths.scores(APPROACH, slug, fold) / "positions.csv", positions)
    tracking.log_metrics(parent, {"selected_k": float(k)})
    export_ensemble(extract_stitch_ensemble(network, k), own, model_dir / "export", k, method, c, section.selection,
            finetuned)
    ensemble = as_model(extract_stitch_ensemble(network, k), f"stitch-ensemble k={k}")
    predictions = paths.predictions(APPROACH, slug, fold)
    # the validation cases as the scoring run predicted them: exported from its logits (those kept)
    predict_preprocessed(ensemble, preprocessed, predictions / VALIDATION_SET, device=params.nnunet.device,
                         progress=progress, logits=run.logits[k])
    run.logits.clear()  # up to KEPT_LOGITS_MEMORY, not needed for the test sets
    for party in PARTIES:
        predict_folder(ensemble, paths.raw_dataset(party) / "imagesTs", predictions / test_set(party),
                       device=params.nnunet.device, progress=progress)
    logger.info("%s %s fold %d: selected k=%d (%s)", pair, slug, fold, k, network.matches[k].node_a)
    # scored like any model here, not in a stage of its own (whose start-up cost more than the scoring)
    evaluate(pair, APPROACH.value, slug, fold, params, stage=stage, progress=progress)
    return k


def _log_no_stitch(scores: pd.DataFrame, c: str, experiment: str, identity: dict[str, str], parent: str) -> None:
    """The no-stitch reference (both parents, c's preprocessing, softmax averaged), scored on the
    same validation cases in the positions' run, logged beside the positions (tag
    ``position=no_stitch``), so the MLflow UI shows a stitch's effect at equal preprocessing.
    ``stitch_reference`` evaluates the same parents on the test sets; its validation means are
    ``no_stitch.json``."""
    metrics = {f"{VALIDATION_SET}_{c}/dice_mean": float(scores["dice"].mean()),
               f"{VALIDATION_SET}_{c}/hd95_mean": float(scores["hd95"].mean())}
    tracking.log_run(experiment=experiment, tags={**identity, "position": "no_stitch"}, params={"position": "no_stitch"},
                     metrics=metrics, run_name="no stitch (parents averaged)", parent_run_id=parent)
    logger.info("no stitch: val Dice %.4f, HD95 %.2f", *metrics.values())
