"""Plan and preprocess one nnU-Net raw dataset (fingerprint → plans → preprocessed data)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from stitch_ops.nnunet.env import planning_environment

logger = logging.getLogger(__name__)

PLANS = "nnUNetPlans"


def plan_and_preprocess(dataset_id: int, preprocessed_root: Path, raw_dataset: Path,
                        configuration: str = "2d", *, progress: bool = True) -> Path:
    """Fingerprint, plan and preprocess ``dataset_id`` for ``configuration``.

    Our own cross-validation split (``splits_final.json`` written by the split stage) is
    copied next to the plans, so nnU-Net trains on exactly our folds instead of making its
    own. Call :func:`stitch_ops.nnunet.env.configure` first.

    Returns:
        The preprocessed dataset folder (``<preprocessed_root>/DatasetXXX_name``).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints, plan_experiments, preprocess)

    splits = raw_dataset / "splits_final.json"
    if not splits.is_file():
        raise FileNotFoundError(f"{splits} is missing: the raw dataset must come from the split "
                                f"stage (`python -m stitch_ops.data split`), which writes the folds")
    logger.info("planning %s (configuration %s) into %s", raw_dataset.name, configuration, preprocessed_root)
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, clean=True,
                         verbose=False, show_progress_bar=progress)
    with planning_environment():
        plan_experiments([dataset_id])
    preprocess([dataset_id], PLANS, configurations=(configuration,), num_processes=(1,),
               show_progress_bar=progress)
    target = preprocessed_root / raw_dataset.name
    shutil.copyfile(splits, target / "splits_final.json")
    return target
