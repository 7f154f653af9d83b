"""``python -m stitch_ops.stages.federated`` (``stitch-ops baselines federated``): the DVC stage
``federated`` (``a‖b``: FedAvg with one Ray actor per party)."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.cli_common import common_options
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import fold_option, pair_option


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.federated(args.pair, args.fold, params, progress=args.progress)


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), fold_option()]


COMMAND = StageCommand("stitch-ops baselines federated", options=options, run=run,
                       help="FedAvg over one Ray actor per party (params 'federated')")

if __name__ == "__main__":
    sys.exit(COMMAND.main())
