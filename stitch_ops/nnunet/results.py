"""nnU-Net v2 results folders opened as data: ``<Trainer>__<Plans>__<configuration>/``.

A hospital that trained with nnU-Net has ``nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<config>/``
with ``plans.json``, ``dataset.json`` and ``fold_<k>/checkpoint_final.pth``. nnU-Net's own
predictor unpickles those checkpoints completely and imports the trainer class they name;
here only tensors and plain data are read (``weights_only=True``) and the network is rebuilt
from the plans, so a custom trainer the receiver does not have (or should not run) is never
imported. Several folds are averaged as nnU-Net's predictor does (mean of the logits).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stitch_ops.errors import InputFileError
from stitch_ops.nnunet.model import FoldEnsemble, ModelError, NnUNetModel, build_network, load_plain, load_weights, read_received_json

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
_FOLD = re.compile(r"^fold_(\d+|all)$")


def is_results_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like ``<Trainer>__<Plans>__<config>`` (plans, dataset.json, a fold)."""
    folder = Path(folder)
    return ((folder / "plans.json").is_file() and (folder / "dataset.json").is_file()
            and any(_FOLD.match(p.name) for p in folder.iterdir() if p.is_dir()))


def find_results_folders(root: Path) -> list[Path]:
    """Every results folder at or below ``root`` (e.g. an extracted nnU-Net export zip)."""
    root = Path(root)
    found = [root] if is_results_folder(root) else []
    found += sorted(p.parent for p in root.rglob("plans.json") if p.parent != root and is_results_folder(p.parent))
    return found


def available_folds(folder: Path, checkpoint: str = CHECKPOINT) -> list[int | str]:
    """Folds of ``folder`` that hold ``checkpoint`` (ints, and ``"all"`` for ``fold_all``)."""
    folds: list[int | str] = []
    for path in sorted(Path(folder).iterdir()):
        found = _FOLD.match(path.name)
        if found and (path / checkpoint).is_file():
            folds.append(found.group(1) if found.group(1) == "all" else int(found.group(1)))
    return sorted(folds, key=lambda f: (isinstance(f, str), str(f) if isinstance(f, str) else f))


def configuration_of(folder: Path) -> str:
    """The configuration named by ``<Trainer>__<Plans>__<configuration>``."""
    parts = Path(folder).name.split("__")
    if len(parts) != 3:
        raise ModelError(f"{folder} is not named <Trainer>__<Plans>__<configuration> as nnU-Net names its "
                         f"results folders; pass the folder nnU-Net trained into")
    return parts[2]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_received_json(path, hint="pass a complete nnU-Net results folder")
    except InputFileError as err:
        raise ModelError(str(err)) from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint as plain data (``network_weights`` a state_dict of tensors).

    Raises:
        ModelError: the file would run code when unpickled, or holds no network weights.
    """
    checkpoint = load_plain(path)
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelError(f"{path} is not an nnU-Net checkpoint: it has no 'network_weights' state_dict of tensors")
    return checkpoint


def load_results_folder(folder: Path, folds: Sequence[int | str] | None = None, *,
                        device: torch.device | str = "cpu", trusted: bool = False) -> NnUNetModel:
    """Open an nnU-Net results folder as an :class:`NnUNetModel`.

    Args:
        folder: ``<Trainer>__<Plans>__<configuration>``.
        folds: which folds (default: every fold with ``checkpoint_final.pth``); several are
            averaged like nnU-Net's predictor does.
        trusted: allow plans naming classes outside nnU-Net's architectures and torch's layers.

    Raises:
        ModelError: a file is missing or not plain data, or the weights do not fit the plans.
    """
    folder = Path(folder)
    configuration = configuration_of(folder)
    present = available_folds(folder)
    if not present:
        raise ModelError(f"{folder} has no fold_<k>/{CHECKPOINT}: train it to the end (nnUNetv2_train) first")
    chosen = list(present if folds is None else folds)
    missing = [f for f in chosen if f not in present]
    if missing:
        raise ModelError(f"{folder} has no {CHECKPOINT} for fold(s) {missing}; available folds: {present}")
    plans, dataset_json = _read_json(folder / "plans.json"), _read_json(folder / "dataset.json")
    networks, mirroring = [], None
    for fold in chosen:
        path = folder / f"fold_{fold}" / CHECKPOINT
        checkpoint = read_checkpoint(path)
        recorded = (checkpoint.get("init_args") or {}).get("configuration", configuration)
        if recorded != configuration:
            raise ModelError(f"{path} was trained with configuration {recorded!r}, but its folder says "
                             f"{configuration!r}: the results folder is mixed up")
        network = build_network(plans, dataset_json, configuration, trusted=trusted)
        load_weights(network, checkpoint["network_weights"], path, "the results folder's plans.json and dataset.json")
        networks.append(network)
        axes = checkpoint.get("inference_allowed_mirroring_axes")
        mirroring = tuple(int(a) for a in axes) if axes is not None else None
    network = networks[0] if len(networks) == 1 else FoldEnsemble(networks)
    logger.debug("opened nnU-Net results folder %s, folds %s (trainer class not imported)", folder, chosen)
    return NnUNetModel(network.to(device).eval(), plans, dataset_json, configuration, mirroring,
                       description=f"nnU-Net {folder.name} folds {chosen}",
                       network_spec={"kind": "nnunet", "configuration": configuration, "folds": chosen,
                                     "mirroring_axes": list(mirroring) if mirroring is not None else None})
