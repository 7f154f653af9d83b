"""`bundles/local` run the way a user runs a MONAI bundle: `python -m monai.bundle run`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stitch_ops.data.synthetic import generate_pair
from stitch_ops.evaluation.evaluate import evaluate_folder
from stitch_ops.nnunet.model import load_model
from tests.helpers import REPO, run

pytestmark = pytest.mark.slow

BUNDLE = REPO / "bundles" / "local"
TINY_SCHEDULE = ["--schedule#epochs", "1", "--schedule#iterations_per_epoch", "3",
                 "--schedule#val_iterations_per_epoch", "1"]


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
    monai_bundle("inference.json", "--model_dir", str(model_dir), "--input_dir",
                 str(test_dataset / "imagesTs"), "--output_dir", str(tmp_path / "seg"), cwd=tmp_path)
    scores = evaluate_folder(tmp_path / "seg", test_dataset / "labelsTs", ".png", pair="polyp",
                             test_party="a", approach="local", trained_on="a", fold=0, progress=False)
    assert len(scores) == len(list((test_dataset / "labelsTs").iterdir())) > 0
    assert scores["dice"].between(0, 1).all()

    # a second run of the same training finds it finished instead of training again
    monai_bundle("train.json", "--raw_dataset", str(source), "--output_dir", str(out), *TINY_SCHEDULE,
                 cwd=tmp_path)
    assert trained.stat().st_mtime_ns == trained_at
    load_model(model_dir)
