"""A trained nnU-Net as portable files, and loading it back as *data*, never as code.

An exported model is a folder with ``weights.pth`` (a plain ``state_dict``, loaded with
``weights_only=True``), ``plans.json``, ``dataset.json`` and ``model.json`` (configuration,
fold, mirroring axes, what trained it). That folder is what a party hands to another
(inside a MONAI bundle) and what every prediction in the pipeline loads.
"""

from __future__ import annotations

import logging
import re
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stitch_ops.errors import InputFileError, UserError, one_line
from stitch_ops.limits import check_file_size, limits
from stitch_ops.outputs import CorruptFileError, output_dir, read_json, write_json

logger = logging.getLogger(__name__)

MODEL_FILES = ("weights.pth", "plans.json", "dataset.json", "model.json")

# the architectures nnU-Net ships (``dynamic_network_architectures``) and the torch layers its
# plans name as building blocks: nothing else a received plans file names is ever imported
ALLOWED_ARCHITECTURES = ("dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                         "dynamic_network_architectures.architectures.unet.ResidualUNet")
ALLOWED_LAYERS = tuple(f"torch.nn.{name}" for name in (
    "Conv1d", "Conv2d", "Conv3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "GroupNorm", "LayerNorm",
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
    "LeakyReLU", "ReLU", "PReLU", "ELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid", "Identity"))

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


@functools.cache
def allowed_classes() -> dict[str, dict[str, type]]:
    """Per kind (``network`` / ``layer``), every spelling of an allowed class -> the class.

    A class is listed under its public name (``torch.nn.Conv2d``) and its defining module's
    name (``torch.nn.modules.conv.Conv2d``, what nnU-Net writes); both resolve, by
    ``pydoc.locate`` as nnU-Net does, to exactly that class (checked here, once).
    """
    import importlib
    import pydoc

    table: dict[str, dict[str, type]] = {"network": {}, "layer": {}}
    for kind, names in (("network", ALLOWED_ARCHITECTURES), ("layer", ALLOWED_LAYERS)):
        for name in names:
            module, _, attribute = name.rpartition(".")
            cls = getattr(importlib.import_module(module), attribute, None)
            if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
                continue  # not in the installed version
            for spelling in (name, f"{cls.__module__}.{cls.__qualname__}"):
                if pydoc.locate(spelling) is cls:
                    table[kind][spelling] = cls
    return table


def _architecture(plans: dict[str, Any], configuration: str) -> dict[str, Any]:
    """The plans' ``architecture`` entry of ``configuration``, exactly as :func:`build_network` will
    hand it to nnU-Net (inherited configurations and pre-2.4 plans resolved by nnU-Net's
    ``PlansManager``, which imports nothing from the plans)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        return PlansManager(plans).get_configuration(configuration).configuration["architecture"]
    except Exception as err:  # noqa: BLE001 - a malformed plans file fails in many ways
        raise ModelError(f"the plans' {configuration!r} configuration has no architecture nnU-Net can read "
                         f"({type(err).__name__}: {str(err)[:120]})") from None


def check_architecture(plans: dict[str, Any], configuration: str) -> None:
    """Refuse plans naming anything but nnU-Net's architectures and torch's layers, before anything is built.

    nnU-Net resolves the class names in its plans (``network_class_name`` and every
    ``_kw_requires_import`` entry: ``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``) with
    ``pydoc.locate``, which walks any attribute path (``torch.nn.modules.module.torch.os.system``
    is ``os.system``), and calls what it finds with the plans' keyword arguments. A received
    plans file is data, not code: each name must be one spelling of a class in
    :func:`allowed_classes` (no import, no attribute walk happens to check it), and the network
    the plans describe must fit the size limit of a weights file (:mod:`stitch_ops.limits`).

    Raises:
        ModelError: in one line, naming the entry, what it names and what is allowed.
    """
    architecture = _architecture(plans, configuration)
    architecture = architecture if isinstance(architecture, dict) else {}
    kwargs = architecture.get("arch_kwargs")
    required = architecture.get("_kw_requires_import", ())
    if not isinstance(kwargs, dict) or not isinstance(required, (list, tuple)):
        raise ModelError(f"the plans' {configuration!r} architecture needs an 'arch_kwargs' object and a "
                         f"'_kw_requires_import' list; the plans file is damaged")
    table = allowed_classes()
    names = [("network_class_name", architecture.get("network_class_name"), "network")]
    for key in required:
        if not isinstance(key, str) or key not in kwargs:
            raise ModelError(f"the plans' {configuration!r} architecture lists {key!r} in _kw_requires_import "
                             f"but not in arch_kwargs; the plans file is damaged")
        names.append((key, kwargs[key], "layer"))
    for key, name, kind in names:
        if name is None and kind == "layer":
            continue  # nnU-Net leaves an unused building block (e.g. dropout_op) as null
        if not isinstance(name, str) or name not in table[kind]:
            allowed = ("one of nnU-Net's architectures (dynamic_network_architectures.architectures.unet."
                       "PlainConvUNet, ResidualEncoderUNet, ResidualUNet)" if kind == "network"
                       else "an allowed torch layer (torch.nn.Conv2d, InstanceNorm2d, LeakyReLU, ...)")
            raise ModelError(f"the plans' {configuration!r} configuration names {key}={str(name)[:120]!r}, which "
                             f"is not {allowed}: refused, nothing was imported (a received model is data, not "
                             f"code; pass --trust only if you trust its author)")
    _check_network_size(kwargs, configuration)


def _check_network_size(kwargs: dict[str, Any], configuration: str) -> None:
    """Refuse a network the plans describe whose parameters alone would exceed the weights-file
    limit (an upper bound from stage widths, kernels and convolutions per stage)."""
    try:
        features = [int(f) for f in kwargs["features_per_stage"]]
        stages = len(features)
        kernels = [math.prod(k) if isinstance(k, (list, tuple)) else int(k) for k in kwargs["kernel_sizes"]]
        per_stage = kwargs.get("n_conv_per_stage", None)
        if per_stage is None:  # residual encoders: two convolutions a block
            per_stage = [2 * int(n) for n in _per_stage(kwargs["n_blocks_per_stage"], stages)]
        encoder = [int(n) for n in _per_stage(per_stage, stages)]
        decoder = [int(n) for n in _per_stage(kwargs.get("n_conv_per_stage_decoder", 1), stages - 1)]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ModelError(f"the plans' {configuration!r} architecture needs features_per_stage, kernel_sizes and "
                         f"convolutions per stage as numbers; the plans file is damaged") from None
    if stages == 0 or len(kernels) != stages or min(features + kernels + encoder) <= 0:
        raise ModelError(f"the plans' {configuration!r} architecture has {stages} stage(s) with features "
                         f"{features[:8]} and kernels {kernels[:8]}: expected one positive entry a stage")
    parameters = 0
    for s in range(stages):
        wider = max(features[s], features[s - 1] if s else 0)
        parameters += kernels[s] * features[s] * encoder[s] * wider
        if s < stages - 1:
            parameters += kernels[s] * features[s] * (2 * decoder[s] * features[s] + features[s + 1])
    cap = limits()
    if 4 * parameters > cap.max_file_bytes:
        raise cap.refuse(f"the network the plans' {configuration!r} configuration describes (up to "
                         f"{parameters:,} parameters)", 4 * parameters, "max_file_bytes")


def _per_stage(value: Any, stages: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * stages


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
    try:
        config = plans_manager.get_configuration(configuration)
        label_manager = plans_manager.get_label_manager(dataset_json)
        return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                      config.network_arch_init_kwargs_req_import,
                                      len(dataset_json["channel_names"]), label_manager.num_segmentation_heads,
                                      allow_init=True, deep_supervision=False)
    except Exception as err:  # noqa: BLE001 - an allowed class given bad arguments fails in many ways
        if trusted:
            raise
        raise ModelError(f"the plans' {configuration!r} architecture cannot be built from its arguments "
                         f"({type(err).__name__}: {one_line(err)[:160]}); the plans file is damaged") from None


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


def read_received_json(path: Path, hint: str) -> Any:
    """``read_json`` of a received file, refused unread when over the JSON size limit."""
    if Path(path).is_file():
        check_file_size(path, "max_json_bytes")
    return read_json(path, hint=hint)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_received_json(path, hint="the model folder is damaged: export it again")
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
        check_file_size(path)
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise ModelError(f"{path} does not exist") from err
    except UserError:
        raise
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


def load_weights(network: torch.nn.Module, weights: Any, source: Path, described_by: str) -> None:
    """Load a received ``state_dict`` into ``network``, refusing in one line what does not fit.

    Args:
        source: the weights file (for the message).
        described_by: what described the network (e.g. ``"its plans.json and dataset.json"``).

    Raises:
        ModelError: not a state_dict of tensors, or keys or shapes that do not fit (the first
            mismatch named, e.g. an output layer sized for another number of labels).
    """
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelError(f"{source} is not a state_dict of tensors")
    own = network.state_dict()
    wrong = [(key, tuple(value.shape), tuple(own[key].shape)) for key, value in weights.items()
             if key in own and tuple(value.shape) != tuple(own[key].shape)]
    if wrong:
        key, found, expected = wrong[0]
        output_layer = "seg_layers" in key or key in list(own)[-2:]
        hint = " (the output layer: dataset.json's labels are not those the weights were trained for)" if output_layer else ""
        raise ModelError(f"{source} does not fit the network {described_by} describe: {key} has shape {found}, "
                         f"the network expects {expected}{hint}" + (f"; {len(wrong) - 1} more" if len(wrong) > 1
                                                                      else ""))
    result = network.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{source} does not fit the network {described_by} describe: missing "
                         f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")


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
    if not isinstance(meta, dict) or not isinstance(meta.get("configuration"), str):
        raise ModelError(f"{folder / 'model.json'} names no nnU-Net configuration (e.g. \"2d\"); the model "
                         f"folder is damaged: export it again")
    network = build_network(plans, dataset_json, meta["configuration"])
    load_weights(network, weights, folder / "weights.pth", "its plans.json and dataset.json")
    axes = meta.get("mirroring_axes")
    return NnUNetModel(network.to(device).eval(), plans, dataset_json, meta["configuration"],
                       tuple(axes) if axes is not None else None, description=meta.get("description", "nnU-Net"),
                       network_spec={"kind": "nnunet", "configuration": meta["configuration"],
                                     "folds": [meta.get("fold")], "mirroring_axes": axes},
                       weights_file=folder / "weights.pth")
