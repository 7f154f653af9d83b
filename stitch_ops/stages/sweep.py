"""``python -m stitch_ops.stages.sweep`` (``stitch-ops baselines sweep``): the DVC stage ``sweep``, a
Ray Tune + Optuna search of the fine-tuning learning rate on validation data."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.approaches import finetuning_party
from stitch_ops.cli_common import common_options
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import fold_option, pair_option, route_option
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines.sweep import run_sweep

    params.pair(args.pair)
    run_sweep(args.pair, finetuning_party(args.trained_on), args.fold, params, params_file=args.params,
              progress=args.progress, only_configured=args.only_configured)


def _only_configured_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--only-configured", action="store_true",
                        help="the DVC stage: a route outside sweep.pairs/sweep.routes is not swept, its best.json "
                             "says so")
    return parent


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), route_option(), fold_option(), _only_configured_option()]


COMMAND = StageCommand("stitch-ops baselines sweep", options=options, run=run,
                       help="Ray Tune + Optuna sweep of the fine-tuning learning rate on the fine-tuning party's "
                            "validation data (finetune.lr_rule: the paper's power-of-ten rule)")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
