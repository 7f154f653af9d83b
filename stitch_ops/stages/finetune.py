"""``python -m stitch_ops.stages.finetune`` (``stitch-ops baselines finetune``): the DVC stage
``finetune``; ``b→a`` is ``--trained-on b_to_a``: b's model fine-tuned on a's data, with warm-up."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stitch_ops.approaches import Approach, finetuning_party
from stitch_ops.cli_common import common_options
from stitch_ops.config import PARTIES, Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.declare import (FOLD, FOLD_NUMBER, FOLDS, PAIR, PAIRS, PATHS, RAW, ROUTE, ROUTES, SEED,
                                       every_model, preprocessed, scored, trained)
from stitch_ops.stages.options import fold_option, pair_option, route_option
from stitch_ops.stages.plugin import ApproachPlugin
from stitch_ops.stages.spec import Item, Stage, uncached
from stitch_ops.warm_start import stage_main


def run(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.baselines import stages

    params.pair(args.pair)
    stages.finetune(args.pair, finetuning_party(args.trained_on), args.fold, params, base_lr=args.base_lr,
                    progress=args.progress)


def _base_lr_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--base-lr", type=float, default=None,
                        help="base learning rate (default: params finetune.base_lr, a number or 'sweep': the "
                             "sweep's best.json)")
    return parent


def options() -> list[argparse.ArgumentParser]:
    return [common_options(), pair_option(), route_option(), fold_option(), _base_lr_option()]


COMMAND = StageCommand("stitch-ops baselines finetune", options=options, run=run,
                       help="fine-tune the other party's basis model on own data (warm-up schedule)")


BEST_LR_COMMENT = (
    "finetune.base_lr: sweep reads this route's best.json. DVC deps are static, so the\n"
    "dependency is always listed, and the sweep stage below writes a best.json for every\n"
    "fine-tuning route (one saying \"swept\": false for a route outside sweep.pairs/routes):\n"
    "the file always exists, and fine-tuning reruns exactly when its route's sweep result\n"
    "changes (not when another pair's or route's does). With a fixed base_lr that can\n"
    "rerun fine-tuning needlessly after a re-sweep of the same route: the price of one\n"
    "static, precise edge instead of none.")


def stages() -> list[Stage]:
    """The other party's plans applied to each party's data, the learning-rate sweep, and
    fine-tuning on them (every route: a→b, b→a)."""
    a, b = PARTIES
    transferred = [Item(preprocessed(a, b)), Item(preprocessed(b, a))]
    per_route = {"pair": PAIRS, "route": ROUTES, "fold": FOLDS}
    finetune = Approach.FINETUNE
    best_lr = (PATHS.sweep(finetune, ROUTE, FOLD_NUMBER) / "best.json").as_posix()
    outs, summary = scored(finetune, ROUTE)
    return [
        Stage("transfer_plans", "stitch_ops.stages.transfer_plans", f"--pair {PAIR}", {"pair": PAIRS},
              deps=[RAW, *(Item(preprocessed(party)) for party in PARTIES)], params=[Item("nnunet.configuration")],
              outs=transferred),
        Stage("finetune", "stitch_ops.stages.finetune", f"--pair {PAIR} --trained-on {ROUTE} --fold {FOLD}", per_route,
              deps=[Item(best_lr, above=BEST_LR_COMMENT), *transferred, Item(every_model(Approach.LOCAL)), RAW],
              params=[SEED, Item("nnunet"), Item("finetune")], outs=[*trained(finetune, ROUTE), *outs],
              metrics=summary),
        Stage("sweep", "stitch_ops.stages.sweep", f"--pair {PAIR} --trained-on {ROUTE} --fold {FOLD} --only-configured",
              per_route, deps=[*transferred, Item(every_model(Approach.LOCAL)), RAW],
              params=[SEED, Item("nnunet"), Item("finetune.warmup_epochs"), Item("finetune.lr_rule"), Item("sweep")],
              metrics=[uncached(best_lr)],
              comment="Every fine-tuning route has a sweep stage (so that finetune can depend on its best.json);\n"
                      "only those in sweep.pairs x sweep.routes run trials, the others write \"swept\": false."),
    ]


def schedule(params: Params) -> dict[str, Any]:
    from stitch_ops.baselines.config import FinetuneParams  # the baselines package imports torch: not on start-up

    settings = FinetuneParams.from_params(params)
    fixed_lr = {} if isinstance(settings.base_lr, str) else {"base_lr": settings.base_lr}  # "sweep": chosen per route
    return {"epochs": settings.epochs, "iterations_per_epoch": settings.iterations_per_epoch,
            "warmup_epochs": settings.warmup_epochs, **fixed_lr}


PLUGIN = ApproachPlugin(Approach.FINETUNE, stages, schedule)

if __name__ == "__main__":
    sys.exit(stage_main(COMMAND.main))
