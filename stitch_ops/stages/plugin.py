"""Approach plug-ins: every baseline approach is one module ``stitch_ops/stages/<approach>.py``
holding its command line (``COMMAND``), what it runs, and a ``PLUGIN`` that declares its stages.

A plug-in is found by name, as nnU-Net finds its trainers: every module of this package with a
``PLUGIN`` is one, in the order of the approach table (:class:`~stitch_ops.approaches.Approach`).
Nothing else lists them. Registering one feeds:

- ``dvc.yaml``: its stages (:func:`stitch_ops.stages.registry.stages`);
- ``stitch-ops baselines``: the commands its stages run (:func:`commands`);
- :func:`planned_schedules` and :func:`planned_budgets`: its schedule, for an approach that
  trains, which the bundle definitions' ``train.json`` values also come from;
- the report's tables and the MLflow tags: through its model ids in
  :func:`stitch_ops.approaches.all_models` (the approach table, in the core layer, where
  evaluation can read it).

Adding an approach therefore touches its module, its entry in ``approaches.py``, the
regenerated ``dvc.yaml`` and its test (docs/ARCHITECTURE.md, "Adding an approach").

Like :mod:`.spec` and :mod:`.declare`, this module only describes stages: it is not a code dep
of the stages whose modules import it (:data:`stitch_ops.stages.deps.DECLARATIONS`). Only commands
that are not stages call it (``stitch-ops baselines``, ``stitch-ops dvc-yaml``,
``stitch-ops bundle definitions``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stitch_ops.approaches import Approach
from stitch_ops.config import Params
from stitch_ops.stages.command import StageCommand
from stitch_ops.stages.spec import Stage


@dataclass(frozen=True)
class PlannedBudget:
    """The schedule an approach gets in a profile: optimizer steps per party."""

    approach: str
    epochs: int
    iterations_per_epoch: int

    @property
    def iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch


@dataclass(frozen=True)
class ApproachPlugin:
    """One approach's stages.

    Attributes:
        approach: the approach it makes (its stages are listed in this approach's place).
        stages: its stage declarations, in ``dvc.yaml`` order; the first may be a stage the
            approach needs before it trains (the plans it trains on).
        schedule: for an approach that trains an nnU-Net, what its ``budget.json`` will record,
            resolved from the params: ``epochs`` and ``iterations_per_epoch`` per party
            (federated: rounds), and where it has them ``base_lr``, ``warmup_epochs``,
            ``rounds``; ``None`` for one that does not train.
    """

    approach: Approach
    stages: Callable[[], list[Stage]]
    schedule: Callable[[Params], dict[str, Any]] | None = None

    def commands(self) -> list[StageCommand]:
        """The command line of each entry module its stages run, once each."""
        entries = dict.fromkeys(stage.entry for stage in self.stages())
        return [importlib.import_module(entry).COMMAND for entry in entries]


def plugins() -> list[ApproachPlugin]:
    """Every approach plug-in of this package, in the order of the approach table."""
    package = importlib.import_module(__package__)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        plugin = getattr(importlib.import_module(f"{__package__}.{info.name}"), "PLUGIN", None)
        if isinstance(plugin, ApproachPlugin):
            found.append(plugin)
    order = list(Approach)
    return sorted(found, key=lambda plugin: order.index(plugin.approach))


def commands() -> list[StageCommand]:
    """The ``stitch-ops baselines`` subcommands: every plug-in's commands."""
    return [command for plugin in plugins() for command in plugin.commands()]


def planned_schedules(params: Params) -> dict[str, dict[str, Any]]:
    """What each approach that trains an nnU-Net is planned to train with (``budget.json`` keys),
    resolved from ``params``: the basis models' (``local``) and every plug-in's schedule."""
    schedules = {Approach.LOCAL.value: {"epochs": params.nnunet.epochs,
                                        "iterations_per_epoch": params.nnunet.iterations_per_epoch}}
    return schedules | {plugin.approach.value: plugin.schedule(params) for plugin in plugins() if plugin.schedule}


def planned_budgets(params: Params) -> dict[str, PlannedBudget]:
    """Steps per party of every approach that trains an nnU-Net, resolved from ``params``.

    ``local`` is the basis model; ``finetune`` counts only the fine-tuning (on top of the
    other party's basis model); ``federated`` counts one party's steps over all rounds.
    """
    return {approach: PlannedBudget(approach, schedule["epochs"], schedule["iterations_per_epoch"])
            for approach, schedule in planned_schedules(params).items()}
