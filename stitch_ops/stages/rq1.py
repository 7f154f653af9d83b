"""``python -m stitch_ops.stages.rq1`` (``stitch-ops stitching rq1``): the DVC stage ``rq1``."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.cli_common import common_options
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import c_option, pair_option
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.rq1 import run as run_rq1

    params.pair(args.pair)
    run_rq1(params, args.pair, args.c, args.progress)


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), c_option()]


COMMAND = StageCommand(
    "stitch-ops stitching rq1", options=options, run=run,
    help="RQ1 on fold 0: sample networks with 0..all stitches active, both methods, scored on c's "
         "validation cases (rq1.csv, rq1.png)")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
