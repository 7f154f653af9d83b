"""Live MLflow runs of trained models: open when training starts, closed when evaluation ends.

A trained model (``pair``, ``approach``, ``trained_on``, ``fold``) has one MLflow run. The
training stage opens it (:func:`model_run`) and logs its curves while it trains, one step
per epoch (:meth:`LiveRun.log_epoch`); if the stage fails, the run is marked ``FAILED``.
The evaluation (the basis models' ``evaluate`` stage; for every other model the end of the
stage that trains or assembles it) finds the newest run of the same model, adds the test
metrics and artifacts and ends it (:func:`finish_model_run`), so the run's duration is
training plus evaluation. Models that are not trained (the ensembles) get a run from their
evaluation alone.

Single writer: at any time only the stage that owns the run writes to it (training, then
evaluation; one after the other). Rerunning a stage opens a new run; the
earlier runs of the same model are deleted when the new one is finished, so the UI shows
one run per model (a failed attempt stays visible until a later attempt succeeds).

The run's identity is the model alone (tag ``stitch_ops.run_key`` = hash of the four tags),
not the stage: ``dvc.stage`` names the training stage and ``dvc.stage.evaluation`` the
evaluation stage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stitch_ops.tracking import runs
from stitch_ops.tracking.curves import TRAINING_LOG, read_curve, write_curve
from stitch_ops.tracking.datasets import DataInput, log_inputs
from stitch_ops.tracking.runs import DVC_STAGE_TAG, GIT_COMMIT_TAG, RUN_KEY_TAG

__all__ = ["EVALUATION_STAGE_TAG", "TRAINING_LOG", "LiveRun", "fail_run", "finish_model_run", "model_identity",
           "model_run", "read_curve", "start_model_run", "training_run", "write_curve"]

logger = logging.getLogger(__name__)

EVALUATION_STAGE_TAG = "dvc.stage.evaluation"
MODEL_TAGS = ("pair", "approach", "trained_on", "fold")


def model_identity(pair: str, approach: str, trained_on: str, fold: int | str) -> dict[str, str]:
    """The tags that identify a trained model's run."""
    return {"pair": pair, "approach": approach, "trained_on": trained_on, "fold": str(fold)}


