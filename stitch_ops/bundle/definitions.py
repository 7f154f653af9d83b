"""``stitch-ops bundle definitions``: write each bundle definition's ``configs/metadata.json``
and the values of its ``configs/train.json`` (``bundles/<approach>/``), or ``--check`` that
they are current.

Every definition shares the MONAI bundle specification's keys, the versions it was written
for, the data format and the intended use (:data:`SHARED`); what an approach says about itself
is its :class:`DefinitionText`. A definition's ``train.json`` keeps its structure (written by
hand: what ``monai.bundle run training`` builds), and its values say how the default profile
trains the approach: the nnU-Net schedule, the seed, and the approach's planned schedule
(:func:`training_values`), so that a hospital training from a definition gets the schedule the
pipeline's results come from. The files stay committed, because ``python -m monai.bundle run``
reads them in the definition's folder; the test suite fails while one differs from what this
writes. An exported bundle is rendered again at export, with the versions that ran, the model's
real data format and what its ``budget.json`` recorded (:mod:`stitch_ops.bundle.export`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stitch_ops.approaches import Approach
from stitch_ops.config import Params
from stitch_ops.outputs import read_json, write_text
from stitch_ops.paths import bundle_definition

VERSION = "0.1.0"
TEXT_KEYS = ("name", "task", "description")
"""Where an approach's own words go, in the order of the specification's keys."""


@dataclass(frozen=True)
class DefinitionText:
    """What one approach's definition says about itself (the rest is :data:`SHARED`)."""

    first_version: str
    name: str
    task: str
    description: str
    data_source: str
    trains_as: str | None = None
    """The approach whose planned schedule its ``train.json`` runs, if not its own (``a&b→a``
    fine-tunes the other party's model: the ``finetune`` schedule)."""


TEXTS: dict[str, DefinitionText] = {
    Approach.LOCAL: DefinitionText(
        "first version: one nnU-Net trained on the party's own data (approach `a`)",
        "stitch_ops local model",
        "Binary segmentation with an nnU-Net trained on one party's own data",
        "The 'train on own data' approach of stitch_ops (shorthand `a`): a 2-D nnU-Net planned, preprocessed and "
        "trained on one party's data only. A trained copy of this bundle carries the portable model in "
        "models/fold_<k>/ and is what one institution hands to another.",
        "the party's own nnU-Net raw dataset (synthetic by default)"),
    Approach.FINETUNE: DefinitionText(
        "first version: fine-tuning with warm-up (approach `b→a`)",
        "stitch_ops fine-tuned model",
        "Binary segmentation with another party's nnU-Net fine-tuned on own data",
        "The fine-tuning approach of stitch_ops (shorthand `b→a`): another party's trained nnU-Net (e.g. from its "
        "`local` bundle) trained further on own data with a small base learning rate (1e-3) after a linear warm-up "
        "from the last non-zero learning rate of its original schedule. Own data is preprocessed with the received "
        "model's plans. A trained copy carries the fine-tuned model in models/fold_<k>/.",
        "another party's trained model and the party's own nnU-Net raw dataset"),
    Approach.ENSEMBLE: DefinitionText(
        "first version: softmax ensembles (approaches `a&b`, `a&b→a`)",
        "stitch_ops softmax ensemble",
        "Binary segmentation by averaging the softmax of several nnU-Nets",
        "The ensemble approaches of stitch_ops: `a&b` averages the softmax probabilities of own and another party's "
        "model; `a&b→a` averages own model with the other party's model fine-tuned on own data (train.json runs "
        "that fine-tuning). Each member keeps its own plans; probabilities are averaged in the raw image geometry, "
        "as nnU-Net's ensembling does.",
        "trained models only (a&b); own data for a&b→a", trains_as=Approach.FINETUNE),
    Approach.FEDERATED: DefinitionText(
        "first version: FedAvg on Ray (approach `a‖b`)",
        "stitch_ops federated model",
        "Binary segmentation with an nnU-Net trained by federated averaging",
        "The federated approach of stitch_ops (shorthand `a‖b`): one Ray actor per party trains an nnU-Net on that "
        "party's data only; after every epoch the weights are averaged (FedAvg, weighted by training-set size) and "
        "every party continues from the average. Plans come from the parties' combined fingerprint. Runs on one "
        "machine or, unchanged, on a Ray cluster.",
        "each party's own nnU-Net raw dataset, never pooled"),
    Approach.MERGED: DefinitionText(
        "first version: pooled data (approach `a+b`)",
        "stitch_ops merged-data model",
        "Binary segmentation with an nnU-Net trained on pooled data of two parties",
        "The merged-data approach of stitch_ops (shorthand `a+b`): one nnU-Net trained on both parties' pooled "
        "data, with the folds of both parties so that no test case is ever trained on. The upper bound that "
        "requires sharing data.",
        "both parties' nnU-Net raw datasets, pooled"),
    Approach.STITCH: DefinitionText(
        "first version: stitch-ensemble a←[c]→b of two nnU-Nets at the selected position k",
        "stitch_ops stitch-ensemble",
        "Binary segmentation with a stitch-ensemble of two disjointly trained nnU-Nets",
        "The stitch-ensemble a←[c]→b of stitch_ops: two frozen nnU-Nets (one per party) joined at one matched pair "
        "of layers k by two trained 1x1-convolution stitches; at k each network averages its own feature map with "
        "the stitched map of the other, and the two softmax outputs are averaged. Stitches are trained on party c's "
        "unlabeled images; k is selected on c's validation cases. A trained copy carries "
        "models/<name>/stitch_ensemble.pt (weights and description, loadable with weights_only=True) and the plans "
        "that preprocess its input.",
        "the stitching party's own nnU-Net raw dataset (synthetic by default); no labels are used to train "
        "stitches"),
}


