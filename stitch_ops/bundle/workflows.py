"""Functions that bundle configs instantiate (``"_target_"``), so a bundle's configs stay
plain data: ``python -m monai.bundle run --config_file configs/train.json`` resolves
``"run": ["@training"]`` into a call of :func:`train_on_own_data`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stitch_ops.approaches import Approach
from stitch_ops.config import NnUNetSchedule
from stitch_ops.nnunet.env import NnUNetRoots, configure
import torch

from stitch_ops.nnunet.predict import predict_folder
from stitch_ops.nnunet.train import TrainingRun, train_fold
from stitch_ops.outputs import copy_dir

logger = logging.getLogger(__name__)

WORK_DATASET_ID = 1


def train_on_own_data(raw_dataset: str | Path, output_dir: str | Path, fold: int = 0,
                      schedule: NnUNetSchedule | None = None, seed: int = 0, progress: bool = True) -> Path:
    """The "train on own data" approach: split, plan, preprocess, train one fold, export.

    Args:
        raw_dataset: an nnU-Net raw dataset with every case in imagesTr/labelsTr (a split
            dataset with ``splits_final.json`` is used as it is).
        output_dir: receives ``work/`` (nnU-Net folders, resumable) and ``models/fold_<k>``
            (the portable model the inference config loads).

    Returns:
        The exported model folder.
    """
    from stitch_ops.data.raw import validate_raw_dataset
    from stitch_ops.data.splits import split_raw_dataset
    from stitch_ops.nnunet.plan import plan_and_preprocess

    raw_dataset, output_dir = Path(raw_dataset), Path(output_dir)
    schedule = schedule or NnUNetSchedule()
    validate_raw_dataset(raw_dataset)
    name = f"Dataset{WORK_DATASET_ID:03d}_{raw_dataset.name.split('_', 1)[-1]}"
    work = output_dir / "work"
    raw_root, preprocessed_root = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    working = raw_root / name
    if (raw_dataset / "splits_final.json").is_file():
        if not working.exists():
            copy_dir(raw_dataset, working)
    elif not working.exists():
        split_raw_dataset(raw_dataset, working, seed)
    if not (preprocessed_root / name / "nnUNetPlans.json").is_file():
        configure(NnUNetRoots(raw=raw_root, preprocessed=preprocessed_root))
        plan_and_preprocess(WORK_DATASET_ID, preprocessed_root, working, schedule.configuration,
                            intensity_samples=schedule.intensity_samples, progress=progress)
    run = TrainingRun(name, preprocessed_root, work / "nnUNet_results" / f"fold_{fold}", fold, schedule, seed=seed)
    exported = train_fold(run, progress=progress, provenance={"approach": Approach.LOCAL.value, "source": str(raw_dataset)})
    target = copy_dir(exported, output_dir / "models" / f"fold_{fold}")
    logger.info("trained model exported to %s", target)
    return target


def bundle_network(bundle_root: str | Path = ".") -> torch.nn.Module:
    """The network of a trained bundle with its weights (``network_def`` of ``inference.json``,
    what ``python -m monai.bundle verify_net_in_out network_def`` checks); loaded as data."""
    from stitch_ops.bundle.sources import open_model

    return open_model(Path(bundle_root)).network


def segment(model_dir: str | Path, input_dir: str | Path, output_dir: str | Path, device: str = "auto",
            save_probabilities: bool = False, progress: bool = True) -> Path:
    """Segment every ``{case}_0000.*`` image of ``input_dir`` with a model: a trained bundle
    (folder or zip), its ``models/``, an nnU-Net results folder or export zip."""
    from stitch_ops.bundle.sources import open_model

    model = open_model(Path(model_dir))
    return predict_folder(model, Path(input_dir), Path(output_dir), save_probabilities=save_probabilities,
                          device=device, progress=progress)


def segment_with_stitch_ensemble(model_dir: str | Path, input_dir: str | Path, output_dir: str | Path,
                                 device: str = "auto", save_probabilities: bool = False,
                                 progress: bool = True) -> Path:
    """Segment every ``{case}_0000.*`` image of ``input_dir`` with an exported stitch-ensemble."""
    return segment(model_dir, input_dir, output_dir, device, save_probabilities, progress)

