"""Functions the baselines' MONAI bundles instantiate (``"_target_"``), so their configs
stay plain data. Like :mod:`stitch_ops.bundle.workflows` for ``bundles/local``, each one
works on nnU-Net raw datasets outside the pipeline and writes ``work/`` (nnU-Net's
folders, resumable) and ``models/fold_<k>`` (the portable model) under ``output_dir``.

Federated and merged training lay their inputs out like the pipeline (a *pair* named
``bundle`` under ``output_dir/work``) and run the same stage functions.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stitch_ops.baselines import stages
from stitch_ops.baselines.ensemble import ensemble_folders
from stitch_ops.baselines.finetune import finetune_schedule
from stitch_ops.baselines.plans import prepare_joint, preprocess_with_plans, transfer_plans
from stitch_ops.bundle.sources import open_model
from stitch_ops.config import PARTIES, NnUNetSchedule, parse_params
from stitch_ops.data.raw import validate_raw_dataset
from stitch_ops.data.splits import split_raw_dataset
from stitch_ops.nnunet.env import NnUNetRoots, configure
from stitch_ops.nnunet.plan import plan_and_preprocess
from stitch_ops.nnunet.predict import predict_folder
from stitch_ops.nnunet.train import TrainingRun, train_fold
from stitch_ops.outputs import copy_dir, read_json
from stitch_ops.paths import PARTY_DATASET_IDS, PairPaths

logger = logging.getLogger(__name__)

BUNDLE_PAIR = "bundle"


def _working_dataset(raw_dataset: Path, target: Path, seed: int) -> Path:
    """``raw_dataset`` as a split working dataset at ``target`` (a dataset that already
    has ``splits_final.json`` is copied as it is)."""
    if target.exists():
        return target
    validate_raw_dataset(raw_dataset)
    if (raw_dataset / "splits_final.json").is_file():
        copy_dir(raw_dataset, target)
    else:
        split_raw_dataset(raw_dataset, target, seed)
    return target


def _publish(exported: Path, output_dir: Path, fold: int) -> Path:
    target = copy_dir(exported, output_dir / "models" / f"fold_{fold}")
    logger.info("trained model exported to %s", target)
    return target


def finetune_on_own_data(model_dir: str | Path, raw_dataset: str | Path, output_dir: str | Path, fold: int = 0,
                         base_lr: float = 1e-3, warmup_epochs: int = 1, epochs: int = 2,
                         iterations_per_epoch: int = 25, source_initial_lr: float = 1e-2,
                         source_epochs: int | None = None, schedule: NnUNetSchedule | None = None, seed: int = 0,
                         progress: bool = True) -> Path:
    """``b→a``: fine-tune another party's exported model on own data with the warm-up.

    Own data is split (if it has no ``splits_final.json``) and preprocessed with the
    *model's* plans (transferred), so the architecture fits; the warm-up starts from the
    last non-zero learning rate of the model's original polynomial schedule
    (``source_initial_lr`` over ``source_epochs``, default: the epochs in its model.json).
    """
    model_dir, raw_dataset, output_dir = Path(model_dir), Path(raw_dataset), Path(output_dir)
    basis = schedule or NnUNetSchedule(initial_lr=source_initial_lr)
    meta = read_json(model_dir / "model.json", hint=f"{model_dir} must be an exported model folder")
    plans = read_json(model_dir / "plans.json", hint=f"{model_dir} must be an exported model folder")
    work = output_dir / "work"
    name = f"Dataset001_{raw_dataset.name.split('_', 1)[-1]}"
    working = _working_dataset(raw_dataset, work / "nnUNet_raw" / name, seed)
    preprocessed = work / "nnUNet_preprocessed"
    if not (preprocessed / name / "nnUNetPlans.json").is_file():
        preprocess_with_plans(transfer_plans(plans, working), working, preprocessed, meta["configuration"],
                              fingerprint={}, progress=progress)  # own fingerprint: not needed with given plans
    ft = finetune_schedule(basis, base_lr=base_lr, warmup_epochs=warmup_epochs, epochs=epochs,
                           iterations_per_epoch=iterations_per_epoch,
                           source_epochs=source_epochs or meta.get("epochs"), source_initial_lr=source_initial_lr)
    configure(NnUNetRoots(preprocessed=preprocessed), training=True)
    from stitch_ops.baselines.trainers import FinetuneTrainer

    run = TrainingRun(name, preprocessed, work / "nnUNet_results" / f"fold_{fold}", fold, ft, pretrained=model_dir,
                      trainer=FinetuneTrainer.__name__, seed=seed)
    exported = train_fold(run, trainer_class=FinetuneTrainer, progress=progress,
                          provenance={"approach": "finetune", "source_model": str(model_dir),
                                      "source": str(raw_dataset), "base_lr": base_lr})
    return _publish(exported, output_dir, fold)


def segment_ensemble(model_dirs: Sequence[str | Path], input_dir: str | Path, output_dir: str | Path,
                     device: str = "auto", save_probabilities: bool = False, progress: bool = True) -> Path:
    """``a&b``: segment with every model, average their softmax probabilities per case.

    Each model is opened by :func:`stitch_ops.bundle.sources.open_model` (any source it accepts,
    with its checks: a received bundle's config cannot point this at a model that runs code)."""
    output_dir = Path(output_dir)
    models = [open_model(Path(m)) for m in model_dirs]  # every model checked before any work
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as scratch:
        members = [predict_folder(model, Path(input_dir), Path(scratch) / f"member_{i}", device=device,
                                  progress=progress) for i, model in enumerate(models)]
        return ensemble_folders(members, output_dir, models[0].dataset_json, save_probabilities=save_probabilities,
                                progress=progress)


def _pair_workspace(raw_datasets: Mapping[str, str | Path], output_dir: Path, schedule: NnUNetSchedule,
                    seed: int, progress: bool) -> Path:
    """Both parties' data laid out like the pipeline's pair ``bundle`` and planned."""
    if set(raw_datasets) != set(PARTIES):
        raise ValueError(f"raw_datasets must name one nnU-Net raw dataset per party {PARTIES}, "
                         f"got {sorted(raw_datasets)}")
    work = output_dir / "work"
    paths = PairPaths(BUNDLE_PAIR, work)
    for party in PARTIES:
        _working_dataset(Path(raw_datasets[party]), paths.raw_dataset(party), seed)
        root = paths.preprocessed_root(party)
        if not (root / paths.raw_dataset(party).name / "nnUNetPlans.json").is_file():
            configure(NnUNetRoots(raw=paths.raw_root, preprocessed=root))
            plan_and_preprocess(PARTY_DATASET_IDS[party], root, paths.raw_dataset(party), schedule.configuration,
                                intensity_samples=schedule.intensity_samples, progress=progress)
    return work


def _joint_pair(raw_datasets: Mapping[str, str | Path], output_dir: Path, schedule: NnUNetSchedule, seed: int,
                progress: bool, **sections: Any) -> tuple[Path, Any]:
    """Both parties' data planned jointly in the workspace, and params naming the pair
    ``bundle`` with the given sections (``federated``, ``merged``): what the stages need."""
    work = _pair_workspace(raw_datasets, output_dir, schedule, seed, progress)
    prepare_joint(BUNDLE_PAIR, schedule.configuration, root=work, progress=progress)
    params = parse_params({"profile": "bundle", "seed": seed, "pairs": [BUNDLE_PAIR], "folds": [0],
                           "data": {BUNDLE_PAIR: {"source": {p: str(v) for p, v in raw_datasets.items()}}},
                           "nnunet": asdict(schedule), **sections})
    return work, params


def train_federated(raw_datasets: Mapping[str, str | Path], output_dir: str | Path, fold: int = 0,
                    rounds: int = 6, iterations_per_epoch: int = 25, address: str | None = None,
                    cpus_per_party: int = 1, schedule: NnUNetSchedule | None = None, seed: int = 0,
                    progress: bool = True) -> Path:
    """``a‖b``: FedAvg over one Ray actor per party (joint plans from the combined fingerprint)."""
    output_dir = Path(output_dir)
    work, params = _joint_pair(raw_datasets, output_dir, schedule or NnUNetSchedule(), seed, progress, federated={
        "rounds": rounds, "iterations_per_epoch": iterations_per_epoch, "address": address,
        "cpus_per_party": cpus_per_party})
    return _publish(stages.federated(BUNDLE_PAIR, fold, params, root=work, progress=progress), output_dir, fold)


def train_merged(raw_datasets: Mapping[str, str | Path], output_dir: str | Path, fold: int = 0, epochs: int = 6,
                 iterations_per_epoch: int = 25, schedule: NnUNetSchedule | None = None, seed: int = 0,
                 progress: bool = True) -> Path:
    """``a+b``: one nnU-Net on both parties' pooled data (joint plans, folds of both)."""
    output_dir = Path(output_dir)
    work, params = _joint_pair(raw_datasets, output_dir, schedule or NnUNetSchedule(), seed, progress,
                               merged={"epochs": epochs, "iterations_per_epoch": iterations_per_epoch})
    return _publish(stages.merged(BUNDLE_PAIR, fold, params, root=work, progress=progress), output_dir, fold)
