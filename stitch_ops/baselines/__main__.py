"""``python -m stitch_ops.baselines``: the baseline approaches' stages of ``dvc.yaml``.

- ``transfer-plans``: preprocess each party's data with the other party's plans (fine-tuning);
- ``joint-plans``: plans from both parties' combined fingerprint, each party's data
  preprocessed with them, and the pooled dataset (federated, merged);
- ``finetune``: ``b→a`` (``--trained-on b_to_a``): b's model fine-tuned on a's data, with warm-up;
- ``ensemble``: ``a&b``, or ``a&b→a`` with ``--finetuned-for a``;
- ``federated``: ``a‖b``, FedAvg with one Ray actor per party;
- ``merged``: ``a+b``, one model on the pooled data;
- ``sweep``: Ray Tune + Optuna search of the fine-tuning learning rate (validation data).

Every command that makes a model also predicts both parties' test sets and scores them
(``metrics/``, the model's MLflow run), as ``python -m stitch_ops.evaluation`` would.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from stitch_ops.approaches import FINETUNE_SLUGS, finetuning_party
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params

logger = logging.getLogger("stitch_ops.baselines")


def transfer_plans(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines.plans import prepare_transferred

    params.pair(args.pair)
    for party in args.party or PARTIES:
        prepare_transferred(args.pair, party, params.nnunet.configuration, progress=args.progress)


def joint_plans(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines.plans import prepare_joint

    params.pair(args.pair)
    prepare_joint(args.pair, params.nnunet.configuration, progress=args.progress)


def finetune(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.finetune(args.pair, finetuning_party(args.trained_on), args.fold, params, base_lr=args.base_lr,
                    progress=args.progress)


def ensemble(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.ensemble(args.pair, args.fold, params, finetuned_for=args.finetuned_for, progress=args.progress)


def federated(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.federated(args.pair, args.fold, params, progress=args.progress)


def merged(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.merged(args.pair, args.fold, params, progress=args.progress)


def sweep(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines.sweep import run_sweep

    params.pair(args.pair)
    run_sweep(args.pair, finetuning_party(args.trained_on), args.fold, params, params_file=args.params,
              progress=args.progress, only_configured=args.only_configured)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops baselines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    pair = argparse.ArgumentParser(add_help=False)
    pair.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    fold = argparse.ArgumentParser(add_help=False)
    fold.add_argument("--fold", type=int, required=True, choices=range(5))

    transfer = commands.add_parser("transfer-plans", parents=[common, pair],
                                   help="preprocess each party's data with the other party's plans (for fine-tuning)")
    transfer.add_argument("--party", nargs="+", choices=PARTIES, default=None,
                          help="only these parties' data (default: both)")
    commands.add_parser("joint-plans", parents=[common, pair],
                        help="plans from both parties' combined fingerprint; preprocess each party and pool them")
    route = argparse.ArgumentParser(add_help=False)
    route.add_argument("--trained-on", required=True, choices=FINETUNE_SLUGS,
                       help="a_to_b: a's basis model fine-tuned on b's data; b_to_a: the reverse")
    ft = commands.add_parser("finetune", parents=[common, pair, route, fold],
                             help="fine-tune the other party's basis model on own data (warm-up schedule)")
    ft.add_argument("--base-lr", type=float, default=None,
                    help="base learning rate (default: params finetune.base_lr, a number or 'sweep': the "
                         "sweep's best.json)")
    ens = commands.add_parser("ensemble", parents=[common, pair, fold],
                              help="average the softmax of two models' test predictions (a&b or a&b→a)")
    ens.add_argument("--finetuned-for", choices=PARTIES, default=None,
                     help="a&b→PARTY: PARTY's basis model with the other's model fine-tuned on PARTY's data")
    commands.add_parser("federated", parents=[common, pair, fold],
                        help="FedAvg over one Ray actor per party (params 'federated')")
    commands.add_parser("merged", parents=[common, pair, fold], help="train one nnU-Net on the pooled data")
    sw = commands.add_parser("sweep", parents=[common, pair, route, fold],
                             help="Ray Tune + Optuna sweep of the fine-tuning learning rate on the fine-tuning "
                                  "party's validation data (finetune.lr_rule: the paper's power-of-ten rule)")
    sw.add_argument("--only-configured", action="store_true",
                    help="the DVC stage: a route outside sweep.pairs/sweep.routes is not swept, its best.json "
                         "says so")
    return parser


HANDLERS = {"transfer-plans": transfer_plans, "joint-plans": joint_plans, "finetune": finetune,
            "ensemble": ensemble, "federated": federated, "merged": merged, "sweep": sweep}


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, HANDLERS)


if __name__ == "__main__":
    sys.exit(main())
