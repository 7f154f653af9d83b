"""``python -m stitch_ops.stages.stitch_select`` (``stitch-ops stitching select``): the DVC stages
``stitch_select`` and ``stitch_select_finetuned`` (``--finetuned``)."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import stitch_network_options
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.stages import select

    params.pair(args.pair)
    select(params, args.pair, args.c, args.method, args.fold, args.progress, finetuned=args.finetuned)


COMMAND = StageCommand(
    "stitch-ops stitching select", options=stitch_network_options, run=run,
    help="score every position k on c's validation cases (one MLflow run each), select k (strategy 1), "
         "export the stitch-ensemble and predict both test sets")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
