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
    images = tiny_pair.paths.raw_dataset("b") / "imagesTs"
    models = f"['{basis_models['a']}', '{basis_models['b']}']"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                             str(BUNDLES / "ensemble" / "configs" / "inference.json"), "--model_dirs", models,
                             "--input_dir", str(images), "--output_dir", str(tmp_path / "out"), "--device", "cpu",
                             "--progress", "False"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == sorted(
        p.name.removesuffix("_0000.png") for p in images.glob("*_0000.png"))


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
