"""``python -m stitch_ops.evaluation``: score one model's predictions and log them to MLflow.

Scores the predictions of (approach, trained-on party, fold) on both parties' test sets
(and the fold's validation cases when predicted), writes ``cases.csv`` + ``summary.json``
(DVC metrics) and finishes the model's MLflow run (opened live by its training stage, or
created here for models that are not trained), tagged pair / approach / trained_on / fold,
with the per-case table as artifact and the exported model as a registered MLflow pyfunc
(:mod:`stitch_ops.tracking.models`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params
from stitch_ops.paths import PairPaths

logger = logging.getLogger("stitch_ops.evaluation")


def evaluate(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.evaluation.evaluate import evaluate_folder, write_evaluation
    from stitch_ops.nnunet.__main__ import validation_cases

    paths = PairPaths(args.pair)
    params.pair(args.pair)
    predictions = paths.predictions(args.approach, args.trained_on, args.fold)
    identity = dict(pair=args.pair, approach=args.approach, trained_on=args.trained_on, fold=args.fold,
                    progress=args.progress)
    tables = []
    for party in PARTIES:
        raw = paths.raw_dataset(party)
        file_ending = _file_ending(raw)
        tables.append(evaluate_folder(predictions / f"test_{party}", raw / "labelsTs", file_ending,
                                      test_party=party, **identity))
    party = _validation_party(args)
    if (predictions / "val").is_dir() and party is not None:
        raw = paths.raw_dataset(party)
        tables.append(evaluate_folder(predictions / "val", raw / "labelsTr", _file_ending(raw),
                                      test_party=f"val_{party}", cases=validation_cases(paths, party, args.fold),
                                      **identity))
    cases = pd.concat(tables, ignore_index=True)
    out = paths.metrics(args.approach, args.trained_on, args.fold)
    summary = write_evaluation(cases, out)
    _log_to_mlflow(args, params, out, summary)


def _validation_party(args: argparse.Namespace) -> str | None:
    """Whose validation cases a model's ``val`` predictions are: its party's, or its perspective's."""
    from stitch_ops.baselines.approaches import lookup

    if args.trained_on in PARTIES:
        return args.trained_on
    model = lookup(args.approach, args.trained_on)
    return model.perspective if model is not None and model.perspective in PARTIES else None


def _file_ending(raw_dataset: Path) -> str:
    import json

    from stitch_ops.errors import reading

    path = raw_dataset / "dataset.json"
    with reading(path, "nnU-Net dataset.json", "rerun the split stage (`dvc repro split@<pair>`)"):
        return json.loads(path.read_text())["file_ending"]


def _log_to_mlflow(args: argparse.Namespace, params: Params, out: Path, summary: dict[str, float]) -> None:
    from stitch_ops import tracking
    from stitch_ops.tracking.datasets import DataInput
    from stitch_ops.tracking.live import finish_model_run, model_identity

    tracking.configure(Path("."))
    model_dir = PairPaths(args.pair).model_dir(args.approach, args.trained_on, args.fold) / "export"
    artifacts = [out / "cases.csv"]
    run_id = finish_model_run(
        experiment=tracking.experiment_name(args.pair),
        identity=model_identity(args.pair, args.approach, args.trained_on, args.fold),
        tags={"profile": params.profile, **_approach_tags(args)},
        params={"fold": args.fold, "profile": params.profile, "seed": params.seed,
                **{f"nnunet.{k}": v for k, v in vars(params.nnunet).items()}},
        metrics=summary, artifacts=artifacts,
        run_name=f"{args.approach}:{args.trained_on}:fold{args.fold}",
        dvc_stage=args.stage or f"evaluate@{args.pair}-{args.trained_on}-{args.fold}",
        inputs=[DataInput(f"{args.pair}/{party}/test", PairPaths(args.pair).raw_dataset(party) / "imagesTs",
                          "evaluation") for party in PARTIES])
    if model_dir.is_dir():  # the trained model as a pyfunc, registered (ensembles have no folder)
        from stitch_ops.tracking.models import log_model

        log_model(run_id, model_dir, pair=args.pair, approach=args.approach, trained_on=args.trained_on)
    logger.info("MLflow run %s: %s", run_id, {k: round(v, 4) for k, v in summary.items() if "mean" in k})


def _approach_tags(args: argparse.Namespace) -> dict[str, str]:
    """``perspective`` and ``shorthand`` tags of a known approach (e.g. ``a→b``), so MLflow
    can compare approaches side by side; none for models this table does not know."""
    from stitch_ops.baselines.approaches import lookup

    model = lookup(args.approach, args.trained_on)
    return model.tags() if model is not None else {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common_options()])
    parser.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    parser.add_argument("--approach", default="local", help="approach slug (default: %(default)s)")
    parser.add_argument("--trained-on", required=True, help="party (or parties) the model was trained on")
    parser.add_argument("--fold", type=int, required=True, choices=range(5))
    parser.add_argument("--stage", default=None,
                        help="DVC stage name for the MLflow tag (default: evaluate@<pair>-<trained-on>-<fold>)")
    parser.set_defaults(command="evaluate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"evaluate": evaluate})


if __name__ == "__main__":
    sys.exit(main())
