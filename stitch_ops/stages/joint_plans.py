"""``python -m stitch_ops.stages.joint_plans`` (``stitch-ops baselines joint-plans``): the DVC stage
``joint_plans``."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.cli_common import common_options
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import pair_option
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines.plans import prepare_joint

    params.pair(args.pair)
    prepare_joint(args.pair, params.nnunet.configuration, progress=args.progress)


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option()]


COMMAND = StageCommand("stitch-ops baselines joint-plans", options=options, run=run,
                       help="plans from both parties' combined fingerprint; preprocess each party and pool them")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
