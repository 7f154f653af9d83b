"""The vocabulary of stage declarations: the axes as ``dvc.yaml`` templates them, the params
and data every family names, and the paths of a stage's outs (from :mod:`stitch_ops.paths`).

The registry (:mod:`stitch_ops.stages.registry`) and the approach plug-ins
(:mod:`stitch_ops.stages.plugin`) declare their stages with these. Like :mod:`.spec`, this
module only describes stages: it is not a code dep of the stages that import it
(:data:`stitch_ops.stages.deps.DECLARATIONS`), since all it affects is the text of ``dvc.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from stitch_ops import approaches
from stitch_ops.approaches import Approach
from stitch_ops.paths import PairPaths
from stitch_ops.stages.spec import Item, persisted, uncached

PAIR, PARTY, FOLD, C, METHOD, ROUTE = (f"${{item.{axis}}}" for axis in ("pair", "party", "fold", "c", "method", "route"))
FOLD_NUMBER = cast(int, FOLD)
"""The fold axis where :mod:`stitch_ops.paths` expects a fold number (it formats it into the path)."""
PATHS = PairPaths(PAIR)

PAIRS = Item("${pairs}")
PARTIES = Item("[a, b]", note="the method is pairwise")
FOLDS = Item("${folds}")
ROUTES = Item(f"[{', '.join(approaches.FINETUNE_SLUGS)}]")
METHODS = Item("${stitching.methods}")

SEED = Item("seed", note="seeds the initial weights and every epoch")
DEVICE = Item("nnunet.device")
RAW = Item(PATHS.raw_root.as_posix())
SCORES = PATHS.scores(Approach.STITCH, "", 0).parts[0]
"""The whole ``scores/`` tree (selection strategy 3 pools over every pair's scores)."""


def model(approach: str, trained_on: str, fold: int = FOLD_NUMBER) -> str:
    return PATHS.model_dir(approach, trained_on, fold).as_posix()


def predictions(approach: str, trained_on: str, fold: int = FOLD_NUMBER) -> str:
    return PATHS.predictions(approach, trained_on, fold).as_posix()


def metrics(approach: str, trained_on: str, name: str, fold: int = FOLD_NUMBER) -> str:
    return (PATHS.metrics(approach, trained_on, fold) / name).as_posix()


def curve(approach: str, trained_on: str) -> str:
    return PATHS.training_curve(approach, trained_on, FOLD_NUMBER).as_posix()


def preprocessed(party: str, plans_from: str | None = None) -> str:
    return PATHS.preprocessed_root(party, plans_from).as_posix()


def scored(approach: str, trained_on: str) -> tuple[list[Item], list[Item]]:
    """The outs and metrics of a stage that predicts both test sets and scores them."""
    return ([Item(predictions(approach, trained_on)), Item(metrics(approach, trained_on, "cases.csv"))],
            [uncached(metrics(approach, trained_on, "summary.json"))])


def trained(approach: str, trained_on: str, why_persisted: str = "") -> list[Item]:
    """The outs of a stage that trains an nnU-Net: the model (persisted), its budget and curve."""
    return [persisted(model(approach, trained_on), above=why_persisted),
            uncached(metrics(approach, trained_on, "budget.json")),
            uncached(curve(approach, trained_on))]


def every_model(approach: str) -> str:
    """The folder of all of a pair's models of one approach (``models/{pair}/local``)."""
    return Path(model(approach, ROUTE)).parents[1].as_posix()


def every_prediction(approach: str) -> str:
    """The folder of all of a pair's predictions of one approach (``predictions/{pair}/local``)."""
    return Path(predictions(approach, ROUTE)).parents[1].as_posix()
