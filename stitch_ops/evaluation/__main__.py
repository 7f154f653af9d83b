"""``python -m stitch_ops.evaluation``: score one model's predictions and log them to MLflow.

Scores the predictions of (approach, trained-on party, fold) on both parties' test sets
(and the fold's validation cases when predicted), writes ``cases.csv`` + ``summary.json``
(DVC metrics) and upserts one MLflow run tagged pair / approach / trained_on / fold, with
the per-case table and the exported model as artifacts (:func:`stitch_ops.evaluation.stages.evaluate`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stitch_ops.approaches import Approach
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import Params
from stitch_ops.warm_start import stage_main


def evaluate(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.evaluation.stages import evaluate as run

    run(args.pair, args.approach, args.trained_on, args.fold, params, stage=args.stage, progress=args.progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common_options()])
    parser.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    parser.add_argument("--approach", default=Approach.LOCAL.value, choices=[a.value for a in Approach],
                        help="approach slug (default: %(default)s)")
    parser.add_argument("--trained-on", required=True, help="party (or parties) the model was trained on")
    parser.add_argument("--fold", type=int, required=True, choices=range(5))
    parser.add_argument("--stage", default=None,
                        help="DVC stage name for the MLflow tag (default: evaluate@<pair>-<trained-on>-<fold>)")
    parser.set_defaults(command="evaluate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"evaluate": evaluate})


if __name__ == "__main__":
    sys.exit(stage_main(main))
