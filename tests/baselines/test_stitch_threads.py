"""The pipeline's stitch training runs with nnU-Net's thread limit for prediction
(``nnUNet_def_n_proc``, :func:`stitch_ops.nnunet.env.nnunet_threads`): its stitches are the same
whatever thread count torch started with (the machine's cores, or a stage forked beside another)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.baselines.tiny_pair import PAIR, TinyPair, make_params
from tests.helpers import kept_global_state

STITCHING = {"c_parties": ["a"], "methods": ["double_batched"], "selection": "current_fold", "max_positions": 1,
             "finetuned_c_parties": [], "training": {"epochs": 1, "iterations_per_epoch": 3, "batch_size": 2,
                                                     "probe_batches": 1}}


def _stitches(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_stitch_train_gives_the_same_stitches_whatever_torchs_thread_count(
        tiny_pair: TinyPair, basis_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import nnunetv2.configuration
    import torch

    from stitch_ops.stitching import stages

    monkeypatch.setattr(nnunetv2.configuration, "default_num_processes", 1)  # nnUNet_def_n_proc=1, the default
    params = make_params(stitching=STITCHING)
    threads_before = torch.get_num_threads()
    trained = {}
    try:
        for threads in (2, 1):
            root = tmp_path / f"torch_threads_{threads}"
            shutil.copytree(tiny_pair.root, root)
            monkeypatch.chdir(root)
            torch.set_num_threads(threads)
            with kept_global_state():
                trained[threads] = _stitches(stages.train(params, PAIR, "a", "double_batched", 0, progress=False))
            assert torch.get_num_threads() == threads  # torch's own count is back after the training
    finally:
        torch.set_num_threads(threads_before)
    assert trained[2].keys() == trained[1].keys()
    assert all(torch.equal(trained[2][key], trained[1][key]) for key in trained[1])
