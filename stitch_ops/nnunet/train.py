"""Train one fold of an nnU-Net on a party's preprocessed data, resumably, and export it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stitch_ops.budget import Budget, TrainingClock
from stitch_ops.config import NnUNetSchedule
from stitch_ops.nnunet.env import NnUNetRoots, configure, resolve_device
from stitch_ops.nnunet.model import export_model, load_model
from stitch_ops.nnunet.plan import PLANS
from stitch_ops.outputs import read_json, write_json

from stitch_ops.tracking.curves import TRAINING_LOG, read_curve, write_curve

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
EXPORT = "export"
CHECKPOINTS = "checkpoint_*.pth*"
"""nnU-Net's checkpoints (weights plus the optimizer's momentum: about twice the exported weights each),
including a killed save's ``.partial-<pid>`` leftover."""

EpochCallback = Callable[[int, Mapping[str, float]], None]
"""Called with (epoch, training-curve values) after every epoch, e.g. ``LiveRun.log_epoch``."""


@dataclass(frozen=True)
class TrainingRun:
    """Everything that determines a trained fold; its hash decides whether a checkpoint
    found on disk belongs to this run (resume) or to another one (start over)."""

    dataset_name: str
    preprocessed_root: Path
    results_root: Path
    fold: int
    schedule: NnUNetSchedule
    plans_identifier: str = PLANS
    pretrained: Path | None = None
    trainer: str = "ScheduledTrainer"
    seed: int = 0

    def fingerprint(self) -> str:
        record = {k: str(v) for k, v in asdict(self).items() if k != "results_root"}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def export_dir(self) -> Path:
        return self.results_root / EXPORT


def _load_json(path: Path) -> dict[str, Any]:
    return read_json(path, hint="run the plan stage for this dataset first "
                                "(`python -m stitch_ops.nnunet plan ...` or `dvc repro`)")


def _prepare_results_root(run: TrainingRun) -> bool:
    """Keep a previous attempt only if it was the same run; returns True if it is finished."""
    marker = run.results_root / RUN_CONFIG
    if marker.is_file() and read_json(marker).get("fingerprint") == run.fingerprint():
        return (run.export_dir / "weights.pth").is_file()
    if run.results_root.exists():
        logger.info("discarding %s: it was produced by a different configuration", run.results_root)
        shutil.rmtree(run.results_root)
    run.results_root.mkdir(parents=True)
    write_json(marker, {"fingerprint": run.fingerprint(), **{k: str(v) for k, v in asdict(run).items()}})
    return False


