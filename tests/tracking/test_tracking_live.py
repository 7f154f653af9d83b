"""Live model runs and their datasets against a real MLflow sqlite store (and real DVC)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stitch_ops import tracking
from stitch_ops.tracking import live
from stitch_ops.tracking.datasets import DataInput, dvc_digest, tree_md5

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

IDENTITY = live.model_identity("toy", "local", "a", 0)
EXPERIMENT = "stitch_ops/toy"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = tracking.configure(root)
        yield root, uri


@pytest.fixture()
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store[1])


def _train(epochs: int, fail_at: int | None = None) -> str:
    with live.model_run(experiment=EXPERIMENT, identity=IDENTITY, tags={"shorthand": "a"},
                        params={"nnunet.epochs": epochs}, run_name="local:a:fold0",
                        dvc_stage="train@toy-a-0") as run:
        for epoch in range(epochs):
            if epoch == fail_at:
                raise RuntimeError("training diverged")
            run.log_epoch(epoch, {"train_loss": 1.0 / (epoch + 1), "lr": 0.01, "pseudo_dice": float("nan")})
            time.sleep(0.05)
        return run.run_id


def _evaluate(dice: float) -> str:
    return live.finish_model_run(experiment=EXPERIMENT, identity=IDENTITY, tags={"profile": "smoke"},
                                 params={"nnunet.epochs": 3, "seed": 0}, metrics={"test_a/dice_mean": dice},
                                 run_name="local:a:fold0", dvc_stage="evaluate@toy-a-0")


def test_run_is_open_while_training_and_finished_by_the_evaluation(store, client):
    run_id = _train(3)
    running = client.get_run(run_id)
    assert running.info.status == "RUNNING"
    history = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert client.get_metric_history(run_id, "pseudo_dice") == []  # NaN is not logged
    assert _evaluate(0.8) == run_id
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.end_time - finished.info.start_time >= 150  # training + evaluation, in ms
    assert finished.data.metrics["test_a/dice_mean"] == 0.8
    assert finished.data.params == {"nnunet.epochs": "3", "seed": "0"}
    assert finished.data.tags[tracking.DVC_STAGE_TAG] == "train@toy-a-0"
    assert finished.data.tags[live.EVALUATION_STAGE_TAG] == "evaluate@toy-a-0"
    assert {k: finished.data.tags[k] for k in ("shorthand", "profile")} == {"shorthand": "a", "profile": "smoke"}


def test_rerun_replaces_the_run_and_a_failure_is_marked(store, client):
    first = _train(2)
    _evaluate(0.5)
    with pytest.raises(RuntimeError, match="diverged"):
        _train(2, fail_at=1)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    failed = [r for r in client.search_runs([experiment_id]) if r.info.status == "FAILED"]
    assert len(failed) == 1 and client.get_metric_history(failed[0].info.run_id, "train_loss")[0].value == 1.0
    second = _train(2)
    assert _evaluate(0.6) == second
    active = client.search_runs([experiment_id])
    assert [r.info.run_id for r in active] == [second]  # the earlier and the failed attempt are replaced
    assert client.get_run(first).info.lifecycle_stage == "deleted"


def test_evaluation_without_training_creates_a_finished_run(store, client):
    identity = live.model_identity("toy", "ensemble", "a_and_b", 0)
    run_id = live.finish_model_run(experiment=EXPERIMENT, identity=identity, tags={}, params={},
                                   metrics={"test_b/dice_mean": 0.4}, dvc_stage="evaluate_ensemble@toy-0")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.DVC_STAGE_TAG] == "evaluate_ensemble@toy-0"


def test_experiment_is_marked_for_model_training(store, client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags[tracking.runs.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # an experiment created before the tag existed gets it on its next run
    old = client.create_experiment("stitch_ops/old")
    tracking.log_run(experiment="stitch_ops/old", tags={"pair": "old"}, params={}, metrics={})
    assert client.get_experiment(old).tags[tracking.runs.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_curve_csv_round_trip(tmp_path):
    rows = [{"epoch": 0, "train_loss": 1.5, "lr": 0.01}, {"epoch": 1, "train_loss": 0.5, "lr": 0.005}]
    live.write_curve(tmp_path / "curve.csv", rows)
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == "epoch,lr,train_loss"
    assert live.read_curve(tmp_path / "curve.csv") == rows
    assert live.read_curve(tmp_path / "missing.csv") == []


def _data(root: Path) -> Path:
    folder = root / "data" / "toy" / "a"
    (folder / "sub").mkdir(parents=True)
    (folder / "case_0.png").write_bytes(b"\x89PNG fake image")
    (folder / "sub" / "labels.json").write_text('{"1": "polyp"}\n')
    return folder


def test_digest_is_the_hash_dvc_records(tmp_path, monkeypatch):
    folder = _data(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "data/toy/a"], cwd=tmp_path, check=True)
    recorded = yaml.safe_load((folder.parent / "a.dvc").read_text())["outs"][0]["md5"]
    assert recorded == tree_md5(folder) + ".dir"
    monkeypatch.chdir(tmp_path)
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {"outs": [
        {"path": "data/toy/a", "md5": "0123456789abcdef0123456789abcdef.dir"}]}}}))
    assert dvc_digest(Path("data/toy/a"), lock) == "0123456789abcdef0123456789abcdef"  # read, not recomputed
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dvc_digest(tmp_path / "nope")


def test_inputs_fill_the_dataset_column(store, client):
    root, _ = store
    folder = _data(root)
    run = live.start_model_run(experiment=EXPERIMENT, identity=live.model_identity("toy", "local", "b", 0))
    run.log_inputs([DataInput("toy/a/train", folder.relative_to(root), "training")])
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("toy/a/train", tree_md5(folder))]
    assert "data/toy/a" in inputs[0].dataset.source
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]
    live.fail_run(run.run_id)
