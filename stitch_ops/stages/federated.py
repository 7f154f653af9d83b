"""``python -m stitch_ops.stages.federated`` (``stitch-ops baselines federated``): the DVC stage
``federated`` (``a‖b``: FedAvg with one Ray actor per party)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stitch_ops import approaches
from stitch_ops.cli_common import common_options
from stitch_ops.config import PARTIES, Params
from stitch_ops.paths import JOINT
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.declare import FOLD, FOLDS, PAIR, PAIRS, RAW, SEED, preprocessed, scored, trained
from stitch_ops.stages.options import fold_option, pair_option
from stitch_ops.stages.plugin import ApproachPlugin
from stitch_ops.stages.spec import Item, Stage
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.federated(args.pair, args.fold, params, progress=args.progress)


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), fold_option()]


COMMAND = StageCommand("stitch-ops baselines federated", options=options, run=run,
                       help="FedAvg over one Ray actor per party (params 'federated')")


def stages() -> list[Stage]:
    """The joint plans (both parties' data under plans from their combined fingerprint, and the
    pooled dataset that ``merged`` trains on), then FedAvg on them."""
    federated, merged = approaches.federated(), approaches.merged()
    joint = [Item(preprocessed(party, JOINT)) for party in PARTIES]
    outs, summary = scored(federated.approach, federated.trained_on)
    return [
        Stage("joint_plans", "stitch_ops.stages.joint_plans", f"--pair {PAIR}", {"pair": PAIRS},
              deps=[RAW, *(Item(preprocessed(party)) for party in PARTIES)], params=[Item("nnunet.configuration")],
              outs=[*joint, Item(preprocessed(merged.approach))]),
        Stage("federated", "stitch_ops.stages.federated", f"--pair {PAIR} --fold {FOLD}", {"pair": PAIRS, "fold": FOLDS},
              deps=[*joint, RAW], params=[SEED, Item("nnunet"), Item("federated")],
              outs=[*trained(federated.approach, federated.trained_on, "persisted: a crashed round resumes from the "
                                                                       "last completed one (global/latest.pth)"),
                    *outs], metrics=summary),
    ]


def schedule(params: Params) -> dict[str, Any]:
    from stitch_ops.baselines.config import FederatedParams  # the baselines package imports torch: not on start-up

    settings = FederatedParams.from_params(params)
    return {"epochs": settings.rounds, "iterations_per_epoch": settings.iterations_per_epoch, "rounds": settings.rounds}


PLUGIN = ApproachPlugin(approaches.Approach.FEDERATED, stages, schedule)

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
