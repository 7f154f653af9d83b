"""``python -m stitch_ops.nnunet {plan,train,predict}``: the nnU-Net stages of ``dvc.yaml``
(a thin shell over :mod:`stitch_ops.nnunet.stages`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stitch_ops.approaches import Approach
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params
from stitch_ops.nnunet.stages import PREDICTION_SETS
from stitch_ops.warm_start import stage_main


def plan(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.nnunet import stages

    stages.plan(args.pair, args.party, params, progress=args.progress)


def train(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.nnunet import stages

    stages.train(args.pair, args.party, args.fold, params, progress=args.progress)


def predict(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.nnunet import stages

    stages.predict(args.pair, args.approach, args.trained_on, args.fold, params, sets=args.sets,
                   progress=args.progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops nnunet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    party = argparse.ArgumentParser(add_help=False)
    party.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    party.add_argument("--party", required=True, choices=PARTIES)

    commands.add_parser("plan", parents=[common, party],
                        help="fingerprint, plan and preprocess a party's dataset (2-D configuration)")
    train_cmd = commands.add_parser("train", parents=[common, party],
                                    help=f"train one fold on a party's own data (approach '{Approach.LOCAL}'); "
                                         "resumes an interrupted run of the same configuration")
    train_cmd.add_argument("--fold", type=int, required=True, choices=range(5))

    predict_cmd = commands.add_parser("predict", parents=[common],
                                      help="segment both parties' test sets (and the fold's "
                                           "validation cases) with a trained model; keeps softmax .npz")
    predict_cmd.add_argument("--pair", required=True)
    predict_cmd.add_argument("--approach", default=Approach.LOCAL.value, choices=[a.value for a in Approach],
                             help="approach slug (default: %(default)s)")
    predict_cmd.add_argument("--trained-on", required=True, help="party whose model it is, e.g. a")
    predict_cmd.add_argument("--fold", type=int, required=True, choices=range(5))
    predict_cmd.add_argument("--sets", nargs="+", choices=PREDICTION_SETS, default=list(PREDICTION_SETS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"plan": plan, "train": train, "predict": predict})


if __name__ == "__main__":
    sys.exit(stage_main(main))
