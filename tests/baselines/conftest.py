"""Fixtures of the baselines tests: a tiny two-party pair (synthetic polyp frames, 64×64)
split, planned and preprocessed once per session in this process (no nnU-Net worker
pools), its basis models, and the joint plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from stitch_ops.config import PARTIES
from stitch_ops.paths import PairPaths, dataset_name
from tests.baselines.tiny_pair import PAIR, TINY, TinyPair, fingerprint_in_process
from tests.helpers import kept_global_state


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    from stitch_ops.baselines.plans import plan_from_fingerprint, preprocess_with_plans, transfer_plans
    from stitch_ops.data.splits import split_raw_dataset
    from stitch_ops.data.synthetic import generate_pair

    root = tmp_path_factory.mktemp("tiny_pair")
    paths = PairPaths(PAIR, root)
    generate_pair(PAIR, paths.source, {"a": 12, "b": 14}, seed=0, image_size=64, progress=False)
    fingerprints = {}
    with kept_global_state():
        for party in PARTIES:
            raw = paths.raw_dataset(party)
            split_raw_dataset(paths.source / party, raw, seed=0)
            fingerprints[party] = fingerprint_in_process(raw)
            plans = plan_from_fingerprint(fingerprints[party], raw, root / "scratch", "2d")
            preprocess_with_plans(transfer_plans(plans, raw), raw, paths.preprocessed_root(party), "2d",
                                  fingerprint=fingerprints[party], progress=False)
    return TinyPair(root, fingerprints)


@pytest.fixture(scope="session")
def basis_models(tiny_pair: TinyPair) -> dict[str, Path]:
    """Both parties' basis models of fold 0 (2 epochs × 1 iteration: untrained, but real)."""
    from stitch_ops.nnunet.train import TrainingRun, train_fold

    paths = tiny_pair.paths
    with kept_global_state():
        return {party: train_fold(TrainingRun(dataset_name(PAIR, party), paths.preprocessed_root(party),
                                              paths.model_dir("local", party, 0), 0, TINY),
                                  progress=False, provenance={"approach": "local", "trained_on": party})
                for party in PARTIES}


@pytest.fixture(scope="session")
def joint(tiny_pair: TinyPair) -> dict[str, Path]:
    """Joint plans: both parties preprocessed with them, and the pooled dataset."""
    from stitch_ops.baselines.plans import prepare_joint

    with kept_global_state():
        return prepare_joint(PAIR, "2d", root=tiny_pair.root, progress=False)
