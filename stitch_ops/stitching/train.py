"""Training the stitches: direct matching and double-batched (DESIGN.md, step 4).

The parents stay frozen throughout: their parameters have ``requires_grad=False``
and their normalisation layers stay in eval mode, so neither weights nor
statistics change. Only the stitches are optimised, with AdamW and a cosine
annealed learning rate, on *unlabeled* images.

- *Direct matching*: one forward pass with every switch on original; at each
  match both stitches get ``MSE(stitch(other map), own map)`` on detached maps,
  so no gradient flows through the parents and all stitches train at once. The
  MSE is evaluated from the pair's second-order statistics
  (:class:`~stitch_ops.stitching.stitch.PairStatistics`): same value and
  gradient (in closed form, so no backward pass), without materialising the
  stitched maps. Each training step
  estimates those statistics from a random ``moment_fraction`` of the positions
  (:class:`~stitch_ops.stitching.stitch.MomentSampler`: uniform, without
  replacement, unbiased), which makes a 2-D step cheaper by about the parents'
  forward cost; the least-squares start and the probe loss use every position.
- *Double-batched*: every sample is in the batch twice; the reference copy is the
  parents' own forward pass (computed once per step without autograd), the
  switches pass a random per-sample choice on in the forwarded copy and return
  their loss anchored to the reference (see :mod:`stitch_ops.stitching.switch`).
  Gradients flow back through the parents' later layers into earlier stitches.

**Initialisation and schedule: the paper's set-up by default.** Stitches start from the
modules' own (default) initialisation and train for a *fixed* number of epochs per method
with AdamW and a cosine schedule without restarts (Guijt et al., 2025). The paper trains
direct matching for more epochs than double-batched (whose doubled batch already doubles
the work per step); its exact epoch counts and learning rate are not in the text we have,
so each profile sets its own (``stitching.training.epochs`` may map each method to its
epochs). ``init: least_squares`` is an option, not the default: it starts every stitch
from the least-squares fit (:func:`fit_stitches_least_squares`, the exact optimum of direct
matching on the fitting batches, as SN-Net initialises its stitching layers: Pan et al.,
"Stitchable Neural Networks", CVPR 2023, ``stitching_deit/snnet.py``). Such a stitch
reproduces the other network's own feature maps, mistakes included, so averaging it in
changes the ensemble little; the paper's default-initialised stitches trained for a short
fixed schedule stay further from that optimum and carry the stitching party's information
across (the report's ablation measures this on our data).

**Plateau.** Each epoch logs its mean training loss and its *probe loss*: the same
objective on ``probe_batches`` fixed batches (drawn once, switches seeded the same every
time), so epochs are compared on the same data -- the training mean moves with the
random patches of each epoch (on pelvis it rose by half from one epoch to the next at
a fixed learning rate, from the least-squares start, purely because the patches
changed). Training has *reached a plateau* when the last epoch improved the probe loss
by less than ``plateau_tolerance`` (relative, 1 % by default) over the epoch before
(:func:`plateau_reached`). The pipeline records the curve and the verdict; training never
stops on it (the schedule is fixed, as in the paper).

Training checkpoints after every epoch (atomically), and a rerun with the same
checkpoint path continues after the last completed epoch, also when ``epochs``
has been raised since.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from difflib import get_close_matches
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from stitch_ops.approaches import StitchMethod
from stitch_ops.budget import TrainingClock
from stitch_ops.config import ConfigError
from stitch_ops.errors import InputFileError, reading
from stitch_ops.outputs import write_json
from stitch_ops.stitching.artifacts import CHECKPOINT, NETWORK_FILE
from stitch_ops.stitching.data import RandomPatches
from stitch_ops.stitching.network import StitchedNetwork, SwitchConfiguration, atomic_save, save_stitched_network
from stitch_ops.stitching.stitch import MomentSampler, PairStatistics
from stitch_ops.stitching.switch import DEFAULT_LOSS_TERMS, LossTerm, SwitchMode

__all__ = [
    "TRAINING_METHODS",
    "Batches",
    "DirectMatching",
    "DoubleBatched",
    "EpochLog",
    "StitchTrainingConfig",
    "TrainingMethod",
    "cosine_learning_rate",
    "epochs_of",
    "fit_stitches_least_squares",
    "moment_sampler",
    "patch_size",
    "plateau_reached",
    "stitch_optimizer",
    "train_stitch_network",
    "train_stitches",
    "training_method",
    "training_step",
]

logger = logging.getLogger(__name__)

_FORMAT = "stitch_ops.stitch_training_checkpoint/1"

Batches = Iterable[Tensor] | Callable[[int], Iterable[Tensor]]
"""Images ``B C H W [D]``: an iterable (re-iterated every epoch), or a function from the epoch to one."""

INITIALISATIONS = ("default", "least_squares")
DEFAULT_MOMENT_FRACTION = 0.125
"""Direct matching's default share of positions per step (``bench/training_step.py``, README)."""
PROBE_EPOCH = 1_000_003
"""The probe batches are "epoch" ``PROBE_EPOCH`` of the batches: fixed, and apart from the training epochs'."""


