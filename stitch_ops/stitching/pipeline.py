"""The stitching stages of the pipeline, on the two parties' basis models.

``train``: build the combined network of the two parents of a fold and train its stitches on
the *unlabeled* training images of the stitching party c. The parents are the two basis
models (``a←[c]→b``) or, with ``finetuned``, c's basis model and the other party's model
fine-tuned on c's data (``a←[a]→b→a``; the ``finetune`` approach's ``other_to_c`` model).
``select``: score the stitch-ensemble at every evaluated position k on c's validation cases
(``scores/{pair}/stitch/{slug}/fold_k/positions.csv``; all positions in one sliding window that
runs the parents' layers before each stitch once, :func:`score_positions`), log one MLflow run per position and
one for the no-stitch reference, pick k by selection strategy 1, export that stitch-ensemble
and predict both parties' test sets with it, like any other model. Strategies 2 and 3 and the
no-stitch reference's own stage are in :mod:`stitch_ops.stitching.strategies`.

Work ``select`` does once for every candidate, not once per candidate (the same for every
position; test cases are never part of it): the validation cases are preprocessed once; the
no-stitch reference is scored in the positions' run (stacked after them: the parents run there
anyway); and the selected position's validation predictions are exported from the logits that
run computed (kept up to :data:`KEPT_LOGITS_MEMORY`; a case beyond it is predicted again by the
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stitch_ops import approaches
from stitch_ops.approaches import Approach, StitchMethod
from stitch_ops.config import PARTIES, ConfigError, Params, load_section
from stitch_ops.data.splits import read_fold
from stitch_ops.outputs import output_dir, read_json, scratch_dir, write_json, write_table
from stitch_ops.paths import VALIDATION_SET, PairPaths, dataset_name, test_set

logger = logging.getLogger(__name__)

APPROACH = Approach.STITCH
NETWORK_FILE = "stitched_network.pt"
CHECKPOINT = "checkpoint.pt"
ENSEMBLE_FILE = "stitch_ensemble.pt"
SEARCH_FILE = "search.json"
"""``stitching.search: optuna``: the search's record, in the stitches' ``network`` folder."""
SEARCHES = ("grid", "optuna")


@dataclass(frozen=True)
class StitchingParams:
    """``params.yaml`` section ``stitching``: ``load_section(params, "stitching", StitchingParams)``.

    Attributes:
        c_parties: the parties c whose unlabeled images train stitches (``a←[c]→b``).
        methods: the stitch training methods to run (one stitch-ensemble per c and method).
        selection: the selection strategy of k; the pipeline's per-fold stages need ``current_fold``.
        max_positions: score at most this many positions, spread evenly (``None``: every k).
        training: the stitch schedule, :class:`~stitch_ops.stitching.train.StitchTrainingConfig`
            keys except ``method`` and ``seed``.
        finetuned_c_parties: the parties c of ``a←[a]→b→a`` (c's model stitched to the other
            party's model fine-tuned on c's data); empty: none.
        search: ``grid`` (default): the stitches train at ``training.lr`` and ``select`` scores the
            evaluated positions; ``optuna``: ``train`` first runs a Ray Tune + Optuna search over
            (k, learning rate) on c's validation cases (:mod:`stitch_ops.stitching.search`), trains
            the stitches at the best rate, and ``select`` scores the best k beside the others.
        trials: Optuna trials of the search.
        search_lr_min, search_lr_max: the log-uniform range of the searched learning rate.
        search_training: ``training`` keys a trial overrides (a short schedule).
        search_concurrent: trials run at once (one CPU each).
        search_address: where the trials run: ``None`` starts Ray on this machine,
            ``"head:6379"`` / ``"auto"`` joins an existing cluster (:mod:`stitch_ops.ray_session`).
        ablation: the ``stitch_ablation`` stage's settings, kept as plain data here and validated
            by that stage (:class:`stitch_ops.stitching.ablation.AblationParams`), so that the
            stitching stages do not depend on the ablation's code.
    """

    c_parties: tuple[str, ...]
    methods: tuple[StitchMethod, ...]
    selection: str
    training: Mapping[str, Any]
    max_positions: int | None = None
    finetuned_c_parties: tuple[str, ...] = ()
    search: str = "grid"
    trials: int = 8
    search_lr_min: float = 1e-4
    search_lr_max: float = 1e-2
    search_training: Mapping[str, Any] = field(default_factory=lambda: {"epochs": 1})
    search_concurrent: int = 1
    search_address: str | None = None
    ablation: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from stitch_ops.evaluation.selection import SelectionStrategy
        from stitch_ops.stitching.train import StitchTrainingConfig

        bad = [c for c in self.c_parties if c not in PARTIES]
        if bad or not self.c_parties:
            raise ConfigError(f"'stitching.c_parties' must list parties among {list(PARTIES)}, got "
                              f"{list(self.c_parties)}")
        try:
            object.__setattr__(self, "methods", tuple(StitchMethod(m) for m in self.methods))
        except ValueError:
            raise ConfigError(f"'stitching.methods' must be among {[m.value for m in StitchMethod]}, got "
                              f"{list(self.methods)}") from None
        bad = [c for c in self.finetuned_c_parties if c not in PARTIES]
        if bad:
            raise ConfigError(f"'stitching.finetuned_c_parties' must list parties among {list(PARTIES)}, got "
                              f"{list(self.finetuned_c_parties)}")
        if self.selection != SelectionStrategy.CURRENT_FOLD:
            raise ConfigError("'stitching.selection' can only be current_fold: it names the strategy of the "
                              "plain stitch-ensemble slug; all_folds and rule_of_thumb are always computed "
                              "as well, by the stitch_strategies stages")
        StitchTrainingConfig.from_dict(self.training)  # validates the schedule now, not mid-run
        if self.max_positions is not None and self.max_positions < 1:
            raise ConfigError(f"'stitching.max_positions' must be null or >= 1, got {self.max_positions}")
        if self.search not in SEARCHES:
            raise ConfigError(f"'stitching.search' must be one of {list(SEARCHES)}, got {self.search!r}")
        for key in ("trials", "search_concurrent"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'stitching.{key}' must be a positive integer, got {value!r}")
        if not 0 < self.search_lr_min < self.search_lr_max:
            raise ConfigError(f"'stitching.search_lr_min' must be > 0 and below 'stitching.search_lr_max', got "
                              f"{self.search_lr_min} and {self.search_lr_max}")
        if "lr" in self.search_training:
            raise ConfigError("'stitching.search_training' must not set lr: the search samples it from "
                              "[search_lr_min, search_lr_max]")
        StitchTrainingConfig.from_dict({**self.training, **self.search_training})

    def search_config(self, method: str, seed: int, lr: float) -> Any:
        """The schedule of one search trial: ``training`` with ``search_training`` and ``lr`` on top."""
        from stitch_ops.stitching.train import StitchTrainingConfig

        return StitchTrainingConfig.from_dict({**self.training, **self.search_training, "lr": lr, "method": method,
                                               "seed": seed})

    def training_config(self, method: str, seed: int) -> Any:
        from stitch_ops.stitching.train import StitchTrainingConfig

        return StitchTrainingConfig.from_dict({**self.training, "method": method, "seed": seed})


def trained_on(c: str, method: str, finetuned: bool = False) -> str:
    """Slug of a stitch-ensemble: whose data trained the stitches, and how (``via_a_double_batched``;
    ``via_a_double_batched_finetuned`` for ``a←[a]→b→a``)."""
    return approaches.stitch_ensemble(c, method, finetuned).trained_on


def parent_dirs(paths: PairPaths, c: str, fold: int, finetuned: bool = False) -> tuple[Path, Path]:
    """Exported models of parents A and B: the basis models, or (``finetuned``) c's basis model
    and the other party's model fine-tuned on c's data, on the side of its architecture."""
    basis = [_basis_export(paths, party, fold) for party in PARTIES]
    if not finetuned:
        return basis[0], basis[1]
    tuned = approaches.finetuned(c)
    tuned_dir = paths.model_dir(tuned.approach, tuned.trained_on, fold) / "export"
    return (basis[0], tuned_dir) if c == PARTIES[0] else (tuned_dir, basis[1])


def _parents(paths: PairPaths, c: str, fold: int, finetuned: bool = False) -> tuple[Any, Any]:
    from stitch_ops.nnunet.model import load_model

    return tuple(load_model(folder) for folder in parent_dirs(paths, c, fold, finetuned))


def load_trained_network(paths: PairPaths, c: str, method: str, fold: int, finetuned: bool = False) -> Any:
    """The stitched network ``stitch_train`` saved for (c, method, fold), rebuilt on its parents'
    exports (the saved network holds the stitches only)."""
    from stitch_ops.stitching.network import load_stitched_network

    model_a, model_b = _parents(paths, c, fold, finetuned)
    network_file = paths.model_dir(APPROACH, trained_on(c, method, finetuned), fold) / "network" / NETWORK_FILE
    return load_stitched_network(network_file, model_a.network, model_b.network)


def _basis_export(paths: PairPaths, party: str, fold: int) -> Path:
    basis = approaches.local(party)
    return paths.model_dir(basis.approach, basis.trained_on, fold) / "export"


def train(params: Params, pair: str, c: str, method: str, fold: int, progress: bool = True,
          finetuned: bool = False) -> Path:
    """Train the stitches of the parents at ``fold`` on c's unlabeled images (the fold's training
    cases, labels never read); writes ``<model dir>/network/`` and returns the saved network.
    ``stitching.search: optuna``: at the learning rate the search found best on c's validation
    cases (its record: ``network/search.json``, reused by a run that resumes from the checkpoint)."""
    from stitch_ops.budget import BUDGET_JSON, Budget, TrainingClock, write_budget
    from stitch_ops.stitching.train import plateau_reached

    section = load_section(params, "stitching", StitchingParams)
    config = section.training_config(method, params.seed)
    paths = PairPaths(pair)
    slug = trained_on(c, method, finetuned)
    out = paths.model_dir(APPROACH, slug, fold) / "network"
    if section.search == "optuna":
        from stitch_ops.stitching.search import searched

        config = replace(config, lr=searched(params, pair, c, method, fold, out / SEARCH_FILE, finetuned=finetuned,
                                             progress=progress)["best_lr"])
    else:  # the network folder persists between runs: no record of an earlier search may stay in it
        (out / SEARCH_FILE).unlink(missing_ok=True)
    model_a, model_b = _parents(paths, c, fold, finetuned)
    own = model_a if c == PARTIES[0] else model_b
    images = training_images(paths, c, fold, own)
    logger.info("%s: training stitches on %d unlabeled images of party %s (%s)", pair, len(images), c, method)
    from stitch_ops.tracking.curves import TRAINING_LOG, publish_curve, write_curve
    from stitch_ops.tracking.datasets import DataInput
    from stitch_ops.tracking.live import training_run

    rows: list[dict[str, float]] = []
    with training_run(pair=pair, approach=APPROACH, trained_on=slug, fold=fold,
                      dvc_stage=f"{stage_name('stitch_train', finetuned)}@{pair}-{c}-{method}-{fold}",
                      profile=params.profile,
                      inputs=[DataInput(f"{pair}/{c}/train (unlabeled)", paths.preprocessed_root(c), "training")],
                      params={"method": method, "c": c, "finetuned": finetuned, "search": section.search,
                              **{f"stitching.training.{k}": v for k, v in config.to_dict().items()}}) as live:
        def on_epoch(log: Any) -> None:
            rows.append({"epoch": log.epoch, "train_loss": log.loss, "lr": log.lr})
            live.log_epoch(log.epoch, {"train_loss": log.loss, "lr": log.lr})
            write_curve(out / TRAINING_LOG, rows)

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


def training_images(paths: PairPaths, c: str, fold: int, own: Any) -> Any:
    """c's unlabeled training images of ``fold`` in ``own``'s (c's model's) preprocessing, as
    :class:`~stitch_ops.stitching.PreprocessedImages` (labels never read)."""
    from stitch_ops.stitching import PreprocessedImages

    configuration = own.plans["configurations"][own.configuration]
    return PreprocessedImages(paths.preprocessed_root(c) / dataset_name(paths.pair, c)
                              / configuration["data_identifier"], list(read_fold(paths.raw_dataset(c), fold).train))


def patch_size(own: Any) -> Any:
    """The patch size of ``own``'s configuration: the stitches train on patches of it."""
    return own.plans["configurations"][own.configuration]["patch_size"]