SCHEDULE_KEYS = ("configuration", "epochs", "iterations_per_epoch", "val_iterations_per_epoch", "initial_lr")
"""The ``schedule`` block of a ``train.json`` (:class:`~stitch_ops.config.NnUNetSchedule`) that
the profile sets."""
BUDGET_KEYS = ("epochs", "iterations_per_epoch", "base_lr", "warmup_epochs", "rounds")
"""Top-level ``train.json`` keys of an approach's own schedule: what its ``budget.json`` records
as trained, or what the profile plans for it."""


def training_values(params: Params, schedule: Mapping[str, Any]) -> dict[str, Any]:
    """``train.json`` values by MONAI id: the profile's nnU-Net schedule and seed, then the
    approach's own ``schedule`` (:data:`BUDGET_KEYS`: recorded by a model's ``budget.json``, or
    planned by the profile), which sets the nnU-Net schedule's epochs and iterations too."""
    values: dict[str, Any] = {f"schedule#{key}": getattr(params.nnunet, key) for key in SCHEDULE_KEYS}
    values.update(seed=params.seed, source_initial_lr=params.nnunet.initial_lr)
    values.update({key: schedule[key] for key in BUDGET_KEYS if key in schedule})
    values.update({f"schedule#{key}": schedule[key] for key in ("epochs", "iterations_per_epoch") if key in schedule})
    return values


def with_values(config: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each MONAI id of ``values`` that it has (``a#b``: key ``b`` of the
    mapping at ``a``) set to its value; ids it does not have are not added."""
    for key, value in values.items():
        *path, last = key.split("#")
        node: Any = config
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = value
    return config


def _spatial(channels: dict[str, str], kind: str, value_range: list[int]) -> dict[str, Any]:
    return {"type": "image", "format": kind, **({"modality": "natural image or MR"} if kind == "magnitude" else {}),
            "num_channels": len(channels), "spatial_shape": ["*", "*"], "dtype": "float32",
            "value_range": value_range, "is_patch_data": True, "channel_def": channels}


SHARED: dict[str, Any] = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20220324.json",
    "version": VERSION,
    "monai_version": "1.4.0",
    "pytorch_version": "2.8.0",
    "numpy_version": "1.26.0",
    "required_packages_version": {"nnunetv2": ">=2.6", "stitch_ops": VERSION},
    "authors": "stitch_ops developers",
    "copyright": "Copyright (c) stitch_ops developers",
    "data_type": "png or nifti",
    "image_classes": "RGB endoscopy frames (3 channels) or single-channel MRI slices",
    "label_classes": "0: background, 1: foreground (e.g. polyp, rectum+sigmoid)",
    "pred_classes": "0: background, 1: foreground",
    "eval_metrics": {},
    "intended_use": "Research only: comparing ways of combining models trained on data that cannot be shared.",
    "network_data_format": {
        "inputs": {"image": _spatial({"0": "R", "1": "G", "2": "B"}, "magnitude", [])},
        "outputs": {"pred": _spatial({"0": "background", "1": "foreground"}, "segmentation", [0, 1])},
    },
}
"""What every definition's metadata holds; the versions are those the definitions were written
for (an export records the versions that ran)."""


def metadata(approach: str) -> dict[str, Any]:
    """The ``configs/metadata.json`` of ``bundles/<approach>``, keys in the specification's order."""
    text = TEXTS[Approach(approach)]
    own = {"changelog": {VERSION: text.first_version}, "name": text.name, "task": text.task,
           "description": text.description, "data_source": text.data_source}
    order = ("schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
             "required_packages_version", *TEXT_KEYS, "authors", "copyright", "data_source", "data_type",
             "image_classes", "label_classes", "pred_classes", "eval_metrics", "intended_use", "network_data_format")
    return {key: own[key] if key in own else SHARED[key] for key in order}


def rendered(approach: str) -> str:
    return _as_json(metadata(approach))


def _as_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, indent=4, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Plan:
    """What the definitions' ``train.json`` values come from: the default profile's params and
    each approach's planned schedule (``budget.json`` keys), by approach."""

    params: Params
    schedules: Mapping[str, Mapping[str, Any]]

    def train_config(self, approach: str, config: dict[str, Any]) -> str:
        """``config`` (a definition's ``train.json``) with the values this plan trains ``approach`` with."""
        text = TEXTS[Approach(approach)]
        schedule = self.schedules.get(text.trains_as or approach, {})
        return _as_json(with_values(config, training_values(self.params, schedule)))


def _expected(root: Path, plan: Plan) -> dict[Path, str]:
    """Every file this writes under ``root``, with its content."""
    files = {}
    for approach in TEXTS:
        configs = bundle_definition(approach, root) / "configs"
        files[configs / "metadata.json"] = rendered(approach)
        train = configs / "train.json"
        if train.is_file():
            files[train] = plan.train_config(approach, read_json(train, hint=f"fix the bundle definition {train}"))
    return files


def stale(root: Path, plan: Plan) -> list[Path]:
    """The definitions' files under ``root`` that differ from what this writes."""
    return [path for path, text in _expected(root, plan).items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def write_stale(root: Path, plan: Plan) -> list[Path]:
    """Rewrite the definitions' files that differ (whole or not at all); returns them."""
    differing = []
    for path, text in _expected(root, plan).items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text(path, text)
            differing.append(path)
    return differing
