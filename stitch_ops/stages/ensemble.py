"""``python -m stitch_ops.stages.ensemble`` (``stitch-ops baselines ensemble``): the DVC stages
``ensemble`` (``a&b``) and ``ensemble_finetuned`` (``a&b→a``: ``--finetuned-for a``)."""

from __future__ import annotations

import argparse
import sys

from stitch_ops.cli_common import common_options
from stitch_ops.config import PARTIES, Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.options import fold_option, pair_option


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.ensemble(args.pair, args.fold, params, finetuned_for=args.finetuned_for, progress=args.progress)


def _finetuned_for_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--finetuned-for", choices=PARTIES, default=None,
                        help="a&b→PARTY: PARTY's basis model with the other's model fine-tuned on PARTY's data")
    return parent


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), fold_option(), _finetuned_for_option()]


COMMAND = StageCommand("stitch-ops baselines ensemble", options=options, run=run,
                       help="average the softmax of two models' test predictions (a&b or a&b→a)")

if __name__ == "__main__":
    sys.exit(COMMAND.main())
