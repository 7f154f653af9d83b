"""``python -m stitch_ops.stages.merged`` (``stitch-ops baselines merged``): the DVC stage ``merged``
(``a+b``: one model on the pooled data)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stitch_ops import approaches
from stitch_ops.cli_common import common_options
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.declare import FOLD, FOLDS, PAIR, PAIRS, RAW, SEED, preprocessed, scored, trained
from stitch_ops.stages.options import fold_option, pair_option
from stitch_ops.stages.plugin import ApproachPlugin
from stitch_ops.stages.spec import Item, Stage
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.merged(args.pair, args.fold, params, progress=args.progress)


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), fold_option()]


COMMAND = StageCommand("stitch-ops baselines merged", options=options, run=run,
                       help="train one nnU-Net on the pooled data")


def stages() -> list[Stage]:
    """One nnU-Net on the pooled dataset that ``joint_plans`` (the federated plug-in) writes."""
    merged = approaches.merged()
    outs, summary = scored(merged.approach, merged.trained_on)
    return [Stage("merged", "stitch_ops.stages.merged", f"--pair {PAIR} --fold {FOLD}", {"pair": PAIRS, "fold": FOLDS},
                  deps=[Item(preprocessed(merged.approach)), RAW], params=[SEED, Item("nnunet"), Item("merged")],
                  outs=[*trained(merged.approach, merged.trained_on), *outs], metrics=summary)]


def schedule(params: Params) -> dict[str, Any]:
    from stitch_ops.baselines.config import MergedParams  # the baselines package imports torch: not on start-up

    settings = MergedParams.from_params(params)
    return {"epochs": settings.epochs, "iterations_per_epoch": settings.iterations_per_epoch}


PLUGIN = ApproachPlugin(approaches.Approach.MERGED, stages, schedule)

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
