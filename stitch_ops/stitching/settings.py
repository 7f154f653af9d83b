"""The ``stitching`` section of ``params.yaml``, validated once when a stage loads it.

Its own module so that every stitching stage, the search and the ablation read their
settings without importing the stage code (:mod:`stitch_ops.stitching.stages`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stitch_ops.approaches import StitchMethod
from stitch_ops.config import PARTIES, ConfigError
from stitch_ops.evaluation.selection import SelectionStrategy
from stitch_ops.stitching.train import StitchTrainingConfig

SEARCHES = ("grid", "optuna")


@dataclass(frozen=True)
class StitchingParams:
    """``params.yaml`` section ``stitching``: ``load_section(params, "stitching", StitchingParams)``.

    Attributes:
        c_parties: the parties c whose unlabeled images train stitches (``a←[c]→b``).
        methods: the stitch training methods to run (one stitch-ensemble per c and method).
        selection: the selection strategy of k; the pipeline's per-fold stages need ``current_fold``.
        max_positions: score at most this many positions, spread evenly (``None``: every k).
        training: the stitch schedule, :class:`~stitch_ops.stitching.train.StitchTrainingConfig`
            keys except ``method`` and ``seed``.
        finetuned_c_parties: the parties c of ``a←[a]→b→a`` (c's model stitched to the other
            party's model fine-tuned on c's data); empty: none.
        search: ``grid`` (default): the stitches train at ``training.lr`` and ``select`` scores the
            evaluated positions; ``optuna``: ``train`` first runs a Ray Tune + Optuna search over
            (k, learning rate) on c's validation cases (:mod:`stitch_ops.stitching.search`), trains
            the stitches at the best rate, and ``select`` scores the best k beside the others.
        trials: Optuna trials of the search.
        search_lr_min, search_lr_max: the log-uniform range of the searched learning rate.
        search_training: ``training`` keys a trial overrides (a short schedule).
        search_concurrent: trials run at once (one CPU each).
        search_address: where the trials run: ``None`` starts Ray on this machine,
            ``"head:6379"`` / ``"auto"`` joins an existing cluster (:mod:`stitch_ops.ray_session`).
        ablation: the ``stitch_ablation`` stage's settings, kept as plain data here and validated
            by that stage (:class:`stitch_ops.stitching.ablation.AblationParams`), so that the
            stitching stages do not depend on the ablation's code.
    """

    c_parties: tuple[str, ...]
    methods: tuple[StitchMethod, ...]
    selection: str
    training: Mapping[str, Any]
    max_positions: int | None = None
    finetuned_c_parties: tuple[str, ...] = ()
    search: str = "grid"
    trials: int = 8
    search_lr_min: float = 1e-4
    search_lr_max: float = 1e-2
    search_training: Mapping[str, Any] = field(default_factory=lambda: {"epochs": 1})
    search_concurrent: int = 1
    search_address: str | None = None
    ablation: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [c for c in self.c_parties if c not in PARTIES]
        if bad or not self.c_parties:
            raise ConfigError(f"'stitching.c_parties' must list parties among {list(PARTIES)}, got "
                              f"{list(self.c_parties)}")
        try:
            object.__setattr__(self, "methods", tuple(StitchMethod(m) for m in self.methods))
        except ValueError:
            raise ConfigError(f"'stitching.methods' must be among {[m.value for m in StitchMethod]}, got "
                              f"{list(self.methods)}") from None
        bad = [c for c in self.finetuned_c_parties if c not in PARTIES]
        if bad:
            raise ConfigError(f"'stitching.finetuned_c_parties' must list parties among {list(PARTIES)}, got "
                              f"{list(self.finetuned_c_parties)}")
        if self.selection != SelectionStrategy.CURRENT_FOLD:
            raise ConfigError("'stitching.selection' can only be current_fold: it names the strategy of the "
                              "plain stitch-ensemble slug; all_folds and rule_of_thumb are always computed "
                              "as well, by the stitch_strategies stages")
        StitchTrainingConfig.from_dict(self.training)  # validates the schedule now, not mid-run
        if self.max_positions is not None and self.max_positions < 1:
            raise ConfigError(f"'stitching.max_positions' must be null or >= 1, got {self.max_positions}")
        if self.search not in SEARCHES:
            raise ConfigError(f"'stitching.search' must be one of {list(SEARCHES)}, got {self.search!r}")
        for key in ("trials", "search_concurrent"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'stitching.{key}' must be a positive integer, got {value!r}")
        if not 0 < self.search_lr_min < self.search_lr_max:
            raise ConfigError(f"'stitching.search_lr_min' must be > 0 and below 'stitching.search_lr_max', got "
                              f"{self.search_lr_min} and {self.search_lr_max}")
        if "lr" in self.search_training:
            raise ConfigError("'stitching.search_training' must not set lr: the search samples it from "
                              "[search_lr_min, search_lr_max]")
        StitchTrainingConfig.from_dict({**self.training, **self.search_training})

    def search_config(self, method: str, seed: int, lr: float) -> Any:
        """The schedule of one search trial: ``training`` with ``search_training`` and ``lr`` on top."""
        return StitchTrainingConfig.from_dict({**self.training, **self.search_training, "lr": lr, "method": method,
                                               "seed": seed})

    def training_config(self, method: str, seed: int) -> Any:
        return StitchTrainingConfig.from_dict({**self.training, "method": method, "seed": seed})
