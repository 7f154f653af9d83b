"""MLflow records of pipeline results: where they are stored and how a run is upserted.

Storage: the backend is ``sqlite:///<root>/mlflow.db`` and artifacts go under
``<root>/mlruns/<experiment slug>/<run id>/artifacts`` (MLflow 3 refuses a plain
``./mlruns`` file store). A user-set ``MLFLOW_TRACKING_URI`` wins over both; the
server then decides where artifacts go. Only one process should write (DVC owns files,
MLflow owns runs).

Naming: one experiment per dataset pair, ``stitch_ops/<pair>`` (:func:`experiment_name`).
A run is *identified* by the tags its caller gives (e.g. ``pair``, ``approach``,
``trained_on``, ``fold``), plus the DVC stage (tag ``dvc.stage``) and the parent run
(tag ``mlflow.parentRunId``) when given. :func:`log_run` stores a hash of that identity in
the tag ``stitch_ops.run_key``; logging the same identity again replaces the earlier run
(it is deleted after the new one is complete, children included), so rerunning a DVC
stage never duplicates runs. Each run also carries the git commit
(``mlflow.source.git.commit``) when the working directory is in a git repository.

For a sweep, log the parent run first (it must exist for its trials to name it) and add
results found later with :func:`log_metrics`: logging the parent again with
:func:`log_run` replaces it and deletes the trials nested under the old one.

Replaced runs are soft-deleted (hidden from the UI and searches); ``mlflow gc
--backend-store-uri sqlite:///mlflow.db`` purges them and their artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "stitch_ops"
RUN_KEY_TAG = "stitch_ops.run_key"
DVC_STAGE_TAG = "dvc.stage"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PARENT_RUN_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# The MLflow 3 UI opens an experiment on its GenAI overview (traces, token usage) unless
# the experiment says it is for model training; this value opens it on the runs table.
MODEL_TRAINING_KIND = "custom_model_development"
_NOISY_LOGGERS = ("alembic", "mlflow.store", "mlflow.tracking")
_BATCH = 100  # MLflow accepts at most 100 params or tags per batch (1000 metrics)


@dataclass(frozen=True)
class TrackingStore:
    """Where runs are recorded.

    Attributes:
        uri: MLflow tracking URI.
        artifact_root: folder holding new experiments' artifact locations; ``None`` when
            the URI came from ``MLFLOW_TRACKING_URI`` (the server's default applies).
    """

    uri: str
    artifact_root: Path | None


_store: TrackingStore | None = None


def experiment_name(pair: str) -> str:
    """MLflow experiment of a dataset pair, ``stitch_ops/<pair>``."""
    return f"{EXPERIMENT_PREFIX}/{pair}"


def _quiet_mlflow() -> None:
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(root: Path = Path(".")) -> str:
    """Point MLflow at the project's store (honouring a user-set ``MLFLOW_TRACKING_URI``).

    Args:
        root: folder holding ``mlflow.db`` and ``mlruns/`` (the repository root).

    Returns:
        The tracking URI in use, e.g. ``sqlite:////abs/root/mlflow.db``.
    """
    global _store
    import mlflow

    _quiet_mlflow()
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if user_uri:
        _store = TrackingStore(uri=user_uri, artifact_root=None)
    else:
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        _store = TrackingStore(uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "mlruns")
    mlflow.set_tracking_uri(_store.uri)
    # MLflow also exports the URI as MLFLOW_TRACKING_URI; undo that, or a later configure()
    # in this process (another root) would take our own URI for a user's choice
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    logger.info("MLflow tracking URI %s, artifacts under %s", _store.uri, _store.artifact_root or "(server default)")
    return _store.uri


def open_client() -> tuple[MlflowClient, TrackingStore]:
    """An MLflow client on the configured store, and that store (the live-training and
    logged-model modules of this package share it)."""
    from mlflow import MlflowClient

    if _store is None:
        configure()
    assert _store is not None
    return MlflowClient(tracking_uri=_store.uri), _store


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Id of the experiment ``name``, created (with its artifact location) if missing, and
    marked as a model-training experiment (tag ``mlflow.experimentKind``) so the UI opens it
    on the runs table, also when it was created before the tag existed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            client.restore_experiment(experiment.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return experiment.experiment_id
    location = None
    if artifact_root is not None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"
        location = str(artifact_root / slug)
    return client.create_experiment(name, artifact_location=location,
                                    tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})


def git_commit(cwd: Path | None = None) -> str | None:
    """Commit hash of ``HEAD`` of the git repository at ``cwd``; ``None`` if there is none."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def run_key(identity: Mapping[str, str]) -> str:
    """Stable hash of a run's identifying tags (order-independent)."""
    text = json.dumps(sorted(identity.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _find_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[str]:
    run_ids: list[str] = []
    page_token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=page_token)
        run_ids += [run.info.run_id for run in page]
        page_token = page.token
        if not page_token:
            return run_ids


def delete_with_children(client: MlflowClient, experiment_id: str, run_id: str) -> None:
    """Delete a run and its nested runs (a rerun stage replaces its earlier record whole)."""
    for child in _find_runs(client, [experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{run_id}'"):
        delete_with_children(client, experiment_id, child)
    client.delete_run(run_id)
    logger.info("Replaced MLflow run %s", run_id)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def log_values(client: MlflowClient, run_id: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Log params and metrics in batches of MLflow's limits (one request per batch, not per value)."""
    from mlflow.entities import Metric, Param

    timestamp = int(time.time() * 1000)
    for chunk in _chunks([Param(str(k), str(v)) for k, v in params.items()], _BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks([Metric(str(k), float(v), timestamp, 0) for k, v in metrics.items()], 10 * _BATCH):
        client.log_batch(run_id, metrics=chunk)


def log_artifact_files(client: MlflowClient, run_id: str, artifacts: Sequence[Path]) -> None:
    """Log files and folders (a folder under its own name) to the run."""
    for path in artifacts:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))


def _identity(tags: Mapping[str, str], dvc_stage: str | None, parent_run_id: str | None) -> dict[str, str]:
    bad = {k: v for k, v in tags.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"tags should map str to str, got non-str values {bad}; convert them, e.g. str(fold).")
    identity = dict(tags)
    if dvc_stage:
        identity[DVC_STAGE_TAG] = dvc_stage
    if parent_run_id:
        identity[PARENT_RUN_TAG] = parent_run_id
    return identity


def log_run(
    *,
    experiment: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Sequence[Path] = (),
    run_name: str | None = None,
    dvc_stage: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create or replace the run identified by ``tags`` (+ DVC stage, + parent) in ``experiment``.

    The new run is complete (params, metrics, artifacts, status ``FINISHED``) before any
    earlier run with the same identity is deleted, so a failure never loses a record.

    Args:
        experiment: experiment name, normally :func:`experiment_name` of the pair.
        tags: identifying tags, str to str, e.g. ``{"pair": "polyp", "approach": "local",
            "trained_on": "a", "fold": "0"}``.
        params: parameters (stringified).
        metrics: metrics, e.g. the flat ``summary.json`` of the evaluation.
        artifacts: files (logged at the artifact root) or folders (logged under their name).
        run_name: display name in the UI.
        dvc_stage: DVC stage that produced the results (tag ``dvc.stage``, identifying).
        parent_run_id: run to nest this one under (tag ``mlflow.parentRunId``, identifying).

    Returns:
        The id of the new run.

    Raises:
        FileNotFoundError: if an artifact does not exist (checked before anything is logged).
        TypeError: if a tag value is not a string.
    """
    artifacts = [Path(p) for p in artifacts]
    missing = [str(p) for p in artifacts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Artifacts to log do not exist: {missing}.")
    identity = _identity(tags, dvc_stage, parent_run_id)
    key = run_key(identity)
    client, store = open_client()
    experiment_id = ensure_experiment(client, experiment, store.artifact_root)
    previous = _find_runs(client, [experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'")

    run_tags = {**identity, RUN_KEY_TAG: key}
    commit = git_commit()
    if commit:
        run_tags[GIT_COMMIT_TAG] = commit
    run_id = client.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id
    try:
        log_values(client, run_id, params, metrics)
        log_artifact_files(client, run_id, artifacts)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    for old in previous:
        delete_with_children(client, experiment_id, old)
    logger.info("Logged MLflow run %s in %r (%s)", run_id, experiment, identity)
    return run_id


def log_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Add (or update) metrics of an existing run, e.g. a sweep's best trial on its parent run."""
    client, _ = open_client()
    log_values(client, run_id, {}, metrics)
