"""``python -m stitch_ops.stages.stitch_train`` (``stitch-ops stitching train``): the DVC stages
``stitch_train`` and ``stitch_train_finetuned`` (``--finetuned``).

A module of its own so that training stitches depends on the code that trains them, not on the
selection strategies' or RQ1's (an edit to a figure would otherwise retrain every stitch).
"""

from __future__ import annotations

import argparse
import sys

from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import stitch_network_options
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.stages import train

    params.pair(args.pair)
    train(params, args.pair, args.c, args.method, args.fold, args.progress, finetuned=args.finetuned)


COMMAND = StageCommand(
    "stitch-ops stitching train", options=stitch_network_options, run=run,
    help="train the stitches between the two parents (resumable); with stitching.search: optuna, a Ray Tune "
         "+ Optuna search of (k, learning rate) on c's validation cases first")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
