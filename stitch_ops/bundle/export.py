"""A trained model as a MONAI bundle another institution can receive: folder and ``.zip``.

The bundle holds what a receiver needs and nothing about the patients it was trained on::

    configs/metadata.json    every mandatory key of the MONAI bundle specification, with the
                             versions that actually ran and the real input/output format
    configs/inference.json   ``network_def`` (for MONAI's verify_net_in_out) and ``inference``
    models/model.pt          the network's state_dict (weights_only-loadable)
    models/network.json      how to rebuild the network from plain data (kind, folds, ...)
    models/plans.json        the nnU-Net plans that preprocess its input (+ dataset.json:
                             channels, labels, file ending; nothing per case)
    docs/README.md           generated: trained on what, which folds, the owner's metrics
    LICENSE
    manifest.sha256          SHA-256 of every other file (``sha256sum -c manifest.sha256``)

Never exported: images, labels, case identifiers, split files, nnU-Net's
``dataset_fingerprint.json`` (per-case shapes and spacings), training logs.
"""

from __future__ import annotations

import logging
import math
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitch_ops import __version__
from stitch_ops.approaches import Approach, ensemble_finetuned, finetuned
from stitch_ops.budget import BUDGET_JSON
from stitch_ops.bundle.definitions import training_values, with_values
from stitch_ops.bundle.manifest import MANIFEST, write_manifest
from stitch_ops.bundle.sources import open_model, write_model_dir
from stitch_ops.bundle.verify import verify_bundle
from stitch_ops.config import PARTIES, Params
from stitch_ops.errors import UserError
from stitch_ops.nnunet.model import NnUNetModel
from stitch_ops.outputs import output_dir, partial_path, read_json, remove_leftovers, swap_in, write_json
from stitch_ops.paths import PairPaths, bundle_definition
from stitch_ops.stitching import ParentSpec, TwoModelEnsemble

__all__ = ["ExportInfo", "MANIFEST", "PUBLIC_DATASET_KEYS", "export_bundle", "network_data_format",
           "public_dataset_json", "write_manifest"]

logger = logging.getLogger(__name__)

# dataset.json keys that describe the data format; anything else (e.g. an MSD-style
# "training" list of file names) may identify cases and stays home
PUBLIC_DATASET_KEYS = ("channel_names", "labels", "file_ending", "regions_class_order",
                       "overwrite_image_reader_writer", "numTraining", "name", "description",
                       "reference", "licence", "release")
DEFAULT_LICENSE = """Copyright (c) the exporting institution.

The weights in models/ were trained on data that never left the exporting institution.
Use them under the terms the exporting institution states; absent such terms, for
research only, without warranty of any kind.
"""


@dataclass(frozen=True)
class ExportInfo:
    """What the generated metadata and README say about the model.

    Attributes:
        approach: the approach (``local``, ``finetune``, ``stitch``, ...), or ``nnunet`` for a
            model trained outside this project.
        trained_on: a description of the data (never case ids), e.g. ``"polyp party a"``.
        eval_metrics: the owner's validation metrics (flat ``name -> number``).
        version: the bundle's version.
        authors, copyright: as the MONAI specification asks.
        notes: extra lines for the README (e.g. the selected stitch position).
        name, description: the bundle's name and description (default: the bundle
            definition's, else generated from the approach and the model).
        parents: for a model combined from others (a stitch-ensemble), what identifies each
            parent (``role -> {dataset, trainer, plans, configuration, folds, sha256}``);
            recorded in the metadata and the README.
        trained_with: values of the definition's ``configs/train.json`` that say how this
            model was trained, by MONAI id (``epochs``, ``schedule#initial_lr``): set in the
            bundle's copy where the config has that id (:func:`trained_with`).
    """

    approach: str = "nnunet"
    trained_on: str = "the exporting institution's own data"
    eval_metrics: Mapping[str, float] = field(default_factory=dict)
    version: str = "0.1.0"
    authors: str = "the exporting institution"
    copyright: str = "Copyright (c) the exporting institution"
    notes: tuple[str, ...] = ()
    name: str | None = None
    description: str | None = None
    parents: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    trained_with: Mapping[str, Any] = field(default_factory=dict)


