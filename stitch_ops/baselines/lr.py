"""Which base learning rate fine-tuning uses, and where it came from.

``finetune.base_lr`` is a number (*fixed*, the default ``1e-3``) or ``sweep``: then the
fine-tuning of (pair, route, fold) takes ``best_base_lr`` from the sweep's
``sweeps/{pair}/finetune/{route}/fold_k/best.json``, which the ``sweep`` stage selected on
the fine-tuning party's **validation** cases only. How the sweep selected it is in the
record's ``selected_by``:

- ``best_validation_dice`` (``finetune.lr_rule: null``): Ray Tune + Optuna's TPE sampler
  over ``[sweep.lr_min, sweep.lr_max]``, the trial with the highest validation Dice;
  fine-tuning reports the source ``sweep``;
- ``smallest_progressing_power_of_ten`` (``finetune.lr_rule``): the paper's rule. Every
  power of ten in ``[sweep.lr_min, sweep.lr_max]`` is one trial (the same trial function,
  a grid instead of Optuna); the choice is the *smallest* rate whose validation **Dice**
  (on the fine-tuning party's validation cases, not the loss: Dice is what the sweep
  already measures on whole cases, the loss only exists on nnU-Net's sampled patches)
  is above the starting model's, i.e. the other party's basis model before fine-tuning.
  Fine-tuning reports the source ``rule``.

The ``sweep`` stage writes a ``best.json`` for *every* fine-tuning route, one that says
``"swept": false`` for a route not in ``sweep.pairs``/``sweep.routes``; that keeps the
file a static DVC dependency of ``finetune`` (see dvc.yaml) and lets fine-tuning say
exactly which route to add when ``base_lr: sweep`` finds none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from stitch_ops.approaches import finetuned
from stitch_ops.baselines.config import SMALLEST_PROGRESSING_POWER_OF_TEN, SWEEP, FinetuneParams, SweepParams
from stitch_ops.config import ConfigError, Params
from stitch_ops.errors import UserError
from stitch_ops.outputs import read_json
from stitch_ops.paths import PairPaths

BEST_JSON = "best.json"
BEST_VALIDATION_DICE = "best_validation_dice"
"""``selected_by`` of an Optuna sweep: the trial with the highest validation Dice."""


class LrSource(StrEnum):
    """Where fine-tuning's base learning rate came from (``budget.json``'s ``base_lr_source``)."""

    FIXED = "fixed"
    SWEEP = "sweep"
    RULE = "rule"


class ResolvedLr(NamedTuple):
    """The base learning rate one fine-tuning uses and its source."""

    base_lr: float
    source: LrSource


def powers_of_ten(lr_min: float, lr_max: float) -> tuple[float, ...]:
    """The powers of ten in ``[lr_min, lr_max]``, ascending (``1e-4, 1e-2`` -> ``1e-4, 1e-3, 1e-2``).

    Raises:
        ConfigError: the range holds no power of ten.
    """
    low, high = math.ceil(math.log10(lr_min) - 1e-9), math.floor(math.log10(lr_max) + 1e-9)
    if low > high:
        raise ConfigError(f"'finetune.lr_rule: {SMALLEST_PROGRESSING_POWER_OF_TEN}' needs a power of ten in "
                          f"[sweep.lr_min, sweep.lr_max] = [{lr_min:g}, {lr_max:g}]; widen the range")
    return tuple(float(f"1e{e}") for e in range(low, high + 1))


def smallest_progressing(improvements: Sequence[tuple[float, float]]) -> float | None:
    """The paper's rule: the smallest learning rate whose improvement is positive.

    Args:
        improvements: ``(learning rate, improvement over the starting model)`` per trial,
            in any order; a NaN improvement (no score) never counts as progress.

    Returns:
        The learning rate, or None when no rate made progress.
    """
    progressing = [lr for lr, gain in improvements if math.isfinite(gain) and gain > 0]
    return min(progressing) if progressing else None


def not_swept_record(pair: str, trained_on: str, fold: int) -> dict[str, Any]:
    """``best.json`` of a route the sweep does not cover (deterministic: its hash stays put)."""
    return {"pair": pair, "trained_on": trained_on, "fold": fold, "swept": False,
            "note": "not swept: this pair and route are not in sweep.pairs x sweep.routes"}


def source_of(record: dict[str, Any]) -> LrSource:
    """The source a sweep record gives fine-tuning: ``rule`` if the paper's rule picked it."""
    return LrSource.RULE if record.get("selected_by") == SMALLEST_PROGRESSING_POWER_OF_TEN else LrSource.SWEEP


def _missing_sweep_route(sweep: SweepParams, pair: str, route: str) -> str:
    """What to add to ``sweep.pairs``/``sweep.routes`` so the sweep covers ``route`` of ``pair`` ('' if nothing)."""
    needed = [f"add '{value}' to sweep.{key}" for key, value, known in
              (("pairs", pair, sweep.pairs), ("routes", route, sweep.routes)) if value not in known]
    return " and ".join(needed)


def resolve_base_lr(paths: PairPaths, party: str, fold: int, params: Params) -> ResolvedLr:
    """The base learning rate of fine-tuning ``other→party`` in ``fold``, and its source.

    Raises:
        UserError: ``base_lr`` is ``sweep`` but the route was not swept (naming what to add
            to ``sweep.pairs``/``sweep.routes``), its ``best.json`` is missing, or was picked
            differently from what ``finetune.lr_rule`` now asks (rerun the sweep).
    """
    settings = FinetuneParams.from_params(params)
    if settings.base_lr != SWEEP:
        return ResolvedLr(float(settings.base_lr), LrSource.FIXED)
    model = finetuned(party)
    route = model.trained_on
    path = paths.sweep(model.approach, route, fold) / BEST_JSON
    stage = f"`dvc repro sweep@{paths.pair}-{route}-{fold}`"
    missing = _missing_sweep_route(SweepParams.from_params(params), paths.pair, route)
    if missing:
        raise UserError(f"finetune.base_lr is 'sweep' but the sweep does not cover {paths.pair} {route}: {missing} "
                        f"(or set finetune.base_lr to a number), then run {stage}")
    if not path.is_file():
        raise UserError(f"finetune.base_lr is 'sweep' but there is no sweep result {path}; run {stage} first")
    record = read_json(path, hint="rerun the sweep stage")
    if not record.get("swept", True):
        raise UserError(f"{path} says {paths.pair} {route} was not swept, but sweep.pairs/sweep.routes now cover "
                        f"it; rerun {stage}")
    wanted = settings.lr_rule or BEST_VALIDATION_DICE
    if record.get("selected_by", BEST_VALIDATION_DICE) != wanted:
        raise UserError(f"{path} was selected by {record.get('selected_by')!r} but finetune.lr_rule asks for "
                        f"{wanted!r}; rerun {stage}")
    base_lr = record.get("best_base_lr")
    if not isinstance(base_lr, int | float) or not 0 < base_lr < 1:
        raise UserError(f"{path} has no learning rate in (0, 1) under 'best_base_lr' (got {base_lr!r}); "
                        f"rerun {stage}")
    return ResolvedLr(float(base_lr), source_of(record))


__all__ = ["BEST_JSON", "LrSource", "ResolvedLr", "not_swept_record", "powers_of_ten", "resolve_base_lr",
           "smallest_progressing", "source_of"]
