"""Typed views of the ``params.yaml`` sections of the baselines: ``finetune``, ``federated``,
``merged`` and ``sweep``, loaded with :func:`stitch_ops.config.load_section` by each
class's ``from_params``. Each validates itself when built, so a bad value fails before
any training starts, naming the key.

**Equal budgets.** Every approach that trains an nnU-Net gets the basis models' schedule
(``nnunet.epochs`` × ``nnunet.iterations_per_epoch``): a schedule key left ``null`` in
``finetune``, ``federated`` or ``merged`` means "the same as the basis models", and
``from_params`` resolves it, so the budgets cannot drift apart when a profile changes the
basis schedule. A profile that must be shorter shortens ``nnunet`` and all follow;
:func:`stitch_ops.stages.plugin.planned_budgets` states the result per approach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self

from stitch_ops.approaches import FINETUNE_SLUGS
from stitch_ops.config import ConfigError, NnUNetSchedule, Params, positive_int, load_section


@dataclass(frozen=True)
class _BasisSchedule:
    """A section whose ``null`` schedule keys mean "the basis models' value" (equal budgets).

    Subclasses name their ``params.yaml`` section and map each schedule key to the
    ``nnunet`` key it defaults to; the keys are checked when built and resolved by
    :meth:`from_params`.
    """

    SECTION: ClassVar[str]
    BASIS_KEYS: ClassVar[dict[str, str]]  # own key -> the nnunet key it defaults to

    def __post_init__(self) -> None:
        for key in self.BASIS_KEYS:
            if getattr(self, key) is not None:
                positive_int(self.SECTION, key, getattr(self, key))

    @classmethod
    def from_params(cls, params: Params) -> Self:
        """The section with ``null`` schedule keys resolved to the basis schedule."""
        settings = load_section(params, cls.SECTION, cls)
        basis: NnUNetSchedule = params.nnunet
        return replace(settings, **{key: getattr(basis, source) for key, source in cls.BASIS_KEYS.items()
                                    if getattr(settings, key) is None})


def _learning_rate(section: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"params '{section}.{key}' must be a learning rate in (0, 1), got {value!r}")
    return float(value)


SWEEP = "sweep"
"""``finetune.base_lr: sweep``: take the rate from the sweep's ``best.json``."""
SMALLEST_PROGRESSING_POWER_OF_TEN = "smallest_progressing_power_of_ten"
LR_RULES = (SMALLEST_PROGRESSING_POWER_OF_TEN,)
"""Values of ``finetune.lr_rule`` besides ``null``."""


@dataclass(frozen=True)
class FinetuneParams(_BasisSchedule):
    """Fine-tuning another party's model on own data (``a→b``).

    Attributes:
        base_lr: the new base learning rate; the paper uses the smallest power of ten that
            still makes progress (``1e-3``), well below nnU-Net's ``1e-2``. ``"sweep"``: the
            rate the ``sweep`` stage picked for this (pair, route, fold) on the fine-tuning
            party's validation cases (``sweeps/.../best.json``; see :mod:`~stitch_ops.baselines.lr`).
        lr_rule: how the sweep picks its rate: ``null`` (the default) the Optuna trial with
            the best validation Dice; ``smallest_progressing_power_of_ten`` the paper's rule
            (a grid of powers of ten, the smallest whose validation Dice beats the starting
            model's). It changes what ``sweep`` writes, and so what ``base_lr: sweep`` uses.
        warmup_epochs: epochs of linear warm-up from the last non-zero learning rate of the
            original model's polynomial schedule to ``base_lr`` (0: none).
        epochs, iterations_per_epoch: the fine-tuning schedule (polynomial decay from
            ``base_lr`` after the warm-up); ``null`` (the default): the basis models'.
    """

    SECTION = "finetune"
    BASIS_KEYS = {"epochs": "epochs", "iterations_per_epoch": "iterations_per_epoch"}

    base_lr: float | str = 1e-3
    warmup_epochs: int = 1
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    lr_rule: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.base_lr, str) and self.base_lr != SWEEP:
            try:  # YAML reads 1e-3 as a string
                object.__setattr__(self, "base_lr", float(self.base_lr))
            except ValueError:
                raise ConfigError(f"params 'finetune.base_lr' must be a number in (0, 1) or '{SWEEP}', "
                                  f"got {self.base_lr!r}") from None
        if self.base_lr != SWEEP:
            object.__setattr__(self, "base_lr", _learning_rate("finetune", "base_lr", self.base_lr))
        if self.lr_rule is not None and self.lr_rule not in LR_RULES:
            raise ConfigError(f"'finetune.lr_rule' must be null or one of {list(LR_RULES)}, got {self.lr_rule!r}")
        if not isinstance(self.warmup_epochs, int) or isinstance(self.warmup_epochs, bool) or self.warmup_epochs < 0:
            raise ConfigError(f"'finetune.warmup_epochs' must be a non-negative integer, got {self.warmup_epochs!r}")
        if self.epochs is not None and not self.warmup_epochs < self.epochs:
            raise ConfigError(f"'finetune.warmup_epochs' must be an integer in [0, epochs={self.epochs}), "
                              f"got {self.warmup_epochs!r}")