@dataclass
class LiveRun:
    """An open MLflow run that a training loop reports to, one step per epoch (or round).

    Attributes:
        run_id: the MLflow run; ``None`` for a stage that is not tracked (it logs nothing).
    """

    run_id: str | None

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        """Log one epoch's values (e.g. ``train_loss``, ``val_loss``, ``pseudo_dice``, ``lr``)
        at ``step``; non-finite values are kept in the CSV and left out of MLflow."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        client, _ = runs.open_client()
        timestamp = int(time.time() * 1000)
        metrics = [Metric(str(k), float(v), timestamp, int(step)) for k, v in values.items()
                   if v is not None and math.isfinite(float(v))]
        if metrics:
            client.log_batch(self.run_id, metrics=metrics)

    def log_inputs(self, inputs: Sequence[DataInput]) -> None:
        """Record the datasets the run uses (:mod:`stitch_ops.tracking.datasets`)."""
        if inputs and self.run_id is not None:
            log_inputs(self.run_id, inputs)

    def log_history(self, rows: Sequence[Mapping[str, float]]) -> None:
        """Log epochs done before this run started (a resumed or already finished training);
        each row has its step under ``epoch``."""
        for row in rows:
            self.log_epoch(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})


def start_model_run(*, experiment: str, identity: Mapping[str, str], tags: Mapping[str, str] = {},
                    params: Mapping[str, Any] = {}, run_name: str | None = None,
                    dvc_stage: str | None = None) -> LiveRun:
    """Open a new ``RUNNING`` run for a model (earlier runs of it stay until it is finished).

    Args:
        experiment: experiment name (:func:`~stitch_ops.tracking.experiment_name`).
        identity: the model's tags (:func:`model_identity`).
        tags: further tags (``shorthand``, ``perspective``, ``profile``, ...).
        params: parameters of the training.
        run_name: display name, e.g. ``local:a:fold0``.
        dvc_stage: the training stage (tag ``dvc.stage``).
    """
    client, store = runs.open_client()
    experiment_id = runs.ensure_experiment(client, experiment, store.artifact_root)
    run_tags = {**tags, **identity, RUN_KEY_TAG: runs.run_key(dict(identity))}
    if dvc_stage:
        run_tags[DVC_STAGE_TAG] = dvc_stage
    commit = runs.git_commit()
    if commit:
        run_tags[GIT_COMMIT_TAG] = commit
    run_id = client.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id
    runs.log_values(client, run_id, params, {})
    logger.info("MLflow run %s started for %s", run_id, dict(identity))
    return LiveRun(run_id)


def fail_run(run_id: str) -> None:
    """Mark a run ``FAILED`` (its stage raised or was interrupted)."""
    client, _ = runs.open_client()
    client.set_terminated(run_id, status="FAILED")
    logger.info("MLflow run %s marked FAILED", run_id)


@contextmanager
def model_run(**kwargs: Any) -> Iterator[LiveRun]:
    """:func:`start_model_run` for the duration of a training stage: the run stays open
    (``RUNNING``) for the evaluation to finish, or becomes ``FAILED`` if the body raises."""
    live = start_model_run(**kwargs)
    try:
        yield live
    except BaseException:
        fail_run(live.run_id)
        raise


@contextmanager
def training_run(*, pair: str, approach: str, trained_on: str, fold: int, dvc_stage: str,
                 params: Mapping[str, Any], profile: str | None = None, inputs: Sequence[DataInput] = (),
                 tags: Mapping[str, str] = {}, root: Path = Path(".")) -> Iterator[LiveRun]:
    """The live run of one training stage in the project's store (:func:`model_run` with the
    model's tags, e.g. the approach's ``shorthand``, and the evaluation's run name), with its
    training data recorded as inputs.

    If an input does not exist, the stage is not tracked (no store is created for it): its
    own check then fails with the precise message (e.g. "run the plan stage first")."""
    missing = [str(item.path) for item in inputs if not Path(item.path).exists()]
    if missing:
        logger.warning("not tracking %s in MLflow: its input %s does not exist", dvc_stage, missing)
        yield LiveRun(None)
        return
    runs.configure(root)
    tags = {**tags, **({"profile": profile} if profile else {})}
    with model_run(experiment=runs.experiment_name(pair), identity=model_identity(pair, approach, trained_on, fold),
                   tags=tags, params=params, run_name=f"{approach}:{trained_on}:fold{fold}",
                   dvc_stage=dvc_stage) as live:
        live.log_inputs(inputs)
        yield live


def finish_model_run(*, experiment: str, identity: Mapping[str, str], tags: Mapping[str, str],
                     params: Mapping[str, Any], metrics: Mapping[str, float], artifacts: Sequence[Path] = (),
                     run_name: str | None = None, dvc_stage: str | None = None,
                     inputs: Sequence[DataInput] = ()) -> str:
    """Add the evaluation to the newest run of the model and end it ``FINISHED``; earlier
    runs of the same model are deleted. Without a run (a model that is not trained, or a
    store that was reset), a new run is created and finished at once.

    Returns:
        The id of the finished run.
    """
    artifacts = [Path(p) for p in artifacts]
    missing = [str(p) for p in artifacts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Artifacts to log do not exist: {missing}.")
    client, store = runs.open_client()
    experiment_id = runs.ensure_experiment(client, experiment, store.artifact_root)
    key = runs.run_key(dict(identity))
    found = client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'",
                               order_by=["attributes.start_time DESC"], max_results=1000)
    if found:
        run_id, earlier = found[0].info.run_id, [r.info.run_id for r in found[1:]]
        client.set_tag(run_id, EVALUATION_STAGE_TAG, dvc_stage or "")
        for name, value in tags.items():
            client.set_tag(run_id, name, value)
    else:
        run_tags = {**tags, **identity, RUN_KEY_TAG: key}
        if dvc_stage:
            run_tags[DVC_STAGE_TAG] = dvc_stage
            run_tags[EVALUATION_STAGE_TAG] = dvc_stage
        commit = runs.git_commit()
        if commit:
            run_tags[GIT_COMMIT_TAG] = commit
        run_id, earlier = client.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id, []
    logged = client.get_run(run_id).data.params
    try:
        runs.log_values(client, run_id, {k: v for k, v in params.items() if k not in logged}, metrics)
        runs.log_artifact_files(client, run_id, artifacts)
        if inputs:
            log_inputs(run_id, inputs)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    for old in earlier:
        runs.delete_with_children(client, experiment_id, old)
    logger.info("MLflow run %s finished for %s", run_id, dict(identity))
    return run_id
