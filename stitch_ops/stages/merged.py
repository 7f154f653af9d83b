"""``python -m stitch_ops.stages.merged`` (``stitch-ops baselines merged``): the DVC stage ``merged``
(``a+b``: one model on the pooled data)."""

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
    stages.merged(args.pair, args.fold, params, progress=args.progress)


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), fold_option()]


COMMAND = StageCommand("stitch-ops baselines merged", options=options, run=run,
                       help="train one nnU-Net on the pooled data")

if __name__ == "__main__":
    sys.exit(COMMAND.main())
