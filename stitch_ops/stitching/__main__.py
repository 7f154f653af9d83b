"""``python -m stitch_ops.stitching {train,select}``: the stitching stages of ``dvc.yaml``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stitch_ops.approaches import StitchMethod
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params


def _train(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.pipeline import train

    params.pair(args.pair)
    train(params, args.pair, args.c, args.method, args.fold, args.progress)


def _select(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.pipeline import select

    params.pair(args.pair)
    select(params, args.pair, args.c, args.method, args.fold, args.progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops stitching", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    shared.add_argument("--c", required=True, choices=PARTIES,
                        help="c in a←[c]→b: the party whose unlabeled images train the stitches")
    shared.add_argument("--method", default=StitchMethod.DOUBLE_BATCHED.value, choices=[m.value for m in StitchMethod],
                        help="stitch training: double-batched (default) or direct matching")
    shared.add_argument("--fold", type=int, required=True, choices=range(5))
    commands.add_parser("train", parents=[common_options(), shared],
                        help="train the stitches between the two basis models (resumable)")
    commands.add_parser("select", parents=[common_options(), shared],
                        help="score every position k on c's validation cases (one MLflow run each), "
                             "select k, export the stitch-ensemble and predict both test sets")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"train": _train, "select": _select})


if __name__ == "__main__":
    sys.exit(main())
