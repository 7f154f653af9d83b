"""The evaluation of one model as one typed function: the basis models' ``evaluate`` stage
runs it through ``__main__`` (a thin shell), every other model's stage calls it at its end.

:func:`evaluate` scores the predictions of (approach, trained-on, fold) on both parties'
test sets (and the fold's validation cases when predicted), writes ``cases.csv`` +
``summary.json`` (DVC metrics) and finishes the model's MLflow run, tagged pair / approach /
trained_on / fold (plus ``perspective`` and ``shorthand`` from :mod:`stitch_ops.approaches`),
with the per-case table as artifact and the exported model registered as an MLflow pyfunc.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stitch_ops import approaches
from stitch_ops.config import PARTIES, Params
from stitch_ops.errors import InputFileError
from stitch_ops.paths import VALIDATION_SET, PairPaths, dvc_stage, test_set

logger = logging.getLogger(__name__)


def evaluate(pair: str, approach: str, trained_on: str, fold: int, params: Params, *, stage: str | None = None,
             root: Path = Path("."), progress: bool = True) -> dict[str, float]:
    """Score one model's predictions, write its metrics and finish its MLflow run (opened live
    by its training stage, or created here for models that are not trained), with the per-case
    table as artifact and the exported model as a registered MLflow pyfunc.

    Args:
        stage: the DVC stage name for the MLflow tag (default ``evaluate@<pair>-<trained_on>-<fold>``).

    Returns:
        The flat summary written to ``summary.json``.
    """
    from stitch_ops.data.splits import read_fold
    from stitch_ops.evaluation.evaluate import evaluate_folder, write_evaluation

    paths = PairPaths(pair, root)
    params.pair(pair)
    predictions = paths.predictions(approach, trained_on, fold)
    if not predictions.is_dir():
        known = [m.trained_on for m in approaches.all_models() if m.approach == approach]
        hint = "" if trained_on in known else f" ({approach} models are trained on {known})"
        raise InputFileError(f"no predictions at {predictions}: run the stage that predicts this model first{hint}")
    identity = dict(pair=pair, approach=approach, trained_on=trained_on, fold=fold, progress=progress)
    tables = []
    for party in PARTIES:
        raw = paths.raw_dataset(party)
        tables.append(evaluate_folder(predictions / test_set(party), raw / "labelsTs", _file_ending(raw),
                                      test_party=party, **identity))
    party = approaches.validation_party(approach, trained_on)
    if (predictions / VALIDATION_SET).is_dir() and party is not None:
        raw = paths.raw_dataset(party)
        tables.append(evaluate_folder(predictions / VALIDATION_SET, raw / "labelsTr", _file_ending(raw),
                                      test_party=f"{VALIDATION_SET}_{party}", cases=read_fold(raw, fold).val,
                                      **identity))
    out = paths.metrics(approach, trained_on, fold)
    summary = write_evaluation(pd.concat(tables, ignore_index=True), out)
    _log_to_mlflow(paths, approach, trained_on, fold, params, out, summary,
                   stage or dvc_stage("evaluate", pair, trained_on, fold))
    return summary


def _file_ending(raw_dataset: Path) -> str:
    from stitch_ops.outputs import read_json

    return read_json(raw_dataset / "dataset.json", hint="rerun the split stage (`dvc repro split@<pair>`)")[
        "file_ending"]


def _log_to_mlflow(paths: PairPaths, approach: str, trained_on: str, fold: int, params: Params, out: Path,
                   summary: dict[str, float], stage: str) -> None:
    """Finish the model's MLflow run (opened live by its training stage, or created here for
    models that are not trained), with the per-case table as artifact and the exported model
    as a registered MLflow pyfunc (:mod:`stitch_ops.tracking.models`)."""
    from stitch_ops import tracking
    from stitch_ops.tracking.datasets import DataInput
    from stitch_ops.tracking.live import finish_model_run, model_identity

    tracking.configure(paths.root)
    model_dir = paths.model_dir(approach, trained_on, fold) / "export"
    model = approaches.lookup(approach, trained_on)  # perspective and shorthand tags, when known
    run_id = finish_model_run(
        experiment=tracking.experiment_name(paths.pair),
        identity=model_identity(paths.pair, approach, trained_on, fold),
        tags={"profile": params.profile, **(model.tags() if model is not None else {})},
        params={"fold": fold, "profile": params.profile, "seed": params.seed,
                **{f"nnunet.{k}": v for k, v in vars(params.nnunet).items()}},
        metrics=summary, artifacts=[out / "cases.csv"], run_name=f"{approach}:{trained_on}:fold{fold}",
        dvc_stage=stage,
        inputs=[DataInput(f"{paths.pair}/{party}/test", paths.raw_dataset(party) / "imagesTs", "evaluation")
                for party in PARTIES])
    if model_dir.is_dir():  # the trained model as a pyfunc, registered (ensembles have no folder)
        from stitch_ops.tracking.models import log_model

        log_model(run_id, model_dir, pair=paths.pair, approach=approach, trained_on=trained_on)
    logger.info("MLflow run %s: %s", run_id, {k: round(v, 4) for k, v in summary.items() if "mean" in k})
