"""``python -m stitch_ops.stages.ensemble`` (``stitch-ops baselines ensemble``): the DVC stages
``ensemble`` (``a&b``) and ``ensemble_finetuned`` (``a&b→a``: ``--finetuned-for a``)."""

from __future__ import annotations

import argparse
import sys

from stitch_ops import approaches
from stitch_ops.approaches import Approach
from stitch_ops.cli_common import common_options
from stitch_ops.config import PARTIES, Params
from stitch_ops.stages import declare
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.declare import FOLD, FOLDS, PAIR, PAIRS, PARTY, RAW, every_prediction, scored
from stitch_ops.stages.options import fold_option, pair_option
from stitch_ops.stages.plugin import ApproachPlugin
from stitch_ops.stages.spec import Item, Stage
from stitch_ops.warm_start import stage_main


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


def stages() -> list[Stage]:
    """``a&b`` per fold, and ``a&b→p`` per party and fold: no training, the members' predictions averaged."""
    labels = Item(RAW.text, note="dataset.json, and the labels it is scored on")
    basis = Item(every_prediction(Approach.LOCAL))
    both, own = approaches.ensemble(), approaches.ensemble_finetuned(PARTY)
    both_outs, both_summary = scored(both.approach, both.trained_on)
    own_outs, own_summary = scored(own.approach, own.trained_on)
    return [
        Stage("ensemble", "stitch_ops.stages.ensemble", f"--pair {PAIR} --fold {FOLD}", {"pair": PAIRS, "fold": FOLDS},
              deps=[basis, labels], outs=both_outs, metrics=both_summary),
        Stage("ensemble_finetuned", "stitch_ops.stages.ensemble", f"--pair {PAIR} --fold {FOLD} --finetuned-for {PARTY}",
              {"pair": PAIRS, "party": declare.PARTIES, "fold": FOLDS},
              deps=[basis, Item(every_prediction(Approach.FINETUNE)), labels], outs=own_outs, metrics=own_summary),
    ]


PLUGIN = ApproachPlugin(Approach.ENSEMBLE, stages)

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
