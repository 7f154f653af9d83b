"""Fine-tuning inside nnU-Net follows the warm-up schedule; an ensemble of a model with
itself is the model."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
import torch
from tests.baselines.tiny_pair import PAIR, TinyPair, make_params

from stitch_ops.baselines.finetune import last_nonzero_lr


def test_finetuning_starts_from_the_other_model_with_warmup(tiny_pair: TinyPair, basis_models, tmp_path):
    from stitch_ops.baselines.plans import prepare_transferred
    from stitch_ops.baselines.stages import train_finetuned

    prepare_transferred(PAIR, "b", "2d", root=tiny_pair.root, progress=False)
    params = make_params(finetune={"base_lr": 1e-3, "warmup_epochs": 1, "epochs": 2, "iterations_per_epoch": 1})
    export = train_finetuned(tiny_pair.paths, "b", 0, params, base_lr=1e-3, epochs=2, iterations_per_epoch=1,
                             results_root=tmp_path / "a_to_b", progress=False)
    meta = json.loads((export / "model.json").read_text())
    assert meta["trainer"] == "FinetuneTrainer" and meta["trained_on"] == "a_to_b"
    from stitch_ops.budget import TrainingClock

    assert TrainingClock(tmp_path / "a_to_b").seconds > 0  # the training's wall time, for budget.json
    assert meta["warmup_start_lr"] == pytest.approx(last_nonzero_lr(0.01, 2))  # basis: 2 epochs at 1e-2
    checkpoint = next((tmp_path / "a_to_b").rglob("checkpoint_final.pth"))
    lrs = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]["lrs"]
    assert lrs == pytest.approx([last_nonzero_lr(0.01, 2), 1e-3])  # lr(0) = start, lr(W) = base
    # the plans are a's (transferred): the fine-tuned model has a's architecture
    plans = {p: json.loads((f / "plans.json").read_text()) for p, f in {"a": basis_models["a"], "ft": export}.items()}
    assert plans["a"]["configurations"]["2d"]["architecture"] == plans["ft"]["configurations"]["2d"]["architecture"]


def test_ensemble_of_a_model_with_itself_equals_the_model(tiny_pair: TinyPair, basis_models, tmp_path):
    from stitch_ops.baselines.ensemble import ensemble_folders
    from stitch_ops.nnunet.model import load_model
    from stitch_ops.nnunet.predict import predict_folder

    raw = tiny_pair.paths.raw_dataset("a")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    single = predict_folder(load_model(basis_models["a"]), raw / "imagesTs", tmp_path / "single", device="cpu",
                            progress=False)
    other = predict_folder(load_model(basis_models["b"]), raw / "imagesTs", tmp_path / "other", device="cpu",
                           progress=False)
    itself = ensemble_folders([single, single], tmp_path / "itself", dataset_json, progress=False)
    cases = sorted(p.stem for p in single.glob("*.npz"))
    assert cases and cases == sorted(p.stem for p in itself.glob("*.npz"))
    for case in cases:
        assert filecmp.cmp(single / f"{case}.png", itself / f"{case}.png", shallow=False)
        np.testing.assert_allclose(np.load(itself / f"{case}.npz")["probabilities"],
                                   np.load(single / f"{case}.npz")["probabilities"], rtol=1e-6)

    both = ensemble_folders([single, other], tmp_path / "both", dataset_json, progress=False)
    case = cases[0]
    mean = (np.load(single / f"{case}.npz")["probabilities"] + np.load(other / f"{case}.npz")["probabilities"]) / 2
    np.testing.assert_allclose(np.load(both / f"{case}.npz")["probabilities"], mean, rtol=1e-6)


def test_ensemble_refuses_folders_with_different_cases(tiny_pair: TinyPair, tmp_path):
    from stitch_ops.baselines.ensemble import ensemble_folders

    for name, case in (("x", "c1"), ("y", "c2")):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / f"{case}.npz", probabilities=np.zeros((2, 1, 2, 2)))
    with pytest.raises(ValueError, match="different cases"):
        ensemble_folders([tmp_path / "x", tmp_path / "y"], tmp_path / "out", {"file_ending": ".png", "labels": {}})


def test_trained_models_state_their_budget(tiny_pair: TinyPair, basis_models):
    """``budget.json`` of a basis model: its schedule, the batch it trained with, its wall time."""
    from stitch_ops.nnunet.train import TrainingRun, training_budget
    from stitch_ops.paths import dataset_name
    from tests.baselines.tiny_pair import TINY

    paths = tiny_pair.paths
    run = TrainingRun(dataset_name(PAIR, "a"), paths.preprocessed_root("a"), paths.model_dir("local", "a", 0), 0, TINY)
    budget = training_budget(run)
    assert (budget.epochs, budget.iterations, budget.samples_seen) == (TINY.epochs, TINY.epochs * TINY.iterations_per_epoch,
                                                                      TINY.epochs * TINY.iterations_per_epoch * TINY.batch_size)
    assert budget.wall_time_s > 0 and budget.extra["batch_size"] == TINY.batch_size
