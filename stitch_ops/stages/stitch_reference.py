"""``python -m stitch_ops.stages.stitch_reference`` (``stitch-ops stitching reference``): the DVC
stages ``stitch_reference`` and ``stitch_reference_finetuned`` (``--finetuned``)."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.cli_common import common_options
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import c_option, finetuned_option, fold_option, pair_option
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.stitching.strategies import reference

    params.pair(args.pair)
    reference(params, args.pair, args.c, args.fold, args.progress, finetuned=args.finetuned)


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), c_option(), fold_option(), finetuned_option()]


COMMAND = StageCommand(
    "stitch-ops stitching reference", options=options, run=run,
    help="the no-stitch reference: both parents on c's preprocessing, averaged; predict both test sets "
         "and c's validation cases")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
