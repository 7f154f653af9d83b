"""A trained nnU-Net as portable files, and loading it back as *data*, never as code.

An exported model is a folder with ``weights.pth`` (a plain ``state_dict``, loaded with
``weights_only=True``), ``plans.json``, ``dataset.json`` and ``model.json`` (configuration,
fold, mirroring axes, what trained it). That folder is what a party hands to another
(inside a MONAI bundle) and what every prediction in the pipeline loads.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stitch_ops.errors import InputFileError, describe

logger = logging.getLogger(__name__)

MODEL_FILES = ("weights.pth", "plans.json", "dataset.json", "model.json")


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

    @property
    def num_input_channels(self) -> int:
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))


def build_network(plans: dict[str, Any], dataset_json: dict[str, Any], configuration: str) -> torch.nn.Module:
    """The plain nnU-Net architecture of ``plans`` (deep supervision off, random weights)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    if configuration not in plans_manager.available_configurations:
        raise ModelError(f"configuration {configuration!r} is not in the plans; "
                         f"available: {plans_manager.available_configurations}")
    config = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(dataset_json)
    return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                  config.network_arch_init_kwargs_req_import,
                                  len(dataset_json["channel_names"]), label_manager.num_segmentation_heads,
                                  allow_init=True, deep_supervision=False)


def export_model(network: torch.nn.Module, plans: dict[str, Any], dataset_json: dict[str, Any], *,
                 configuration: str, target: Path, mirroring_axes: tuple[int, ...] | None,
                 provenance: dict[str, Any]) -> Path:
    """Write the portable model folder atomically (a temp folder renamed into place)."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, staging / "weights.pth")
    (staging / "plans.json").write_text(json.dumps(plans, indent=2))
    (staging / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    meta = {"configuration": configuration,
            "mirroring_axes": list(mirroring_axes) if mirroring_axes is not None else None,
            **provenance}
    (staging / "model.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{path} is not valid JSON ({err}); the model folder is damaged: "
                         f"export it again") from err


def load_model(folder: Path, device: torch.device | str = "cpu") -> NnUNetModel:
    """Load an exported model folder, checking that it is what it claims to be.

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
    try:
        weights = torch.load(folder / "weights.pth", map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        raise ModelError(f"cannot load {folder / 'weights.pth'} as plain weights ({describe(err)}); a model is "
                         f"data, not code: it must be a state_dict of tensors") from err
    network = build_network(plans, dataset_json, meta["configuration"])
    result = network.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"weights in {folder} do not fit the architecture of its plans.json: "
                         f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    axes = meta.get("mirroring_axes")
    return NnUNetModel(network.to(device).eval(), plans, dataset_json, meta["configuration"],
                       tuple(axes) if axes is not None else None, description=meta.get("description", "nnU-Net"))
