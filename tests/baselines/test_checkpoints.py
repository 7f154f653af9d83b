"""Disk: a finished training keeps its export, not nnU-Net's checkpoints with optimizer state.

nnU-Net writes ``checkpoint_latest``/``checkpoint_final`` (weights plus SGD momentum, about
twice the exported weights each) and ``checkpoint_best``. Only an unfinished run reads a
checkpoint (to resume); everything downstream reads ``export/``. So the pipeline's training
stages drop them once the export is in place (``keep_checkpoint=False``), ``checkpoint_best``
is never written, and a results folder trained outside the pipeline keeps
``checkpoint_final.pth`` so it stays an nnU-Net results folder. (The stages themselves are
checked the same way, after a kill and a resume, in ``test_kill_resume.py``.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from stitch_ops.paths import dataset_name
from tests.baselines.tiny_pair import PAIR, TINY, TinyPair
from tests.helpers import optimizer_state_files


def test_a_finished_training_keeps_its_export_and_no_optimizer_state(tiny_pair: TinyPair, tmp_path: Path):
    from stitch_ops.nnunet.model import load_model
    from stitch_ops.nnunet.train import TrainingRun, train_fold

    paths = tiny_pair.paths
    run = TrainingRun(dataset_name(PAIR, "a"), paths.preprocessed_root("a"), tmp_path / "model", 0, TINY)
    export = train_fold(run, progress=False, keep_checkpoint=False)

    assert optimizer_state_files(run.results_root) == []
    assert sorted(p.name for p in run.results_root.rglob("checkpoint_*")) == []
    assert (export / "weights.pth").is_file() and load_model(export).network is not None
    # a finished run is recognised by its export alone: a second call trains nothing
    before = (export / "weights.pth").stat().st_mtime_ns
    assert train_fold(run, progress=False, keep_checkpoint=False) == export
    assert (export / "weights.pth").stat().st_mtime_ns == before


def test_outside_the_pipeline_checkpoint_final_stays_and_checkpoint_best_is_never_written(basis_models):
    results = basis_models["a"].parent
    final = list(results.rglob("checkpoint_final.pth"))
    assert len(final) == 1
    # our own file, written by nnU-Net in the fixture: it holds numpy scalars, hence weights_only=False
    assert "optimizer_state" in torch.load(final[0], map_location="cpu", weights_only=False)
    assert optimizer_state_files(results) == final
    assert list(results.rglob("checkpoint_best.pth")) == []
