"""``python -m stitch_ops.stages.finetune`` (``stitch-ops baselines finetune``): the DVC stage
``finetune``; ``b→a`` is ``--trained-on b_to_a``: b's model fine-tuned on a's data, with warm-up."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.approaches import finetuning_party
from stitch_ops.cli_common import common_options
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import fold_option, pair_option, route_option


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.finetune(args.pair, finetuning_party(args.trained_on), args.fold, params, base_lr=args.base_lr,
                    progress=args.progress)


def _base_lr_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--base-lr", type=float, default=None,
                        help="base learning rate (default: params finetune.base_lr, a number or 'sweep': the "
                             "sweep's best.json)")
    return parent


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), route_option(), fold_option(), _base_lr_option()]


COMMAND = StageCommand("stitch-ops baselines finetune", options=options, run=run,
                       help="fine-tune the other party's basis model on own data (warm-up schedule)")

if __name__ == "__main__":
    sys.exit(COMMAND.main())
