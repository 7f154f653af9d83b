"""Helpers of the baselines tests: the tiny pair's layout, nnU-Net's fingerprint computed in
this process, a tiny nnU-Net schedule and params built from it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitch_ops.config import PARTIES, NnUNetSchedule
from stitch_ops.paths import PairPaths

PAIR = "polyp"
TINY = NnUNetSchedule(epochs=2, iterations_per_epoch=1, val_iterations_per_epoch=1, batch_size=2, device="cpu")


def fingerprint_in_process(raw_dataset: Path) -> dict[str, Any]:
    """nnU-Net's dataset fingerprint, computed case by case in this process (the
    extractor's own ``run`` starts a worker pool, which costs seconds per stage)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    cases = get_filenames_of_train_images_and_targets(str(raw_dataset), dataset_json)
    rw = determine_reader_writer_from_dataset_json(dataset_json, next(iter(cases.values()))["images"][0])
    results = [DatasetFingerprintExtractor.analyze_case(c["images"], c["label"], rw, 1000) for c in cases.values()]
    intensities = [np.concatenate([r[2][i] for r in results]) for i in range(len(results[0][2]))]
    stats = {i: {"mean": float(np.mean(v)), "median": float(np.median(v)), "std": float(np.std(v)),
                 "min": float(np.min(v)), "max": float(np.max(v)),
                 "percentile_99_5": float(np.percentile(v, 99.5)), "percentile_00_5": float(np.percentile(v, 0.5))}
             for i, v in enumerate(intensities)}
    return {"spacings": [list(map(float, r[1])) for r in results],
            "shapes_after_crop": [list(map(int, r[0])) for r in results],
            "foreground_intensity_properties_per_channel": stats,
            "median_relative_size_after_cropping": float(np.median([r[4] for r in results]))}


@dataclass(frozen=True)
class TinyPair:
    """A pipeline-shaped working tree (``data/polyp/...``) under ``root``."""

    root: Path
    fingerprints: Mapping[str, dict[str, Any]]

    @property
    def paths(self) -> PairPaths:
        return PairPaths(PAIR, self.root)

    def test_cases(self) -> dict[str, list[str]]:
        return {p: json.loads((self.paths.raw_dataset(p) / "test_cases.json").read_text()) for p in PARTIES}


def make_params(**sections: Any):
    """A validated :class:`~stitch_ops.config.Params` for the tiny pair, with extra sections."""
    from dataclasses import asdict

    from stitch_ops.config import parse_params

    raw = {"profile": "test", "seed": 0, "pairs": [PAIR], "folds": [0],
           "data": {PAIR: {"source": "synthetic", "cases": {"a": 12, "b": 14}, "image_size": 64}},
           "nnunet": asdict(TINY), **sections}
    return parse_params(raw)
