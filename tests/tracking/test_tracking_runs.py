"""log_run against a real MLflow sqlite store in a temporary folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stitch_ops import tracking
from stitch_ops.tracking import runs

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

TAGS = {"pair": "toy", "approach": "local", "trained_on": "a", "fold": "0"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds)."""
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)  # not a git repository
        uri = tracking.configure(root)
        yield root, uri


@pytest.fixture()
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store[1])


def _active_runs(client, experiment: str):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id])


def test_configure_uses_sqlite_under_root(store):
    root, uri = store
    assert uri == f"sqlite:///{root.resolve() / 'mlflow.db'}"


def test_configure_honours_user_uri(monkeypatch, tmp_path):
    user_uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user_uri)
    saved = runs._store
    try:
        assert tracking.configure(tmp_path) == user_uri
        assert runs._store.artifact_root is None
    finally:
        runs._store = saved
        import mlflow

        mlflow.set_tracking_uri(saved.uri)


def test_configure_follows_each_root_in_one_process(monkeypatch, tmp_path):
    """In-process callers (notebooks, tests) that move between checkouts log to each one's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    saved = runs._store
    try:
        for name in ("first", "second"):
            root = tmp_path / name
            assert tracking.configure(root) == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    finally:
        runs._store = saved
        import mlflow

        mlflow.set_tracking_uri(saved.uri)


def test_create_then_rerun_upserts(store, client, tmp_path):
    root, _ = store
    experiment = tracking.experiment_name("toy")
    assert experiment == "stitch_ops/toy"
    summary = tmp_path / "summary.json"
    summary.write_text('{"test_a/dice_mean": 0.5}')
    first = tracking.log_run(experiment=experiment, tags=TAGS, params={"epochs": 2},
                             metrics={"test_a/dice_mean": 0.5}, artifacts=[summary],
                             run_name="local a fold 0", dvc_stage="evaluate@toy-local-a-0")
    second = tracking.log_run(experiment=experiment, tags=TAGS, params={"epochs": 3},
                              metrics={"test_a/dice_mean": 0.75, "test_a/hd95_mean": 2.0},
                              artifacts=[summary], run_name="local a fold 0",
                              dvc_stage="evaluate@toy-local-a-0")
    assert first != second
    active = _active_runs(client, experiment)
    assert [r.info.run_id for r in active] == [second]
    run = active[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"test_a/dice_mean": 0.75, "test_a/hd95_mean": 2.0}
    assert run.data.params == {"epochs": "3"}
    assert {k: run.data.tags[k] for k in TAGS} == TAGS
    assert run.data.tags[tracking.DVC_STAGE_TAG] == "evaluate@toy-local-a-0"
    assert tracking.GIT_COMMIT_TAG not in run.data.tags  # not in a git repository: no tag, no error
    # Artifacts live under <root>/mlruns/<experiment slug>/<run id>/artifacts.
    artifact_dir = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifact_dir == root.resolve() / "mlruns" / "stitch_ops_toy" / second / "artifacts"
    assert (artifact_dir / "summary.json").read_text() == '{"test_a/dice_mean": 0.5}'
    assert client.get_run(first).info.lifecycle_stage == "deleted"
    assert (root / "mlflow.db").is_file()


def test_different_identity_makes_a_new_run(store, client):
    experiment = "stitch_ops/identity"
    tracking.log_run(experiment=experiment, tags=TAGS, params={}, metrics={"m": 1.0})
    tracking.log_run(experiment=experiment, tags={**TAGS, "fold": "1"}, params={}, metrics={"m": 2.0})
    tracking.log_run(experiment=experiment, tags=TAGS, params={}, metrics={"m": 3.0}, dvc_stage="other")
    assert len(_active_runs(client, experiment)) == 3


def test_nested_runs_and_parent_replacement(store, client, tmp_path):
    experiment = "stitch_ops/sweep"
    parent = tracking.log_run(experiment=experiment, tags={**TAGS, "sweep": "lr"}, params={}, metrics={})
    trial = tracking.log_run(experiment=experiment, tags={**TAGS, "trial": "0"}, params={"lr": 0.01},
                             metrics={"val/dice_mean": 0.6}, parent_run_id=parent)
    assert client.get_run(trial).data.tags[tracking.PARENT_RUN_TAG] == parent
    tracking.log_metrics(parent, {"best/val/dice_mean": 0.6})
    assert client.get_run(parent).data.metrics == {"best/val/dice_mean": 0.6}
    # Re-logging the parent replaces it and retires the trials nested under the old one.
    new_parent = tracking.log_run(experiment=experiment, tags={**TAGS, "sweep": "lr"}, params={}, metrics={})
    assert [r.info.run_id for r in _active_runs(client, experiment)] == [new_parent]
    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    child = tracking.log_run(experiment=experiment, tags={**TAGS, "trial": "0"}, params={}, metrics={},
                             artifacts=[folder], parent_run_id=new_parent)
    assert [a.path for a in client.list_artifacts(child, "plots")] == ["plots/a.txt"]


def test_git_commit_tag(store, client, tmp_path, monkeypatch):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    run_id = tracking.log_run(experiment="stitch_ops/git", tags=TAGS, params={}, metrics={})
    assert client.get_run(run_id).data.tags[tracking.GIT_COMMIT_TAG] == head


def test_input_errors(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        tracking.log_run(experiment="stitch_ops/err", tags=TAGS, params={}, metrics={},
                         artifacts=[tmp_path / "nope.json"])
    with pytest.raises(TypeError, match=r"str\(fold\)"):
        tracking.log_run(experiment="stitch_ops/err", tags={"fold": 0}, params={}, metrics={})


def test_run_key_is_order_independent():
    assert tracking.run_key({"a": "1", "b": "2"}) == tracking.run_key({"b": "2", "a": "1"})
    assert tracking.run_key({"a": "1"}) != tracking.run_key({"a": "2"})