def train_stitch_network(model_a: Any, model_b: Any, images: Any, patch_size: Any, config: Any, out: Path,
                         progress: bool = True, on_epoch: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
    """Combine two loaded models, train their stitches on random patches of ``images``
    (unlabeled, :class:`~stitch_ops.stitching.PreprocessedImages`) and save the network.

    Resumable: ``out/checkpoint.pt`` is written after every epoch and continued from;
    ``out/stitched_network.pt`` and ``out/training_log.json`` appear only when training ends,
    and then the checkpoint (the stitches plus the optimizer's state, about three times the
    stitches' size) is deleted: every later stage reads the saved network, and a stage that
    reruns (its parents or settings changed) must not continue stitches trained for others;
    the wall time of every attempt is summed in ``out`` (:class:`~stitch_ops.budget.TrainingClock`).
    ``on_epoch`` gets every epoch's log (a live MLflow run; see :func:`train_stitches`).
    Returns the trained :class:`~stitch_ops.stitching.StitchedNetwork` and the epochs' losses.
    """
    from stitch_ops.budget import TrainingClock
    from stitch_ops.stitching import RandomPatches, StitchedNetwork, train_stitches
    from stitch_ops.stitching.network import save_stitched_network

    patches = RandomPatches(images, patch_size, config.batch_size, config.seed)
    network = StitchedNetwork.from_models(model_a, model_b)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("%d matches; %d stitches to train (%s)", len(network.matches), 2 * len(network.matches),
                config.method.value)
    with TrainingClock(out):
        history = train_stitches(network, patches.epoch, config, checkpoint=out / CHECKPOINT, progress=progress,
                                 on_epoch=on_epoch)
    write_json(out / "training_log.json", [vars(e) for e in history])
    save_stitched_network(network, out / NETWORK_FILE)
    for checkpoint in out.glob(f"{CHECKPOINT}*"):  # with a killed save's .partial-<pid> leftover
        checkpoint.unlink()
    return network, history


def score_on_validation(model: Any, preprocessed: Any, labels: Path, scratch: Path, device: str,
                        **identity: Any) -> pd.DataFrame:
    """Predict preprocessed validation cases with ``model`` into ``scratch`` and score them
    against ``labels``: one row per case (``dice``, ``hd95``), ``identity`` as
    :func:`~stitch_ops.evaluation.evaluate.evaluate_folder` takes it (pair, test_party, ...)."""
    from stitch_ops.evaluation.evaluate import evaluate_folder
    from stitch_ops.nnunet.predict import predict_preprocessed

    predict_preprocessed(model, preprocessed, scratch, save_probabilities=False, device=device, progress=False)
    return evaluate_folder(scratch, labels, model.dataset_json["file_ending"], progress=False, **identity)


POSITIONS_MEMORY = 2**30
"""Bytes the stacked logits of one case may take when positions are scored together (the
predictor accumulates them in float32); more positions are scored in several passes."""

KEPT_LOGITS_MEMORY = 2**31
"""Bytes of validation logits :func:`select` keeps from its scoring run, so that the selected
position's validation predictions are exported from them instead of predicted again. Cases
whose logits do not fit are predicted again with the selected stitch-ensemble: the same
computation, so the same files either way."""


@dataclass
class ScoringRun:
    """What :func:`score_positions_and_reference` gives.

    Attributes:
        positions: each k's per-case table (as :func:`score_positions` returns them).
        no_stitch: the no-stitch reference's per-case table (``None`` unless asked for).
        logits: per k, case id -> the sliding window's logits of that stitch-ensemble for the
            case (``K X Y [Z]``, CPU), for the cases kept within the memory given.
    """

    positions: dict[int, pd.DataFrame]
    no_stitch: pd.DataFrame | None = None
    logits: dict[int, dict[str, Any]] = field(default_factory=dict)


def score_positions(network: Any, positions: Sequence[int], own: Any, preprocessed: Sequence[Any], labels: Path,
                    scratch: Path, device: str, **identity: Any) -> dict[int, pd.DataFrame]:
    """The stitch-ensembles of ``network`` at ``positions`` scored like
    :func:`score_on_validation` scores one (``own``'s plans, nnU-Net's sliding window, the
    same evaluation), with the parents' work before each stitch shared: every patch runs
    :class:`~stitch_ops.stitching.positions.PositionEnsembles` once for all positions of a
    pass, one logits accumulator per position. Returns each k's per-case table; ``scratch/k{k}``
    holds its predictions."""
    return score_positions_and_reference(network, positions, own, preprocessed, labels, scratch, device,
                                         identity=identity).positions


def score_positions_and_reference(network: Any, positions: Sequence[int], own: Any, preprocessed: Sequence[Any],
                                  labels: Path, scratch: Path, device: str, *, identity: Mapping[str, Any],
                                  no_stitch: bool = False, keep_logits: int = 0) -> ScoringRun:
    """:func:`score_positions`, and with ``no_stitch`` the no-stitch reference in the same run
    (stacked after the positions of the first pass: :class:`PositionEnsembles` runs both parents
    anyway; its predictions in ``scratch/no_stitch``), scored as :func:`score_on_validation`
    scores ``TwoModelEnsemble(network.parent_a, network.parent_b)``: the same layers on the same
    tiles, so the same segmentations. ``keep_logits``: bytes of the positions' logits to keep
    for the caller (:attr:`ScoringRun.logits`), case by case while they fit."""
    from stitch_ops.evaluation.evaluate import evaluate_folder
    from stitch_ops.nnunet.model import NnUNetModel
    from stitch_ops.nnunet.predict import predict_preprocessed_stacked
    from stitch_ops.stitching.positions import PositionEnsembles

    positions = list(positions)
    classes = len(own.dataset_json["labels"])  # an upper bound of nnU-Net's segmentation heads
    voxels = max((int(np.prod(case.data.shape[1:])) for case in preprocessed), default=1)
    per_pass = max(1, POSITIONS_MEMORY // (4 * classes * voxels) - no_stitch)
    run = ScoringRun({}, logits={k: {} for k in positions} if keep_logits else {})
    kept, room = set(), keep_logits  # the first cases whose logits (every pass) fit in keep_logits
    for case in preprocessed:
        room -= 4 * classes * int(np.prod(case.data.shape[1:])) * (len(positions) + no_stitch)
        if room < 0:
            break
        kept.add(case.case)

    def keep(group: list[int], reference: bool):
        def keep_case(case: Any, logits: Any) -> None:
            if case.case in kept:
                for k, part in zip(group, logits.chunk(len(group) + reference)):
                    run.logits[k][case.case] = part
        return keep_case

    for start in range(0, len(positions), per_pass):
        group = positions[start:start + per_pass]
        reference = no_stitch and start == 0
        ensembles = PositionEnsembles(network, group, reference=reference)
        model = NnUNetModel(ensembles, own.plans, own.dataset_json, own.configuration, None,
                            f"stitch-ensembles k={group}" + (" and the no-stitch reference" if reference else ""))
        folders = [scratch / f"k{k}" for k in group] + [scratch / "no_stitch"] * reference
        predict_preprocessed_stacked(model, preprocessed, folders, save_probabilities=False, device=device,
                                     progress=False, keep=keep(group, reference) if keep_logits else None)
        for k, folder in zip(group, folders):
            run.positions[k] = evaluate_folder(folder, labels, own.dataset_json["file_ending"], progress=False,
                                               **identity)
        if reference:
            run.no_stitch = evaluate_folder(folders[-1], labels, own.dataset_json["file_ending"], progress=False,
                                            **identity)
    return run


def evaluated_positions(num_matches: int, max_positions: int | None) -> list[int]:
    """Every k, or ``max_positions`` of them spread evenly from the first to the last match."""
    if max_positions is None or max_positions >= num_matches:
        return list(range(num_matches))
    return sorted({int(round(k)) for k in np.linspace(0, num_matches - 1, max_positions)})


def stage_name(name: str, finetuned: bool) -> str:
    """The DVC stage name: ``stitch_train`` or its ``a←[a]→b→a`` twin ``stitch_train_finetuned``."""
    return f"{name}_finetuned" if finetuned else name


def select(params: Params, pair: str, c: str, method: str, fold: int, progress: bool = True,
           finetuned: bool = False) -> int:
    """Score positions on c's validation cases, select k (strategy 1), export it to
    ``<model dir>/export``, predict both test sets and c's validation cases and score those
    predictions like any model's (``metrics/``, its MLflow run); returns k.
    ``scores/{pair}/stitch/{slug}/fold_k/positions.csv`` holds every scored k (``k,
    relative_position, from_last_merge, matches, node_a, node_b, dice, hd95, cases, selected``;
    ``from_last_merge``: k minus the k of the first match after the last skip concatenation)."""
    from stitch_ops import tracking
    from stitch_ops.evaluation.selection import select_position
    from stitch_ops.evaluation.stages import evaluate
    from stitch_ops.graph.matching import last_merge_match
    from stitch_ops.nnunet.model import NnUNetModel, load_model
    from stitch_ops.nnunet.predict import predict_folder, predict_preprocessed, preprocess_cases
    from stitch_ops.stitching import extract_stitch_ensemble

    section = load_section(params, "stitching", StitchingParams)
    paths = PairPaths(pair)
    slug = trained_on(c, method, finetuned)
    model_dir = paths.model_dir(APPROACH, slug, fold)
    network = load_trained_network(paths, c, method, fold, finetuned)
    own = load_model(_basis_export(paths, c, fold))
    raw = paths.raw_dataset(c)
    val_cases = list(read_fold(raw, fold).val)

    def as_model(module: Any, description: str) -> NnUNetModel:
        return NnUNetModel(module, own.plans, own.dataset_json, own.configuration, None, description)

    tracking.configure(Path("."))
    experiment = tracking.experiment_name(pair)
    identity = {"pair": pair, "approach": APPROACH, "trained_on": slug, "fold": str(fold)}
    stage = f"{stage_name('stitch_select', finetuned)}@{pair}-{c}-{method}-{fold}"
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
    _export(extract_stitch_ensemble(network, k), own, model_dir / "export", k, method, c, section.selection,
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
    from stitch_ops import tracking

    metrics = {f"{VALIDATION_SET}_{c}/dice_mean": float(scores["dice"].mean()),
               f"{VALIDATION_SET}_{c}/hd95_mean": float(scores["hd95"].mean())}
    tracking.log_run(experiment=experiment, tags={**identity, "position": "no_stitch"}, params={"position": "no_stitch"},
                     metrics=metrics, run_name="no stitch (parents averaged)", parent_run_id=parent)
    logger.info("no stitch: val Dice %.4f, HD95 %.2f", *metrics.values())


def _export(ensemble: Any, own: Any, target: Path, k: int, method: str, c: str, selection: str,
            finetuned: bool = False) -> None:
    """The selected stitch-ensemble as a portable folder: its weights (a plain ``state_dict``,
    what a bundle's ``model.pt`` holds) and description, and the stitching party's plans that
    say how to feed it."""
    from stitch_ops.stitching import save_stitch_ensemble

    meta = {"configuration": own.configuration, "mirroring_axes": None, "description": f"stitch-ensemble k={k}",
            "k": k, "node_a": ensemble.match.node_a, "node_b": ensemble.match.node_b, "method": method, "c": c,
            "selection": selection, "finetuned": finetuned}
    with output_dir(target) as staging:
        save_stitch_ensemble(ensemble, staging / ENSEMBLE_FILE)
        for name, content in (("plans.json", own.plans), ("dataset.json", own.dataset_json), ("model.json", meta)):
            write_json(staging / name, content)


def load_exported_ensemble(folder: Path) -> Any:
    """An exported stitch-ensemble folder as an ``NnUNetModel`` (weights loaded ``weights_only``)."""
    from stitch_ops.nnunet.model import ModelError, NnUNetModel
    from stitch_ops.stitching import description_file, load_stitch_ensemble

    weights = folder / ENSEMBLE_FILE
    files = [weights, description_file(weights), *(folder / name for name in ("plans.json", "dataset.json", "model.json"))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelError(f"{folder} is not an exported stitch-ensemble: missing {missing}")
    hint = "export the stitch-ensemble again (stitch_select stage)"
    plans, dataset_json, meta = (read_json(f, hint=hint) for f in files[2:])
    try:
        ensemble = load_stitch_ensemble(weights)
    except ValueError as err:
        raise ModelError(f"{err}; {hint}") from None
    return NnUNetModel(ensemble, plans, dataset_json, meta["configuration"], None, meta["description"],
                       {"kind": "stitch_ensemble", "ensemble": ensemble.description.to_dict()}, weights_file=weights)