def train_fold(run: TrainingRun, *, trainer_class: type | None = None, progress: bool = True,
               provenance: dict[str, Any] | None = None, on_epoch: EpochCallback | None = None,
               keep_checkpoint: bool = True) -> Path:
    """Train ``run`` (resuming an interrupted attempt of the same run) and export the model.

    The training curve (train/val loss, pseudo-Dice, learning rate, epoch time) is written
    to ``<results_root>/training_log.csv`` after every epoch and handed to ``on_epoch``;
    epochs restored from a checkpoint (or a finished run's whole curve) are handed over
    first, so a live MLflow run always shows the whole curve.

    Args:
        run: what to train.
        trainer_class: a ``ScheduledTrainer`` subclass (e.g. fine-tuning's warm-up schedule).
        progress: show a progress bar over the iterations.
        provenance: extra fields for the exported ``model.json`` (approach, party, ...).
        on_epoch: called with (epoch, curve values) after every epoch.
        keep_checkpoint: keep nnU-Net's ``checkpoint_final.pth`` once the model is exported,
            so that ``results_root`` stays an nnU-Net results folder (``nnUNetv2_predict``,
            ``nnUNetv2_export_model_to_zip``). The pipeline's stages pass False: downstream
            everything reads ``export/``, and the checkpoint, which carries the optimizer
            state, is needed only to resume an unfinished run (:func:`drop_checkpoints`).

    Returns:
        The exported model folder (``<results_root>/export``).
    """
    curve = run.results_root / TRAINING_LOG
    if _prepare_results_root(run):
        logger.info("%s is already trained; nothing to do", run.export_dir)
        _replay(read_curve(curve), on_epoch)
        if not keep_checkpoint:
            drop_checkpoints(run.results_root)
        return run.export_dir
    configure(NnUNetRoots(preprocessed=run.preprocessed_root, results=run.results_root), training=True)
    from stitch_ops.nnunet.trainer import ScheduledTrainer, global_rng_kept, seed_everything

    trainer_class = trainer_class or ScheduledTrainer
    base = run.preprocessed_root / run.dataset_name
    plans = run.schedule.training_plans(_load_json(base / f"{run.plans_identifier}.json"))
    dataset_json = _load_json(base / "dataset.json")
    plans["continue_training"] = True
    from stitch_ops.nnunet.trainer import quiet_stdout

    with global_rng_kept():
        with quiet_stdout():
            trainer = trainer_class(plans=plans, configuration=run.schedule.configuration, fold=run.fold,
                                    dataset_json=dataset_json, device=resolve_device(run.schedule.device))
            trainer.apply_schedule(run.schedule, run.seed)
            seed_everything(run.seed, 1)  # the network's initial weights
            trainer.initialize()
            _restore(trainer, run)
        history = trainer.history()
        write_curve(curve, history)
        _replay(history, on_epoch)

        def after_epoch(trained: Any) -> None:
            epoch = trained.current_epoch - 1
            history.append({"epoch": epoch, **trained.epoch_metrics(epoch)})
            write_curve(curve, history)
            if on_epoch is not None:
                on_epoch(epoch, history[-1])

        with TrainingClock(run.results_root):
            trainer.run_training(progress=progress, after_epoch=after_epoch)
    exported = export_model(trainer.network, trainer.plans_manager.plans, dataset_json,
                            configuration=run.schedule.configuration, target=run.export_dir,
                            mirroring_axes=trainer.inference_allowed_mirroring_axes,
                            provenance={"dataset": run.dataset_name, "fold": run.fold,
                                        "trainer": trainer_class.__name__, "epochs": trainer.num_epochs,
                                        "pseudo_dice": trainer.pseudo_dice(), **(provenance or {})})
    if not keep_checkpoint:
        drop_checkpoints(run.results_root)
    return exported


def drop_checkpoints(results_root: Path) -> list[Path]:
    """Delete nnU-Net's checkpoints under a *finished* run's ``results_root``; returns them.

    Only an unfinished run reads them (:func:`_restore`: ``checkpoint_latest`` while training,
    ``checkpoint_final`` if killed before the export was swapped in); a finished run is
    recognised by ``export/weights.pth`` alone, and fine-tuning, prediction, stitching and
    bundles read the export. Each checkpoint holds the weights plus the optimizer's momentum
    and metadata, so dropping them leaves about a third of a model folder."""
    removed = sorted(results_root.rglob(CHECKPOINTS))
    for path in removed:
        path.unlink()
    if removed:
        logger.debug("removed %d nnU-Net checkpoint(s) of the finished run in %s", len(removed), results_root)
    return removed


def _replay(history: list[dict[str, float]], on_epoch: EpochCallback | None) -> None:
    if on_epoch is not None:
        for row in history:
            on_epoch(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})


def training_budget(run: TrainingRun, **extra: Any) -> Budget:
    """What a finished :func:`train_fold` ran: its schedule, the batch size it trained with
    (from the exported plans) and its wall time summed over attempts."""
    plans = _load_json(run.export_dir / "plans.json")
    batch_size = plans["configurations"][run.schedule.configuration]["batch_size"]
    return Budget.of_schedule(run.schedule.epochs, run.schedule.iterations_per_epoch, batch_size,
                              TrainingClock(run.results_root).seconds, **extra)


def _restore(trainer: Any, run: TrainingRun) -> None:
    """Resume from this run's final checkpoint (killed while exporting) or its latest one
    (killed while training), or start from pretrained weights."""
    folder = Path(trainer.output_folder)
    checkpoint = next((folder / name for name in ("checkpoint_final.pth", "checkpoint_latest.pth")
                       if (folder / name).is_file()), None)
    if checkpoint is not None:
        logger.info("resuming %s from %s", run.dataset_name, checkpoint)
        trainer.load_checkpoint(str(checkpoint))
    elif run.pretrained is not None:
        logger.info("starting from the weights of %s", run.pretrained)
        source = load_model(run.pretrained)
        trainer.network.load_state_dict(source.network.state_dict())
