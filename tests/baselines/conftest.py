"""A tiny two-party pair (synthetic polyp frames, 64×64) split, planned and preprocessed
once per session, in this process (no nnU-Net worker pools), plus helpers for tiny
nnU-Net schedules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stitch_ops.config import PARTIES, NnUNetSchedule
from stitch_ops.paths import PairPaths, dataset_name

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


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    from stitch_ops.baselines.plans import plan_from_fingerprint, preprocess_with_plans, transfer_plans
    from stitch_ops.data.splits import split_raw_dataset
    from stitch_ops.data.synthetic import generate_pair

    root = tmp_path_factory.mktemp("tiny_pair")
    paths = PairPaths(PAIR, root)
    generate_pair(PAIR, paths.source, {"a": 12, "b": 14}, seed=0, image_size=64, progress=False)
    fingerprints = {}
    for party in PARTIES:
        raw = paths.raw_dataset(party)
        split_raw_dataset(paths.source / party, raw, seed=0)
        fingerprints[party] = fingerprint_in_process(raw)
        plans = plan_from_fingerprint(fingerprints[party], raw, root / "scratch", "2d")
        preprocess_with_plans(transfer_plans(plans, raw), raw, paths.preprocessed_root(party), "2d",
                              fingerprint=fingerprints[party], progress=False)
        (paths.preprocessed_root(party) / dataset_name(PAIR, party) / "dataset_fingerprint.json").write_text(
            json.dumps(fingerprints[party]))
    return TinyPair(root, fingerprints)


@pytest.fixture(scope="session")
def basis_models(tiny_pair: TinyPair) -> dict[str, Path]:
    """Both parties' basis models of fold 0 (2 epochs × 1 iteration: untrained, but real)."""
    from stitch_ops.nnunet.train import TrainingRun, train_fold

    paths = tiny_pair.paths
    return {party: train_fold(TrainingRun(dataset_name(PAIR, party), paths.preprocessed_root(party),
                                          paths.model_dir("local", party, 0), 0, TINY),
                              progress=False, provenance={"approach": "local", "trained_on": party})
            for party in PARTIES}


def make_params(**sections: Any):
    """A validated :class:`~stitch_ops.config.Params` for the tiny pair, with extra sections."""
    from dataclasses import asdict

    from stitch_ops.config import parse_params

    raw = {"profile": "test", "seed": 0, "pairs": [PAIR], "folds": [0],
           "data": {PAIR: {"source": "synthetic", "cases": {"a": 12, "b": 14}, "image_size": 64}},
           "nnunet": asdict(TINY), **sections}
    return parse_params(raw)


@pytest.fixture(scope="session")
def joint(tiny_pair: TinyPair) -> dict[str, Path]:
    """Joint plans: both parties preprocessed with them, and the pooled dataset."""
    from stitch_ops.baselines.plans import prepare_joint

    return prepare_joint(PAIR, "2d", root=tiny_pair.root, progress=False)
