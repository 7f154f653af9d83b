"""A trained nnU-Net as portable files, and loading it back as *data*, never as code.

An exported model is a folder with ``weights.pth`` (a plain ``state_dict``, loaded with
``weights_only=True``), ``plans.json``, ``dataset.json`` and ``model.json`` (configuration,
fold, mirroring axes, what trained it). That folder is what a party hands to another
(inside a MONAI bundle) and what every prediction in the pipeline loads.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stitch_ops.errors import InputFileError
from stitch_ops.outputs import CorruptFileError, output_dir, read_json, write_json

logger = logging.getLogger(__name__)

MODEL_FILES = ("weights.pth", "plans.json", "dataset.json", "model.json")

_TRUSTED_ARCHITECTURES = "dynamic_network_architectures.architectures."
_TRUSTED_BUILDING_BLOCKS = "torch.nn."


class ModelError(InputFileError):
    """A folder is not the exported nnU-Net model it claims to be."""


@dataclass
class NnUNetModel:
    """A network ready for nnU-Net's predictor, with the plans that say how to feed it.

    ``network`` may be any module with nnU-Net's output convention (logits, ``B C H W [D]``),
    e.g. an ensemble returning log-probabilities.
    """

    network: torch.nn.Module
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    configuration: str
    mirroring_axes: tuple[int, ...] | None = None
    description: str = "nnU-Net"
    network_spec: dict[str, Any] | None = None
    """How to rebuild ``network`` from plain data (``kind`` nnunet / stitch_ensemble / ensemble
    plus what that kind needs); what a bundle stores beside ``model.pt``. ``None``: an
    nnU-Net network of ``plans`` (one fold)."""
    weights_file: Path | None = None
    """The file ``network``'s weights were loaded from, when it holds exactly
    ``network.state_dict()`` (a plain ``state_dict``): a bundle carries that file as its
    ``model.pt`` (a copy, or in the pipeline a hard link: the weights stored once) instead of
    saving the same weights again in other bytes."""

    @property
    def spec(self) -> dict[str, Any]:
        """``network_spec``, or the one-fold nnU-Net description when none was given."""
        return self.network_spec or {"kind": "nnunet", "configuration": self.configuration, "folds": [None]}

    @property
    def folds(self) -> list[Any]:
        """The nnU-Net folds inside (several are averaged as nnU-Net does); ``[None]`` when unknown."""
        return list(self.spec.get("folds", [None]))

    @property
    def num_input_channels(self) -> int:
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))


class FoldEnsemble(torch.nn.Module):
    """Several folds of one nnU-Net, averaged the way nnU-Net's predictor averages them:
    the mean of their logits (``B K H W [D]``)."""

    def __init__(self, networks: list[torch.nn.Module]):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([network(x) for network in self.networks]).mean(0)


def check_architecture(plans: dict[str, Any], configuration: str) -> None:
    """Refuse plans that name classes outside ``dynamic_network_architectures`` / ``torch.nn``.

    nnU-Net imports the classes its plans name; a foreign plans file is data, not code, so
    only the architectures nnU-Net ships and torch's building blocks may be instantiated.

    Raises:
        ModelError: naming the class and what was expected.
    """
    architecture = plans.get("configurations", {}).get(configuration, {}).get("architecture")
    if not isinstance(architecture, dict):
        # nnU-Net's PlansManager resolves inherited configurations; the architecture may live there
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        architecture = PlansManager(plans).get_configuration(configuration).configuration["architecture"]
    names = {"network_class_name": architecture["network_class_name"]}
    names |= {key: architecture["arch_kwargs"].get(key) for key in architecture.get("_kw_requires_import", ())}
    for key, name in names.items():
        allowed = _TRUSTED_ARCHITECTURES if key == "network_class_name" else _TRUSTED_BUILDING_BLOCKS
        if name is not None and not str(name).startswith(allowed):
            raise ModelError(f"the plans' {configuration!r} configuration names {key}={name!r}, expected a class under {allowed!r}: a received "
                             f"model is data, not code (pass trusted=True / --trust only if you trust its author)")


def build_network(plans: dict[str, Any], dataset_json: dict[str, Any], configuration: str,
                  trusted: bool = False) -> torch.nn.Module:
    """The plain nnU-Net architecture of ``plans`` (deep supervision off, random weights).

    Built from the plans alone, never through a trainer class (which may be custom code
    the receiver does not have or should not run); ``trusted`` allows architectures
    outside ``dynamic_network_architectures`` (see :func:`check_architecture`).
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    if configuration not in plans_manager.available_configurations:
        raise ModelError(f"configuration {configuration!r} is not in the plans; "
                         f"available: {plans_manager.available_configurations}")
    if not trusted:
        check_architecture(plans, configuration)
    config = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(dataset_json)
    return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                  config.network_arch_init_kwargs_req_import,
                                  len(dataset_json["channel_names"]), label_manager.num_segmentation_heads,
                                  allow_init=True, deep_supervision=False)


