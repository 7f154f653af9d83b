"""``python -m stitch_ops.stitching {train,select,reference,strategies,rq1}``: the stitching stages of ``dvc.yaml``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stitch_ops.approaches import StitchMethod
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params


def _train(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.stages import train

    params.pair(args.pair)
    train(params, args.pair, args.c, args.method, args.fold, args.progress, finetuned=args.finetuned)


def _select(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.stages import select

    params.pair(args.pair)
    select(params, args.pair, args.c, args.method, args.fold, args.progress, finetuned=args.finetuned)


def _reference(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.strategies import reference

    params.pair(args.pair)
    reference(params, args.pair, args.c, args.fold, args.progress, finetuned=args.finetuned)


def _strategies(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.strategies import strategies

    params.pair(args.pair)
    strategies(params, args.pair, args.c, args.method, args.fold, args.progress, finetuned=args.finetuned)


def _rq1(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.rq1 import run

    params.pair(args.pair)
    run(params, args.pair, args.c, args.progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops stitching", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    party = argparse.ArgumentParser(add_help=False)
    party.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    party.add_argument("--c", required=True, choices=PARTIES,
                       help="c in a←[c]→b: the party whose unlabeled images train the stitches")
    fold = argparse.ArgumentParser(add_help=False)
    fold.add_argument("--fold", type=int, required=True, choices=range(5))
    fold.add_argument("--finetuned", action="store_true",
                      help="parents: c's basis model and the other party's model fine-tuned on c's data "
                           "(a←[a]→b→a) instead of the two basis models")
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", default=StitchMethod.DOUBLE_BATCHED.value, choices=[m.value for m in StitchMethod],
                        help="stitch training: double-batched (default) or direct matching")
    shared = [common_options(), party, method, fold]
    commands.add_parser("train", parents=shared,
                        help="train the stitches between the two parents (resumable); with stitching.search: "
                             "optuna, a Ray Tune + Optuna search of (k, learning rate) on c's validation cases first")
    commands.add_parser("select", parents=shared,
                        help="score every position k on c's validation cases (one MLflow run each), "
                             "select k (strategy 1), export the stitch-ensemble and predict both test sets")
    commands.add_parser("reference", parents=[common_options(), party, fold],
                        help="the no-stitch reference: both parents on c's preprocessing, averaged; "
                             "predict both test sets and c's validation cases")
    commands.add_parser("strategies", parents=shared,
                        help="selection strategies 1-3 from every scored position (scores/); predict the "
                             "stitch-ensembles strategies 2 and 3 choose; write positions.csv, "
                             "no_stitch.json, selection.json")
    commands.add_parser("rq1", parents=[common_options(), party],
                        help="RQ1 on fold 0: sample networks with 0..all stitches active, both methods, "
                             "scored on c's validation cases (rq1.csv, rq1.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"train": _train, "select": _select, "reference": _reference,
                                              "strategies": _strategies, "rq1": _rq1})


if __name__ == "__main__":
    sys.exit(main())
