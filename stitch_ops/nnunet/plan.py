"""Plan and preprocess one nnU-Net raw dataset (fingerprint → plans → preprocessed data)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stitch_ops.nnunet.env import planning_environment

logger = logging.getLogger(__name__)

PLANS = "nnUNetPlans"


def plan_and_preprocess(dataset_id: int, preprocessed_root: Path, raw_dataset: Path,
                        configuration: str = "2d", *, intensity_samples: int | None = None,
                        progress: bool = True) -> Path:
    """Fingerprint, plan and preprocess ``dataset_id`` for ``configuration``.

    Our own cross-validation split (``splits_final.json`` written by the split stage) is
    copied next to the plans, so nnU-Net trains on exactly our folds instead of making its
    own. Call :func:`stitch_ops.nnunet.env.configure` first.

    ``intensity_samples`` is the number of foreground voxels the fingerprint samples for its
    intensity statistics (``None``: nnU-Net's 10^8, see
    :attr:`~stitch_ops.config.NnUNetSchedule.intensity_samples`).

    Returns:
        The preprocessed dataset folder (``<preprocessed_root>/DatasetXXX_name``).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset, plan_experiments, preprocess)

    splits = raw_dataset / "splits_final.json"
    if not splits.is_file():
        raise FileNotFoundError(f"{splits} is missing: the raw dataset must come from the split "
                                f"stage (`python -m stitch_ops.data split`), which writes the folds")
    logger.info("planning %s (configuration %s) into %s", raw_dataset.name, configuration, preprocessed_root)
    extract_fingerprint_dataset(dataset_id, fingerprint_extractor(intensity_samples), num_processes=1,
                                check_dataset_integrity=True, clean=True, verbose=False, show_progress_bar=progress)
    with planning_environment():
        plan_experiments([dataset_id])
    preprocess([dataset_id], PLANS, configurations=(configuration,), num_processes=(1,),
               show_progress_bar=progress)
    target = preprocessed_root / raw_dataset.name
    shutil.copyfile(splits, target / "splits_final.json")
    return target


def fingerprint_extractor(intensity_samples: int | None) -> Callable[..., Any]:
    """nnU-Net's ``DatasetFingerprintExtractor``, sampling ``intensity_samples`` foreground
    voxels in all (split equally between the cases) instead of its 10^8 where given."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    def extractor(dataset_id: int, num_processes: int, verbose: bool = False) -> DatasetFingerprintExtractor:
        fingerprinter = DatasetFingerprintExtractor(dataset_id, num_processes, verbose=verbose)
        if intensity_samples is not None:
            fingerprinter.num_foreground_voxels_for_intensitystats = intensity_samples
        return fingerprinter

    return extractor
