"""`bundles/local` run the way a user runs a MONAI bundle: `python -m monai.bundle run`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import numpy as np
import torch
from PIL import Image

from stitch_ops.data.synthetic import generate_pair
from stitch_ops.evaluation.evaluate import evaluate_folder
from stitch_ops.nnunet.model import NnUNetModel, build_network, load_model
from stitch_ops.nnunet.predict import predict_folder
from tests.helpers import REPO, run

pytestmark = pytest.mark.slow

BUNDLE = REPO / "bundles" / "local"
TINY_SCHEDULE = ["--schedule#epochs", "1", "--schedule#iterations_per_epoch", "3",
                 "--schedule#val_iterations_per_epoch", "1", "--schedule#intensity_samples", "10000"]


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def probabilities(path: Path) -> np.ndarray:
    with np.load(path) as saved:
        return saved["probabilities"]


def dice_by_hand(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2|P∩R| / (|P| + |R|); 1 when both masks are empty (README: empty-mask policy)."""
    p, r = prediction > 0, reference > 0
    if not p.any() and not r.any():
        return 1.0
    return 2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum())


def monai_bundle(config: str, *overrides: str, cwd: Path):
    return run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                str(BUNDLE / "configs" / config), "--progress", "False", *overrides], cwd, timeout=1200)


def test_train_then_segment_through_monai_bundle(tmp_path: Path):
    source = generate_pair("polyp", tmp_path / "source", {"a": 12, "b": 12}, seed=3, image_size=64,
                           progress=False)["a"]
    out = tmp_path / "bundle_out"
    monai_bundle("train.json", "--raw_dataset", str(source), "--output_dir", str(out), *TINY_SCHEDULE,
                 cwd=tmp_path)

    model_dir = out / "models" / "fold_0"
    model = load_model(model_dir)
    assert model.configuration == "2d"
    trained = out / "work" / "nnUNet_results" / "fold_0" / "export" / "weights.pth"
    trained_at = trained.stat().st_mtime_ns

    test_dataset = next((out / "work" / "nnUNet_raw").iterdir())
    images, labels, seg = test_dataset / "imagesTs", test_dataset / "labelsTs", tmp_path / "seg"
    monai_bundle("inference.json", "--model_dir", str(model_dir), "--input_dir", str(images),
                 "--output_dir", str(seg), "--save_probabilities", "True", cwd=tmp_path)
    cases = sorted(p.stem for p in labels.glob("*.png"))
    assert cases and sorted(p.stem for p in seg.glob("*.png")) == cases

    # the segmentations are this model's: nnU-Net's predictor on the same weights gives the same
    # (probabilities up to float32 summation order: the bundle runs in another process, whose
    # torch thread count may differ from this one's, e.g. after nnU-Net's planner set it)
    direct = predict_folder(model, images, tmp_path / "direct", device="cpu", progress=False)
    for case in cases:
        np.testing.assert_array_equal(png(seg / f"{case}.png"), png(direct / f"{case}.png"))
        np.testing.assert_allclose(probabilities(seg / f"{case}.npz"), probabilities(direct / f"{case}.npz"),
                                   rtol=0, atol=1e-3)
    # ... and the same network with other weights gives other probabilities
    with torch.random.fork_rng():
        torch.manual_seed(1)
        untrained = build_network(model.plans, model.dataset_json, model.configuration)
    other = predict_folder(NnUNetModel(untrained, model.plans, model.dataset_json, model.configuration, None, "other"),
                           images, tmp_path / "other", device="cpu", progress=False)
    assert not np.allclose(probabilities(seg / f"{cases[0]}.npz"), probabilities(other / f"{cases[0]}.npz"),
                           rtol=0, atol=1e-3)

    scores = evaluate_folder(seg, labels, ".png", pair="polyp", test_party="a", approach="local", trained_on="a",
                             fold=0, progress=False).set_index("case")
    assert sorted(scores.index) == cases
    for case in cases:  # Dice against a computation by hand from the two masks
        assert scores.loc[case, "dice"] == pytest.approx(dice_by_hand(png(seg / f"{case}.png"),
                                                                       png(labels / f"{case}.png")))

    # a second run of the same training finds it finished instead of training again
    monai_bundle("train.json", "--raw_dataset", str(source), "--output_dir", str(out), *TINY_SCHEDULE,
                 cwd=tmp_path)
    assert trained.stat().st_mtime_ns == trained_at
    load_model(model_dir)