@dataclass(frozen=True)
class StitchTrainingConfig:
    """How stitches are trained (``params.yaml`` section ``stitch``).

    Attributes:
        method: direct matching or double-batched.
        epochs: number of epochs; a checkpoint is written after each. :meth:`from_dict`
            also takes a mapping from method to epochs and keeps the method's.
        iterations_per_epoch: optimiser steps per epoch.
        batch_size: images per batch (before doubling); used by the data helpers.
        lr: initial learning rate of AdamW, annealed to 0 along a cosine.
        weight_decay: AdamW weight decay on the stitches.
        loss_terms: double-batched loss terms (ignored by direct matching).
        seed: seeds the switches' random choices (and nothing else).
        init: ``default`` (the paper's): the stitch modules' own initialisation;
            ``least_squares``: start every stitch from the least-squares fit on
            ``init_batches`` batches (an option; see the module docstring).
        init_batches: batches the least-squares fit accumulates statistics over.
        plateau_tolerance: relative improvement of the probe loss below which the
            training counts as having reached a plateau (see :func:`plateau_reached`).
        probe_batches: fixed batches the probe loss is measured on after every epoch.
        moment_fraction: direct matching: share of the positions (batch x spatial) each
            step estimates the pairs' moments from, drawn uniformly without replacement
            (unbiased; :class:`~stitch_ops.stitching.stitch.MomentSampler`); 1: every position.
    """

    method: StitchMethod = StitchMethod.DOUBLE_BATCHED
    epochs: int = 10
    iterations_per_epoch: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss_terms: tuple[LossTerm, ...] = DEFAULT_LOSS_TERMS
    seed: int = 0
    init: str = "default"
    init_batches: int = 8
    plateau_tolerance: float = 0.01
    probe_batches: int = 4
    moment_fraction: float = DEFAULT_MOMENT_FRACTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", StitchMethod(self.method))
        unknown_terms = [term for term in self.loss_terms if term not in {t.value for t in LossTerm} | set(LossTerm)]
        if unknown_terms:
            raise ConfigError(f"StitchTrainingConfig.loss_terms: unknown term(s) {unknown_terms}; "
                              f"choose from {[t.value for t in LossTerm]}")
        object.__setattr__(self, "loss_terms", tuple(LossTerm(term) for term in self.loss_terms))
        if self.init not in INITIALISATIONS:
            raise ValueError(f"StitchTrainingConfig.init should be one of {list(INITIALISATIONS)}, got {self.init!r}")
        if not 0 < self.plateau_tolerance < 1:
            raise ValueError(f"StitchTrainingConfig.plateau_tolerance should be in (0, 1), got {self.plateau_tolerance!r}")
        for name in ("epochs", "iterations_per_epoch", "batch_size", "init_batches", "probe_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"StitchTrainingConfig.{name} should be a positive integer, got {value!r}")
        if isinstance(self.moment_fraction, bool) or not isinstance(self.moment_fraction, (int, float)) \
                or not 0 < self.moment_fraction <= 1:
            raise ConfigError(f"StitchTrainingConfig.moment_fraction should be in (0, 1] (1: every position), "
                              f"got {self.moment_fraction!r}")
        if not self.lr > 0:
            raise ConfigError(f"StitchTrainingConfig.lr should be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"StitchTrainingConfig.weight_decay should be >= 0, got {self.weight_decay!r}")
        if not self.loss_terms:
            raise ConfigError(f"StitchTrainingConfig.loss_terms should name at least one of {[t.value for t in LossTerm]}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StitchTrainingConfig:
        """Build from plain data (a ``params.yaml`` section), rejecting unknown keys.

        ``epochs`` may be a mapping from method to epochs (``{direct_matching: 12,
        double_batched: 8}``): the config keeps its method's entry.
        """
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            known = [f.name for f in fields(cls)]
            hints = [f"{key!r}" + "".join(f" (did you mean {close!r}?)" for close in get_close_matches(key, known, 1))
                     for key in sorted(unknown)]
            raise ConfigError(f"unknown StitchTrainingConfig key(s) {', '.join(hints)} (params 'stitching.training'); "
                              f"known: {known}")
        values = {key: tuple(value) if key == "loss_terms" else value for key, value in data.items()}
        if isinstance(values.get("epochs"), Mapping):
            values["epochs"] = epochs_of(values["epochs"], values.get("method", cls.method))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, inverse of :meth:`from_dict`."""
        data = asdict(self)
        data["method"] = self.method.value
        data["loss_terms"] = [term.value for term in self.loss_terms]
        return data


def epochs_of(epochs: int | Mapping[str, int], method: StitchMethod | str) -> int:
    """The epochs of ``method`` from ``stitching.training.epochs``: one number for both methods,
    or a mapping from method to epochs that names every method."""
    if not isinstance(epochs, Mapping):
        return epochs
    names = {m.value for m in StitchMethod}
    if set(epochs) != names:
        raise ConfigError(f"'stitching.training.epochs' as a mapping must give the epochs of each method "
                          f"{sorted(names)}, got {sorted(epochs)}")
    return epochs[StitchMethod(method).value]


@dataclass(frozen=True)
class EpochLog:
    """Mean training loss (sum over switches) of one epoch, the learning rate at its end, and
    the probe loss after it (the same objective on fixed batches; ``None`` where not measured)."""

    epoch: int
    loss: float
    lr: float = float("nan")
    probe: float | None = None


def train_stitches(
    network: StitchedNetwork,
    batches: Batches,
    config: StitchTrainingConfig,
    checkpoint: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> tuple[EpochLog, ...]:
    """Train every stitch of ``network`` on unlabeled images.

    Args:
        network: the combined network; its stitches are trained in place.
        batches: images ``B C H W [D]`` on any device (moved to the network's).
        config: method, schedule and seed.
        checkpoint: file to write after every epoch and to resume from if it exists.
        progress: show one progress bar (all iterations, with ETA) with the running loss.
        on_epoch: called after every epoch (first for those restored from the checkpoint),
            e.g. to log a live MLflow run.

    Returns:
        the log of every epoch, including those restored from the checkpoint.

    Raises:
        ValueError: if the checkpoint was written for other matches or another config.
    """
    logger.info("training %d stitches (%s) with %s; checkpoint %s", 2 * len(network.matches), config.method.value, config, checkpoint)
    optimizer = stitch_optimizer(network, config)
    history: list[EpochLog] = []
    if checkpoint is not None and Path(checkpoint).exists():
        history = _resume(network, optimizer, config, Path(checkpoint))
    elif config.init == "least_squares":
        logger.info("initialising the stitches by least squares on %d batches", config.init_batches)
        fit_stitches_least_squares(network, itertools.islice(_cycle(batches, 0), config.init_batches))
    for log in history if on_epoch is not None else []:
        on_epoch(log)
    device = next(network.parameters()).device
    probe = list(itertools.islice(_cycle(batches, PROBE_EPOCH), config.probe_batches))
    network.train()
    network.set_training(config.method, config.loss_terms)
    bar = tqdm(total=config.epochs * config.iterations_per_epoch, initial=len(history) * config.iterations_per_epoch,
               desc=f"stitches {config.method.value}", unit="it", disable=not progress)
    try:
        for epoch in range(len(history), config.epochs):
            training_method(config.method).configure_switches(network, config, epoch)
            loss = _run_epoch(network, optimizer, batches, config, epoch, device, bar)
            history.append(EpochLog(epoch, loss, optimizer.param_groups[0]["lr"], probe_loss(network, probe, config, device)))
            logger.info("epoch %d/%d: loss %.6f, probe loss %.6f", epoch + 1, config.epochs, loss, history[-1].probe)
            if checkpoint is not None:
                _save(network, optimizer, config, history, Path(checkpoint))
            if on_epoch is not None:
                on_epoch(history[-1])
    finally:
        bar.close()
        network.set_training(None)
        network.configure(SwitchConfiguration.all_original(len(network.matches)))
        network.eval()
    return tuple(history)


@torch.no_grad()
def fit_stitches_least_squares(network: StitchedNetwork, batches: Iterable[Tensor], ridge: float = 1e-6) -> None:
    """Set every stitch to the least-squares map between the parents' matched maps.

    This is the closed-form solution of direct matching on ``batches`` (images
    ``B C H W [D]``, unlabeled), a good start for either training method.
    """
    device = next(network.parameters()).device
    statistics: list[PairStatistics] | None = None
    for images in batches:
        batch = network.pair_statistics(images.to(device))
        statistics = batch if statistics is None else [total + new for total, new in zip(statistics, batch)]
    if statistics is None:
        raise ValueError("no images: least-squares fitting needs at least one batch")
    for pair, switch_a, switch_b in zip(statistics, network.switches_a, network.switches_b):
        switch_a.stitch.set_affine_(*pair.swapped().least_squares(ridge))
        switch_b.stitch.set_affine_(*pair.least_squares(ridge))


@torch.no_grad()
def probe_loss(network: StitchedNetwork, probe: list[Tensor], config: StitchTrainingConfig, device: torch.device) -> float:
    """The training objective (summed over switches, mean over batches) on fixed ``probe`` batches,
    without a step; double-batched switches draw from a generator seeded the same every time."""
    if not probe:
        raise ValueError("no probe batches: the batches iterable is empty")
    training_method(config.method).configure_switches(network, config, PROBE_EPOCH)
    total = 0.0
    for images in probe:
        total += float(sum(pair.a + pair.b for pair in network.switch_losses(images.to(device))))
    return total / len(probe)


def plateau_reached(history: Iterable[EpochLog], tolerance: float = 0.01) -> bool:
    """Whether the last epoch improved the loss by less than ``tolerance`` (relative).

    ``(loss[-2] - loss[-1]) / loss[-2] < tolerance`` on the probe loss (the training mean
    where no probe was measured); a loss that went up counts as a plateau, a single epoch
    does not (nothing to compare with).
    """
    losses = [log.loss if log.probe is None else log.probe for log in history]
    if len(losses) < 2:
        return False
    previous, last = losses[-2], losses[-1]
    if previous <= 0:
        return last >= previous
    return (previous - last) / previous < tolerance


def cosine_learning_rate(step: int, total_steps: int, lr: float) -> float:
    """Cosine annealing from ``lr`` to 0 over ``total_steps`` (``CosineAnnealingLR`` per step).

    Computed from the step rather than kept in a scheduler, so a resumed run
    continues the schedule even when ``epochs`` changed.
    """
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def stitch_optimizer(network: StitchedNetwork, config: StitchTrainingConfig) -> torch.optim.AdamW:
    """AdamW over the stitches only (fused: one kernel for all of them)."""
    return torch.optim.AdamW(network.stitch_parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


class TrainingMethod:
    """What one stitch-training method does in the loop: the switches of an epoch, the moment
    sampler of an epoch and one step's gradients. The loop (:func:`train_stitches`) calls these
    and never asks which method it runs; a new method is one more subclass in
    :data:`TRAINING_METHODS` (and a :class:`~stitch_ops.approaches.StitchMethod` member)."""

    method: ClassVar[StitchMethod]

    def configure_switches(self, network: StitchedNetwork, config: StitchTrainingConfig, epoch: int) -> None:
        """Set every switch for ``epoch`` (:data:`PROBE_EPOCH`: the probe loss's fixed draw)."""
        raise NotImplementedError

    def sampler(self, config: StitchTrainingConfig, epoch: int) -> MomentSampler | None:
        """The positions each step of ``epoch`` estimates moments from (``None``: every position)."""
        return None

    def gradients(self, network: StitchedNetwork, images: Tensor, sampler: MomentSampler | None) -> Tensor:
        """Set every stitch's ``.grad`` for one step on ``images``; return the summed loss."""
        raise NotImplementedError


class DirectMatching(TrainingMethod):
    """Every switch on original; at each match both stitches regress the other parent's map,
    in closed form (:meth:`StitchedNetwork.direct_matching_gradients`: no backward pass)."""

    method = StitchMethod.DIRECT_MATCHING

    def configure_switches(self, network: StitchedNetwork, config: StitchTrainingConfig, epoch: int) -> None:
        network.configure(SwitchConfiguration.all_original(len(network.matches)))

    def sampler(self, config: StitchTrainingConfig, epoch: int) -> MomentSampler | None:
        """With ``moment_fraction < 1``: seeded by (seed, epoch), so a resumed run draws what an
        uninterrupted one would."""
        if config.moment_fraction >= 1:
            return None
        seed = int(np.random.SeedSequence([config.seed, epoch, 1]).generate_state(1)[0])
        return MomentSampler(config.moment_fraction, torch.Generator().manual_seed(seed))

    def gradients(self, network: StitchedNetwork, images: Tensor, sampler: MomentSampler | None) -> Tensor:
        return network.direct_matching_gradients(images, sampler)


class DoubleBatched(TrainingMethod):
    """Every switch random, from a generator seeded by (seed, epoch); the reference copy of the
    doubled batch without autograd, the forwarded copy through the switches, then backward."""

    method = StitchMethod.DOUBLE_BATCHED

    def configure_switches(self, network: StitchedNetwork, config: StitchTrainingConfig, epoch: int) -> None:
        n = len(network.matches)
        seed = int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
        network.configure(SwitchConfiguration((SwitchMode.RANDOM,) * n, (SwitchMode.RANDOM,) * n),
                          torch.Generator().manual_seed(seed))

    def gradients(self, network: StitchedNetwork, images: Tensor, sampler: MomentSampler | None) -> Tensor:
        loss = sum(pair.a + pair.b for pair in network.switch_losses(images))
        loss.backward()
        return loss


TRAINING_METHODS: dict[StitchMethod, TrainingMethod] = {m.method: m for m in (DirectMatching(), DoubleBatched())}


def training_method(method: StitchMethod | str) -> TrainingMethod:
    """The :class:`TrainingMethod` of ``method``."""
    return TRAINING_METHODS[StitchMethod(method)]


def training_step(network: StitchedNetwork, optimizer: torch.optim.Optimizer, images: Tensor,
                  sampler: MomentSampler | None = None) -> float:
    """One optimiser step on images ``B C H W [D]`` by the method ``set_training`` prepared the
    network for (and, for double-batched training, its switches configured); ``sampler``: the
    positions direct matching estimates the moments from (``None``: every position).
    Returns the summed loss.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = training_method(network.training_method).gradients(network, images, sampler)
    optimizer.step()
    return float(loss.detach())


def _run_epoch(network, optimizer, batches: Batches, config: StitchTrainingConfig, epoch: int, device, bar: tqdm) -> float:
    images = _cycle(batches, epoch)
    total_steps = config.epochs * config.iterations_per_epoch
    loss_sum = 0.0
    sampler = moment_sampler(config, epoch)
    for iteration in range(config.iterations_per_epoch):
        lr = cosine_learning_rate(epoch * config.iterations_per_epoch + iteration, total_steps, config.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = training_step(network, optimizer, next(images).to(device), sampler)
        loss_sum += loss
        bar.update()
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / (iteration + 1):.4g}")
    return loss_sum / config.iterations_per_epoch


def moment_sampler(config: StitchTrainingConfig, epoch: int) -> MomentSampler | None:
    """The epoch's moment sampler of ``config.method`` (:meth:`TrainingMethod.sampler`)."""
    return training_method(config.method).sampler(config, epoch)


def _cycle(batches: Batches, epoch: int) -> Iterator[Tensor]:
    """The epoch's batches, started again from the beginning whenever they run out."""
    source = batches(epoch) if callable(batches) else batches
    while True:
        empty = True
        for images in source:
            empty = False
            yield images
        if empty:
            raise ValueError("no training images: the batches iterable is empty")


def _stitch_state(network: StitchedNetwork) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in network.state_dict().items() if k.startswith("switches_")}


def _match_fingerprint(network: StitchedNetwork) -> str:
    return json.dumps([asdict(m) for m in network.matches])


def _save(network, optimizer, config: StitchTrainingConfig, history: list[EpochLog], path: Path) -> None:
    atomic_save(
        {
            "format": _FORMAT,
            "config": json.dumps(config.to_dict()),
            "matches": _match_fingerprint(network),
            "history": [[log.epoch, log.loss, log.lr, log.probe] for log in history],
            "stitches": _stitch_state(network),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )


def _resume(network, optimizer, config: StitchTrainingConfig, path: Path) -> list[EpochLog]:
    with reading(path, "stitch training checkpoint", "delete it to train these stitches from scratch"):
        saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") != _FORMAT:
        raise InputFileError(f"{path} is not a stitch training checkpoint (format {saved.get('format')!r}, expected {_FORMAT!r})")
    if saved["matches"] != _match_fingerprint(network):
        raise InputFileError(f"checkpoint {path} was written for other matches; delete it to train these stitches from scratch")
    saved_config = json.loads(saved["config"])
    free = ("epochs", "plateau_tolerance", "probe_batches")  # may change between attempts: they do not alter what was trained
    expected = {k: v for k, v in config.to_dict().items() if k not in free}
    got = {k: v for k, v in saved_config.items() if k not in free}
    if got != expected:
        raise InputFileError(f"checkpoint {path} was written with config {got}, expected {expected} (only epochs may change); delete it to start over")
    missing, unexpected = network.load_state_dict(saved["stitches"], strict=False)
    if unexpected or any(key.startswith("switches_") for key in missing):
        raise InputFileError(f"checkpoint {path} does not fit these stitches: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(saved["optimizer"])
    history = [EpochLog(int(entry[0]), float(entry[1]), *(float(v) for v in entry[2:3]),
                        *(None if v is None else float(v) for v in entry[3:4])) for entry in saved["history"]]
    logger.info("resumed from %s after epoch %d", path, len(history))
    return history


def patch_size(own: Any) -> Any:
    """The patch size of ``own``'s configuration: the stitches train on patches of it."""
    return own.plans["configurations"][own.configuration]["patch_size"]


def train_stitch_network(model_a: Any, model_b: Any, images: Any, patch_size: Any, config: Any, out: Path,
                         progress: bool = True, on_epoch: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
    """Combine two loaded models, train their stitches on random patches of ``images``
    (unlabeled, :class:`~stitch_ops.stitching.PreprocessedImages`) and save the network.

    Resumable: ``out/checkpoint.pt`` is written after every epoch and continued from;
    ``out/stitched_network.pt`` and ``out/training_log.json`` appear only when training ends,
    and then the checkpoint (the stitches plus the optimizer's state, about three times the
    stitches' size) is deleted: every later stage reads the saved network, and a stage that
    reruns (its parents or settings changed) must not continue stitches trained for others;
    the wall time of every attempt is summed in ``out`` (:class:`~stitch_ops.budget.TrainingClock`).
    ``on_epoch`` gets every epoch's log (a live MLflow run; see :func:`train_stitches`).
    Returns the trained :class:`~stitch_ops.stitching.StitchedNetwork` and the epochs' losses.
    """
    patches = RandomPatches(images, patch_size, config.batch_size, config.seed)
    network = StitchedNetwork.from_models(model_a, model_b)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("%d matches; %d stitches to train (%s)", len(network.matches), 2 * len(network.matches),
                config.method.value)
    with TrainingClock(out):
        history = train_stitches(network, patches.epoch, config, checkpoint=out / CHECKPOINT, progress=progress,
                                 on_epoch=on_epoch)
    write_json(out / "training_log.json", [vars(e) for e in history])
    save_stitched_network(network, out / NETWORK_FILE)
    for checkpoint in out.glob(f"{CHECKPOINT}*"):  # with a killed save's .partial-<pid> leftover
        checkpoint.unlink()
    return network, history
