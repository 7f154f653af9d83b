"""Tiny real nnU-Net models of two institutions, as nnU-Net leaves them on disk.

Each institution generates its own synthetic polyp frames (32x32), splits, plans and
preprocesses them and trains one fold with nnU-Net's trainer (2 epochs x 1 iteration: untrained
but real). The plans are shrunk to three stages with a few channels (A: 4-8-16, B: 6-12-24) so
tracing, stitch training and prediction take seconds. The result is a genuine nnU-Net results
folder ``<root>/results/DatasetXXX_polyp_x/ScheduledTrainer__nnUNetPlans__2d/`` (a trainer class
a receiver does not have), plus the raw dataset it was trained on.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stitch_ops.config import NnUNetSchedule
from stitch_ops.paths import dataset_name

SCHEDULE = NnUNetSchedule(epochs=2, iterations_per_epoch=1, val_iterations_per_epoch=1, batch_size=2, device="cpu")
FEATURES = {"a": (4, 8, 16), "b": (6, 12, 24)}
CASES = {"a": 10, "b": 10}


@dataclass(frozen=True)
class Institution:
    """One institution's own files: raw dataset (images, labels, case ids) and its results folder."""

    party: str
    root: Path
    raw: Path
    results: Path

    @property
    def case_ids(self) -> list[str]:
        ending = json.loads((self.raw / "dataset.json").read_text())["file_ending"]
        return sorted({p.name[: -len(ending)] for folder in ("labelsTr", "labelsTs")
                       for p in (self.raw / folder).glob(f"*{ending}")})


def shrink(plans: dict[str, Any], features: tuple[int, ...], configuration: str = "2d") -> dict[str, Any]:
    """The plans with a three-stage network of ``features`` channels and a 32x32 patch."""
    config = plans["configurations"][configuration]
    arch = config["architecture"]["arch_kwargs"]
    n = len(features)
    arch.update(n_stages=n, features_per_stage=list(features), kernel_sizes=[[3, 3]] * n,
                strides=[[1, 1]] + [[2, 2]] * (n - 1), n_conv_per_stage=[1] * n, n_conv_per_stage_decoder=[1] * (n - 1))
    config["patch_size"] = [32, 32]
    config["batch_size"] = 2
    return plans


def make_institution(party: str, root: Path, seed: int = 0) -> Institution:
    """Generate, split, plan (shrunk), preprocess and train one fold, all under ``root``."""
    from stitch_ops.baselines.plans import plan_from_fingerprint, preprocess_with_plans, transfer_plans
    from stitch_ops.data.splits import split_raw_dataset
    from stitch_ops.data.synthetic import generate_pair
    from stitch_ops.nnunet.train import TrainingRun, train_fold
    from tests.baselines.tiny_pair import fingerprint_in_process

    source = generate_pair("polyp", root / "source", CASES, seed=seed, image_size=32, progress=False)[party]
    raw = root / "nnUNet_raw" / dataset_name("polyp", party)
    split_raw_dataset(source, raw, seed=seed)
    fingerprint = fingerprint_in_process(raw)
    plans = shrink(plan_from_fingerprint(fingerprint, raw, root / "scratch", "2d"), FEATURES[party])
    preprocessed = root / "nnUNet_preprocessed"
    preprocess_with_plans(transfer_plans(plans, raw), raw, preprocessed, "2d", fingerprint=fingerprint, progress=False)
    train_fold(TrainingRun(raw.name, preprocessed, root / "results", 0, SCHEDULE), progress=False)
    shutil.rmtree(root / "source")
    results = root / "results" / raw.name / "ScheduledTrainer__nnUNetPlans__2d"
    return Institution(party, root, raw, results)


def add_validation_summary(results: Path) -> None:
    """``nnUNetv2_export_model_to_zip`` insists on ``fold_k/validation/summary.json``, which nnU-Net
    writes after its full validation; the 2-iteration schedule skips that, so write an empty one."""
    for fold in results.glob("fold_*"):
        (fold / "validation").mkdir(exist_ok=True)
        (fold / "validation" / "summary.json").write_text("{}")
