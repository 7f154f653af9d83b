"""A real nnU-Net training logging into its MLflow run while it trains (tiny schedule)."""

from __future__ import annotations

import pytest

from stitch_ops.paths import dataset_name
from stitch_ops.tracking.datasets import DataInput, tree_md5
from stitch_ops.tracking.live import TRAINING_LOG, finish_model_run, model_identity, read_curve, training_run
from tests.baselines.tiny_pair import PAIR, TINY, TinyPair

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

CURVE = ["train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time_s"]


def test_training_logs_its_curve_live_and_a_rerun_replaces_the_run(tiny_pair: TinyPair, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from stitch_ops.nnunet.train import TrainingRun, train_fold

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = tiny_pair.paths
    run = TrainingRun(dataset_name(PAIR, "a"), paths.preprocessed_root("a"), tmp_path / "model", 0, TINY)
    data = DataInput(f"{PAIR}/a/train", paths.preprocessed_root("a"), "training")
    tags = dict(pair=PAIR, approach="local", trained_on="a", fold=0, dvc_stage="train@polyp-a-0", root=tmp_path)
    seen = []
    with training_run(**tags, params={"nnunet.epochs": TINY.epochs}, inputs=[data]) as live:
        def on_epoch(epoch, values):
            seen.append(client.get_run(live.run_id).info.status)  # the run is open while it trains
            live.log_epoch(epoch, values)

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
        train_fold(run, progress=False, on_epoch=on_epoch)
    first = client.get_run(live.run_id)
    assert seen == ["RUNNING"] * TINY.epochs and first.info.status == "RUNNING"  # until its evaluation
    for name in CURVE:
        steps = [m.step for m in client.get_metric_history(live.run_id, name)]
        assert steps == list(range(TINY.epochs)), name
    rows = read_curve(run.results_root / TRAINING_LOG)
    assert [r["epoch"] for r in rows] == [0.0, 1.0]
    assert rows[1]["train_loss"] == client.get_metric_history(live.run_id, "train_loss")[1].value
    assert rows[0]["lr"] == TINY.initial_lr
    [logged] = first.inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == (f"{PAIR}/a/train", tree_md5(paths.preprocessed_root("a")))

    # the stage runs again (already trained): a new run with the whole curve replaces the first
    with training_run(**tags, params={"nnunet.epochs": TINY.epochs}, inputs=[data]) as again:
        train_fold(run, progress=False, on_epoch=again.log_epoch)
    assert [m.step for m in client.get_metric_history(again.run_id, "val_loss")] == [0, 1]
    monkeypatch.chdir(tmp_path)
    finish_model_run(experiment=f"stitch_ops/{PAIR}", identity=model_identity(PAIR, "local", "a", 0), tags={},
                     params={}, metrics={"test_a/dice_mean": 0.5})
    experiment = client.get_experiment_by_name(f"stitch_ops/{PAIR}").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [again.run_id]
    assert client.get_run(again.run_id).info.status == "FINISHED"


def test_a_failed_training_marks_its_run_failed(tiny_pair: TinyPair, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from stitch_ops.nnunet.train import TrainingRun, train_fold

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = TrainingRun("Dataset009_missing", tiny_pair.paths.preprocessed_root("a"), tmp_path / "model", 0, TINY)
    from stitch_ops.errors import InputFileError

    with pytest.raises(InputFileError, match="run the plan stage"):
        with training_run(pair=PAIR, approach="local", trained_on="a", fold=0, dvc_stage="train@polyp-a-0",
                          params={}, root=tmp_path) as live:
            train_fold(run, progress=False, on_epoch=live.log_epoch)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    assert client.get_run(live.run_id).info.status == "FAILED"