@dataclass(frozen=True)
class FederatedParams(_BasisSchedule):
    """Federated averaging (``a‖b``) with one Ray actor per party.

    Attributes:
        rounds: communication rounds; one round is one nnU-Net epoch on each party's own
            data followed by the weighted average of the weights. ``null`` (the default):
            ``nnunet.epochs``, so each party trains as many iterations as a basis model.
        iterations_per_epoch: training iterations of a party in one round (``null``: the
            basis models').
        address: ``null`` starts Ray on this machine (``ray.init()``, ``cpus_per_party``
            CPUs per party actor); ``"head:6379"`` (what ``ray start --head`` prints) or
            ``"auto"`` joins an existing cluster unchanged (the driver disconnects
            afterwards; the cluster keeps running).
        cpus_per_party: CPUs Ray reserves for each party actor.
        pin_parties: on a cluster, run party p's actor only on a node that offers the
            custom resource ``party_<p>`` (the node that holds p's data).
    """

    SECTION = "federated"
    BASIS_KEYS = {"rounds": "epochs", "iterations_per_epoch": "iterations_per_epoch"}

    rounds: int | None = None
    iterations_per_epoch: int | None = None
    address: str | None = None
    cpus_per_party: int = 1
    pin_parties: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int("federated", "cpus_per_party", self.cpus_per_party)
        if self.address is not None and not isinstance(self.address, str):
            raise ConfigError(f"'federated.address' must be null, 'auto' or a Ray address, got {self.address!r}")


@dataclass(frozen=True)
class MergedParams(_BasisSchedule):
    """Training on the pooled data of both parties (``a+b``); ``null`` schedule keys (the
    default): the basis models' epochs and iterations."""

    SECTION = "merged"
    BASIS_KEYS = {"epochs": "epochs", "iterations_per_epoch": "iterations_per_epoch"}

    epochs: int | None = None
    iterations_per_epoch: int | None = None


@dataclass(frozen=True)
class SweepParams:
    """Ray Tune + Optuna sweep of the fine-tuning learning rate.

    Attributes:
        pairs, routes: which pairs and fine-tuning directions (``a_to_b``: a's model
            fine-tuned on b's data, selected on b's validation cases) to sweep, for every
            fold of the profile.
        lr_min, lr_max: the log-uniform search range of ``finetune.base_lr`` (with
            ``finetune.lr_rule``: the range of the powers of ten tried).
        trials: number of Optuna suggestions (each one fine-tuning run); with
            ``finetune.lr_rule`` every power of ten in the range is one trial instead.
        epochs, iterations_per_epoch: the schedule of one trial (warm-up as in ``finetune``).
        max_concurrent: trials run at the same time (each takes one CPU).
        address: as ``federated.address``.
    """

    pairs: tuple[str, ...] = ("polyp",)
    routes: tuple[str, ...] = ("a_to_b",)
    lr_min: float = 1e-4
    lr_max: float = 1e-2
    trials: int = 3
    epochs: int = 2
    iterations_per_epoch: int = 10
    max_concurrent: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        object.__setattr__(self, "routes", tuple(self.routes))
        bad = [r for r in self.routes if r not in FINETUNE_SLUGS]
        if bad:
            raise ConfigError(f"'sweep.routes' must be fine-tuning directions {' / '.join(FINETUNE_SLUGS)}, "
                              f"got {bad}")
        low = _learning_rate("sweep", "lr_min", self.lr_min)
        high = _learning_rate("sweep", "lr_max", self.lr_max)
        if not low < high:
            raise ConfigError(f"'sweep.lr_min' ({low}) must be below 'sweep.lr_max' ({high})")
        for key in ("trials", "epochs", "iterations_per_epoch", "max_concurrent"):
            positive_int("sweep", key, getattr(self, key))

    @property
    def decades(self) -> float:
        return math.log10(self.lr_max / self.lr_min)

    @classmethod
    def from_params(cls, params: Params) -> SweepParams:
        sweep = load_section(params, "sweep", cls)
        unknown = [p for p in sweep.pairs if p not in params.data]
        if unknown:
            raise ConfigError(f"'sweep.pairs' names {unknown}, which are not in params 'data'")
        return sweep

    def covers(self, pair: str, route: str) -> bool:
        """Whether the sweep runs for ``route`` (``a_to_b``/``b_to_a``) of ``pair``."""
        return pair in self.pairs and route in self.routes