def public_dataset_json(dataset_json: Mapping[str, Any]) -> dict[str, Any]:
    """``dataset.json`` reduced to the data format (channels, labels, file ending)."""
    return {key: dataset_json[key] for key in PUBLIC_DATASET_KEYS if key in dataset_json}


def _public(value: Any) -> Any:
    """Every ``dataset_json`` inside a network description reduced like :func:`public_dataset_json`."""
    if isinstance(value, dict):
        return {k: public_dataset_json(v) if k == "dataset_json" and isinstance(v, dict) else _public(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _total_strides(model: NnUNetModel) -> list[int]:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    arch = PlansManager(model.plans).get_configuration(model.configuration).configuration["architecture"]
    strides = arch["arch_kwargs"]["strides"]
    dims = len(strides[-1]) if isinstance(strides[-1], (list, tuple)) else len(model.plans["configurations"]
                                                                                  [model.configuration]["patch_size"])
    per_axis = [[s] * dims if isinstance(s, int) else list(s) for s in strides]
    return [math.prod(int(s[axis]) for s in per_axis) for axis in range(dims)]


def network_data_format(model: NnUNetModel) -> dict[str, Any]:
    """MONAI's ``network_data_format`` of ``model``: channels and their names, spatial dims
    (multiples of the network's total stride), the target spacing, label names."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(model.plans)
    configuration = plans_manager.get_configuration(model.configuration)
    labels = plans_manager.get_label_manager(model.dataset_json)
    names = {int(v) if not isinstance(v, (list, tuple)) else int(v[0]): k
             for k, v in model.dataset_json["labels"].items()}
    channels = model.dataset_json["channel_names"]
    # twice the total stride: the deepest stage sees 2 voxels per axis (instance norm needs > 1)
    spatial = [f"{2 * stride}*n" for stride in _total_strides(model)]
    return {
        "inputs": {"image": {
            "type": "image", "format": "magnitude",
            "modality": ", ".join(str(v) for v in channels.values()),
            "num_channels": len(channels), "spatial_shape": spatial, "dtype": "float32",
            "value_range": [], "is_patch_data": True,
            "channel_def": {str(k): str(v) for k, v in channels.items()},
            "spacing": [float(s) for s in configuration.spacing],
            "preprocessing": "nnU-Net plans in models/plans.json (resampling and normalisation)",
        }},
        "outputs": {"pred": {
            "type": "image", "format": "segmentation",
            "num_channels": labels.num_segmentation_heads, "spatial_shape": spatial, "dtype": "float32",
            "value_range": [], "is_patch_data": True,
            "channel_def": {str(i): names.get(i, str(i)) for i in range(labels.num_segmentation_heads)},
        }},
    }


def _versions() -> dict[str, Any]:
    import numpy
    import torch
    from importlib.metadata import version

    # the installed distribution's version: `import monai` would load every MONAI submodule
    # (seconds per bundle stage) to read the same string
    return {"monai_version": version("monai"), "pytorch_version": torch.__version__,
            "numpy_version": numpy.__version__,
            "required_packages_version": {"nnunetv2": version("nnunetv2"), "stitch_ops": __version__}}


def _metadata(model: NnUNetModel, info: ExportInfo, template: Mapping[str, Any]) -> dict[str, Any]:
    labels = ", ".join(f"{v}: {k}" for k, v in model.dataset_json["labels"].items())
    meta = {
        "schema": template.get("schema", "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/"
                                         "download/0.8.1/meta_schema_20220324.json"),
        "version": info.version,
        "changelog": {info.version: f"exported by stitch_ops {__version__}"},
        **_versions(),
        "name": info.name or template.get("name", f"stitch_ops {info.approach} model"),
        "task": template.get("task", f"Segmentation ({labels}) with an nnU-Net"),
        "description": info.description or template.get("description",
                                                         f"{model.description}, trained on {info.trained_on}."),
        "authors": info.authors,
        "copyright": info.copyright,
        "data_source": info.trained_on,
        "data_type": model.dataset_json.get("file_ending", ""),
        "image_classes": ", ".join(f"{k}: {v}" for k, v in model.dataset_json["channel_names"].items()),
        "label_classes": labels,
        "pred_classes": labels,
        "eval_metrics": dict(info.eval_metrics),
        "intended_use": template.get("intended_use", "Research only."),
        "network_data_format": network_data_format(model),
        "stitch_ops": {"approach": info.approach, "trained_on": info.trained_on, "kind": model.spec["kind"],
                       "folds": model.folds, "configuration": model.configuration},
    }
    if info.parents:
        meta["stitch_ops"]["parents"] = {role: dict(record) for role, record in info.parents.items()}
    return meta


INFERENCE_CONFIG = {
    "bundle_root": ".",
    "input_dir": "images",
    "output_dir": "predictions",
    "device": "auto",
    "save_probabilities": False,
    "progress": True,
    "network_def": {"_target_": "stitch_ops.bundle.workflows.bundle_network", "bundle_root": "@bundle_root"},
    "inference": {
        "_target_": "stitch_ops.bundle.workflows.segment",
        "model_dir": "@bundle_root",
        "input_dir": "@input_dir",
        "output_dir": "@output_dir",
        "device": "@device",
        "save_probabilities": "@save_probabilities",
        "progress": "@progress",
    },
    "run": ["@inference"],
}


def _readme(model: NnUNetModel, info: ExportInfo, meta: Mapping[str, Any], approach_doc: str) -> str:
    fmt = meta["network_data_format"]
    lines = [f"# {meta['name']}", "", meta["description"], "",
             "## What this model is", "",
             f"- approach: `{info.approach}` ({model.spec['kind']})",
             f"- trained on: {info.trained_on}",
             *(_parent_lines(info.parents) if info.parents else
               [f"- nnU-Net configuration `{model.configuration}`, folds {model.folds}"]),
             f"- input: {fmt['inputs']['image']['num_channels']} channel(s) "
             f"{fmt['inputs']['image']['channel_def']}, spacing {fmt['inputs']['image']['spacing']}",
             f"- output: {fmt['outputs']['pred']['channel_def']}",
             f"- exported with stitch_ops {__version__}, nnunetv2 "
             f"{meta['required_packages_version']['nnunetv2']}, MONAI {meta['monai_version']}, "
             f"PyTorch {meta['pytorch_version']}", *(f"- {note}" for note in info.notes), "",
             "## Metrics on the owner's validation data", ""]
    if info.eval_metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in info.eval_metrics.items()]
    else:
        lines.append("None recorded at export.")
    lines += ["", "## Use", "", "Check it first, then segment a folder of nnU-Net-named images "
              "(`{case}_0000" + model.dataset_json.get("file_ending", "") + "`):", "", "```bash",
              "stitch-ops bundle verify THIS_BUNDLE",
              "stitch-ops predict --model THIS_BUNDLE --input images/ --out predictions/",
              "# or with MONAI:",
              "python -m monai.bundle run --config_file THIS_BUNDLE/configs/inference.json "
              "--bundle_root THIS_BUNDLE --input_dir images/ --output_dir predictions/", "```", "",
              "Combine it with your own model without sharing data: `stitch-ops stitch --own YOUR_MODEL "
              "--other THIS_BUNDLE --images YOUR_UNLABELED_IMAGES --out stitched/`.", "",
              "No image, label, case identifier, split or per-case fingerprint of the training data is "
              "in this bundle; `manifest.sha256` lists the SHA-256 of every file.", ""]
    if approach_doc:
        lines += ["## The approach", "", approach_doc.split("\n", 1)[-1].strip(), ""]
    return "\n".join(lines)


def _parent_lines(parents: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = []
    for role, record in parents.items():
        digests = ", ".join(f"{name} `{digest}`" for name, digest in record.get("sha256", {}).items())
        lines.append(f"- {role} parent: dataset `{record.get('dataset')}`, trainer `{record.get('trainer')}`, plans "
                     f"`{record.get('plans')}`, configuration `{record.get('configuration')}`, folds "
                     f"{record.get('folds')}; SHA-256 of {digests or 'its weights: not recorded'}")
    return lines


def _zip(folder: Path, target: Path, name: str) -> Path:
    """Write ``folder``'s files into the zip ``target`` under the top-level folder ``name``."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            handle.write(path, f"{name}/{path.relative_to(folder).as_posix()}")
    return target


def export_bundle(model: NnUNetModel, target: Path, info: ExportInfo = ExportInfo(), *,
                  definition: Path | None = None, make_zip: bool = True, link_weights: bool = False) -> Path:
    """Write ``model`` as a verified MONAI bundle at ``target`` (and ``target.zip``), atomically.

    Args:
        model: any opened model (:func:`stitch_ops.bundle.sources.open_model`).
        target: the bundle folder to write.
        info: what the metadata and README say about it.
        definition: a bundle definition (``bundles/<approach>``) whose name, task, description,
            licence, README and training config are carried over; optional.
        make_zip: also write ``<target>.zip`` (the bundle folder inside).
        link_weights: hard-link ``models/model.pt`` to the model's weights file instead of
            copying it (:func:`~stitch_ops.bundle.sources.write_model_dir`): only for files
            nothing changes in place, like the pipeline's exports.

    Returns:
        ``target``.
    """
    target = Path(target)
    definition = Path(definition) if definition is not None else None
    archive = target.with_name(target.name + ".zip")
    remove_leftovers(archive)
    with output_dir(target) as staging:  # verified before it is swapped in
        (staging / "configs").mkdir()
        (staging / "docs").mkdir()
        template: dict[str, Any] = {}
        approach_doc = ""
        if definition is not None and definition.is_dir():
            if (definition / "configs" / "metadata.json").is_file():
                template = read_json(definition / "configs" / "metadata.json",
                                     hint=f"fix the bundle definition {definition}")
            for config in sorted((definition / "configs").glob("*.json")):
                if config.name == "train.json":
                    write_json(staging / "configs" / config.name,
                               with_values(read_json(config, hint=f"fix the bundle definition {definition}"),
                                           info.trained_with), indent=4, ensure_ascii=False)
                elif config.name not in ("metadata.json", "inference.json"):
                    shutil.copy(config, staging / "configs" / config.name)
            if (definition / "docs" / "README.md").is_file():
                approach_doc = (definition / "docs" / "README.md").read_text()
        licence = definition / "LICENSE" if definition is not None else None
        (staging / "LICENSE").write_text(licence.read_text() if licence is not None and licence.is_file()
                                         else DEFAULT_LICENSE)
        public = NnUNetModel(model.network, model.plans, public_dataset_json(model.dataset_json),
                             model.configuration, model.mirroring_axes, model.description,
                             _public(model.spec), model.weights_file)
        write_model_dir(public, staging / "models", link_weights=link_weights)
        meta = _metadata(public, info, template)
        write_json(staging / "configs" / "metadata.json", meta, indent=4)
        write_json(staging / "configs" / "inference.json", INFERENCE_CONFIG, indent=4)
        (staging / "docs" / "README.md").write_text(_readme(public, info, meta, approach_doc))
        write_manifest(staging)
        verify_bundle(staging)
        # folder and zip are one unit: the zip is written from the verified staging folder,
        # and an old zip goes before the new folder comes in, so a killed export never leaves
        # a new folder beside an old zip (at worst a new folder and no zip yet)
        if make_zip:
            staged_zip = _zip(staging, partial_path(archive), target.name)
            archive.unlink(missing_ok=True)
    if make_zip:
        swap_in(staged_zip, archive)
    logger.info("bundle written to %s%s", target, " (+ .zip)" if make_zip else "")
    return target


def flat_metrics(summary_file: Path | None) -> dict[str, float]:
    """Numeric entries of a ``summary.json`` (aggregates only: nothing per case)."""
    if summary_file is None or not Path(summary_file).is_file():
        return {}
    summary = read_json(summary_file, hint="rerun the evaluation stage")
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def ensemble_members(approach: str, trained_on: str) -> list[tuple[str, str]]:
    """``(approach, trained_on)`` of the two models a plain ensemble averages; ``[]`` for
    any other approach (``ensemble/a_and_b``: both basis models; ``ensemble_finetuned/a_and_b_to_p``:
    p's basis model and the other's model fine-tuned on p's data)."""
    if approach == Approach.ENSEMBLE:
        return [(Approach.LOCAL.value, party) for party in PARTIES]
    if approach == Approach.ENSEMBLE_FINETUNED:
        party = next((p for p in PARTIES if ensemble_finetuned(p).trained_on == trained_on), None)
        if party is None:
            raise UserError(f"an {approach} model is one of "
                            f"{[ensemble_finetuned(p).trained_on for p in PARTIES]}, got {trained_on!r}")
        return [(Approach.LOCAL.value, party), (Approach.FINETUNE.value, finetuned(party).trained_on)]
    return []


def plain_ensemble(models: list) -> object:
    """Two opened models as one network (their softmax averaged), fed the first one's preprocessing."""
    first, second = models
    spec = {"kind": "ensemble", "members": [ParentSpec.of_model(m).to_dict() for m in models]}
    return NnUNetModel(TwoModelEnsemble(first.network, second.network), first.plans, first.dataset_json,
                       first.configuration, None, "plain ensemble (softmax average)", spec)


def trained_with(params: Params, budget_file: Path) -> dict[str, Any]:
    """How the pipeline trained a model, as ``train.json`` values by MONAI id: the profile's
    nnU-Net schedule and seed, then what the model's ``budget.json`` records (its epochs,
    iterations per epoch and, where the approach has them, base learning rate, warm-up and
    rounds: the resolved values, e.g. a learning rate the sweep chose). Without a
    ``budget.json`` (a model that trained nothing, e.g. an ensemble) only the profile's values."""
    recorded = read_json(budget_file, hint="rerun the training stage that writes it") if budget_file.is_file() else {}
    return training_values(params, recorded)


def export_pipeline_model(pair: str, approach: str, trained_on: str, fold: int, params: Params, *,
                          root: Path = Path("."), make_zip: bool = True) -> Path:
    """The trained bundle of one pipeline model, with its evaluation metrics when scored:
    ``exports/{pair}/{approach}_{trained_on}_fold{k}`` (the ``bundle*`` stages)."""
    params.pair(pair)
    paths = PairPaths(pair, root)
    notes = [f"fold {fold} of the {pair} pair"]
    members = ensemble_members(approach, trained_on)
    if members:
        model = plain_ensemble([open_model(paths.model_dir(a, t, fold) / "export") for a, t in members])
        notes.append(f"the softmax average of {members[0][0]} {members[0][1]} and {members[1][0]} {members[1][1]}, "
                     f"both fed {members[0][1]}'s preprocessing (the pipeline averages each model's own "
                     f"prediction in the image geometry)")
    else:
        model = open_model(paths.model_dir(approach, trained_on, fold) / "export")
    info = ExportInfo(approach=approach, trained_on=f"{pair} party {trained_on} (profile {params.profile})",
                      eval_metrics=flat_metrics(paths.metrics(approach, trained_on, fold) / "summary.json"),
                      authors="stitch_ops developers", copyright="Copyright (c) stitch_ops developers",
                      notes=tuple(notes),
                      trained_with=trained_with(params, paths.metrics(approach, trained_on, fold) / BUDGET_JSON))
    # the exports are written whole and swapped in, and DVC links them to its cache: the
    # bundle's model.pt links to the same file, so the weights are stored once
    return export_bundle(model, paths.export(approach, trained_on, fold), info,
                         definition=bundle_definition(approach, root), make_zip=make_zip, link_weights=True)
