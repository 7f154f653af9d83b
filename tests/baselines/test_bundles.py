"""The baselines' MONAI bundles: verifiable, and the ensemble bundle runs through
``python -m monai.bundle`` on two exported models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stitch_ops.bundle.verify import verify_bundle
from tests.baselines.tiny_pair import TinyPair

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.mark.parametrize("name", ["finetune", "ensemble", "federated", "merged"])
def test_bundle_definitions_verify(name):
    report = verify_bundle(BUNDLES / name)
    assert report.configs == ["inference.json", "train.json"]
    assert not report.code  # only stitch_ops/monai targets, no expressions


def test_ensemble_bundle_runs_through_monai(tiny_pair: TinyPair, basis_models, tmp_path):
    import numpy as np

    from stitch_ops.nnunet.model import load_model
    from stitch_ops.nnunet.predict import predict_folder

    images = tiny_pair.paths.raw_dataset("b") / "imagesTs"
    models = f"['{basis_models['a']}', '{basis_models['b']}']"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                             str(BUNDLES / "ensemble" / "configs" / "inference.json"), "--model_dirs", models,
                             "--input_dir", str(images), "--output_dir", str(tmp_path / "out"), "--device", "cpu",
                             "--save_probabilities", "True", "--progress", "False"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    cases = sorted(p.name.removesuffix("_0000.png") for p in images.glob("*_0000.png"))
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == cases

    # the bundle's probabilities are the average of the two models' own (nnU-Net's predictor on each)
    single = {party: predict_folder(load_model(basis_models[party]), images, tmp_path / party, device="cpu",
                                    progress=False) for party in ("a", "b")}

    def probabilities(folder, case):
        with np.load(folder / f"{case}.npz") as saved:
            return saved["probabilities"]

    for case in cases:
        mean = (probabilities(single["a"], case) + probabilities(single["b"], case)) / 2
        np.testing.assert_allclose(probabilities(tmp_path / "out", case), mean, rtol=0, atol=1e-6)
    assert not np.allclose(probabilities(tmp_path / "out", cases[0]), probabilities(single["a"], cases[0]))


def test_finetune_bundle_workflow_on_a_received_model(tiny_pair: TinyPair, basis_models, tmp_path):
    import json

    from stitch_ops.baselines.workflows import finetune_on_own_data

    model = finetune_on_own_data(basis_models["a"], tiny_pair.paths.raw_dataset("b"), tmp_path, fold=0,
                                 base_lr=1e-3, warmup_epochs=1, epochs=2, iterations_per_epoch=1,
                                 schedule=None, progress=False)
    assert model == tmp_path / "models" / "fold_0"
    meta = json.loads((model / "model.json").read_text())
    assert meta["trainer"] == "FinetuneTrainer" and meta["source_model"] == str(basis_models["a"])
    # the exported folder loads as plain weights
    from stitch_ops.nnunet.model import load_model

    load_model(model)