def export_model(network: torch.nn.Module, plans: dict[str, Any], dataset_json: dict[str, Any], *,
                 configuration: str, target: Path, mirroring_axes: tuple[int, ...] | None,
                 provenance: dict[str, Any]) -> Path:
    """Write the portable model folder, whole or not at all (:func:`stitch_ops.outputs.output_dir`)."""
    meta = {"configuration": configuration,
            "mirroring_axes": list(mirroring_axes) if mirroring_axes is not None else None,
            **provenance}
    with output_dir(target) as staging:
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, staging / "weights.pth")
        for name, content in (("plans.json", plans), ("dataset.json", dataset_json), ("model.json", meta)):
            write_json(staging / name, content)
    return target


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_json(path, hint="the model folder is damaged: export it again")
    except CorruptFileError as err:
        raise ModelError(str(err)) from err


def load_plain(path: Path, map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code.

    numpy scalars and dtypes are allowed too (nnU-Net's checkpoints log metrics as numpy
    scalars; reconstructing them runs no user code).

    Raises:
        ModelError: in one line, naming what the file would import if it were unpickled.
    """
    import numpy as np

    allowed = [np._core.multiarray.scalar, np.dtype, *(getattr(np.dtypes, name) for name in dir(np.dtypes)
                                                      if name.endswith("DType"))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise ModelError(f"{path} does not exist") from err
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        text = str(err)
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
        if found:
            raise ModelError(f"{path} is not plain data: loading it would run {found.group(1)}; refused "
                             f"(a model is data, not code: ask the sender for tensors and plain data)") from None
        # PyTorch's explanation is several lines of advice; keep the line that says what is wrong
        boilerplate = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Re-running")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        first = next((line for line in lines if not line.startswith(boilerplate)), lines[0] if lines else
                     type(err).__name__)
        raise ModelError(f"cannot load {path} as plain weights: {first[:200]}") from None


def load_model(folder: Path, device: torch.device | str = "cpu") -> NnUNetModel:
    """Load an exported model folder, checking that it is what it claims to be.

    Any other model source (a bundle, an nnU-Net results folder or export zip) is opened
    with :func:`stitch_ops.bundle.sources.open_model`.

    Raises:
        ModelError: a file is missing, unreadable, or the weights do not fit the plans.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"no model folder at {folder}: expected a folder with {', '.join(MODEL_FILES)}")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"{folder} is not an exported nnU-Net model: missing {missing} "
                         f"(expected {list(MODEL_FILES)})")
    plans, dataset_json, meta = (_read_json(folder / n) for n in ("plans.json", "dataset.json", "model.json"))
    weights = load_plain(folder / "weights.pth", map_location=device)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelError(f"{folder / 'weights.pth'} is not a state_dict of tensors")
    if not isinstance(meta, dict) or not isinstance(meta.get("configuration"), str):
        raise ModelError(f"{folder / 'model.json'} names no nnU-Net configuration (e.g. \"2d\"); the model "
                         f"folder is damaged: export it again")
    network = build_network(plans, dataset_json, meta["configuration"])
    result = network.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"weights in {folder} do not fit the architecture of its plans.json: "
                         f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    axes = meta.get("mirroring_axes")
    return NnUNetModel(network.to(device).eval(), plans, dataset_json, meta["configuration"],
                       tuple(axes) if axes is not None else None, description=meta.get("description", "nnU-Net"),
                       network_spec={"kind": "nnunet", "configuration": meta["configuration"],
                                     "folds": [meta.get("fold")], "mirroring_axes": axes},
                       weights_file=folder / "weights.pth")
