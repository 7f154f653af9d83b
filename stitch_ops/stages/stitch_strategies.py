"""``python -m stitch_ops.stages.stitch_strategies`` (``stitch-ops stitching strategies``): the DVC
stages ``stitch_strategies`` and ``stitch_strategies_finetuned`` (``--finetuned``)."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import stitch_network_options
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.strategies import strategies

    params.pair(args.pair)
    strategies(params, args.pair, args.c, args.method, args.fold, args.progress, finetuned=args.finetuned)


COMMAND = StageCommand(
    "stitch-ops stitching strategies", options=stitch_network_options, run=run,
    help="selection strategies 1-3 from every scored position (scores/); predict the stitch-ensembles "
         "strategies 2 and 3 choose; write positions.csv, no_stitch.json, selection.json")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
