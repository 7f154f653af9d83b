"""``python -m stitch_ops.stages.transfer_plans`` (``stitch-ops baselines transfer-plans``): the DVC
stage ``transfer_plans``. Planning needs nnU-Net's planner only, not the training, ensembling or
sweeping code of the other baseline stages."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.cli_common import common_options
from stitch_ops.config import PARTIES, Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import pair_option
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines.plans import prepare_transferred

    params.pair(args.pair)
    for party in args.party or PARTIES:
        prepare_transferred(args.pair, party, params.nnunet.configuration, progress=args.progress)


def _party_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--party", nargs="+", choices=PARTIES, default=None,
                        help="only these parties' data (default: both)")
    return parent


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), _party_option()]


COMMAND = StageCommand("stitch-ops baselines transfer-plans", options=options, run=run,
                       help="preprocess each party's data with the other party's plans (for fine-tuning)")

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
