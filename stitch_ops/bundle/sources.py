"""One way to open any model a user has: :func:`open_model`.

Accepted everywhere a model is expected (``stitch-ops stitch``, ``predict``, ``bundle export``):

- a bundle exported by this project (folder or ``.zip``), or its ``models/`` folder;
- an nnU-Net v2 results folder ``<Trainer>__<Plans>__<configuration>`` (``plans.json``,
  ``dataset.json``, ``fold_<k>/checkpoint_final.pth``), or a dataset folder holding one;
- a zip written by ``nnUNetv2_export_model_to_zip``;
- a model folder the pipeline exported (``weights.pth`` or ``stitch_ensemble.pt`` + plans).

Everything is read as data: weights with ``torch.load(weights_only=True)``, networks rebuilt
from the plans (never from a trainer class), zips extracted only after every entry is checked.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stitch_ops.bundle.archive import check_links, safe_extract
from stitch_ops.bundle.manifest import MANIFEST, ManifestError, check_manifest
from stitch_ops.errors import InputFileError, UserError
from stitch_ops.nnunet.model import (FoldEnsemble, ModelError, NnUNetModel, build_network, check_architecture,
                                     load_model, load_plain, load_weights, read_received_json)
from stitch_ops.nnunet.results import find_results_folders, is_results_folder, load_results_folder
from stitch_ops.outputs import hard_link, write_json
from stitch_ops.stitching import ParentSpec, StitchEnsembleDescription, TwoModelEnsemble, build_stitch_ensemble
from stitch_ops.stitching.artifacts import load_exported_ensemble

__all__ = ["MODEL_DIR_FILES", "NETWORK_FORMAT", "build_from_spec", "open_model", "write_model_dir"]

logger = logging.getLogger(__name__)

NETWORK_FORMAT = "stitch_ops.bundle_network/1"
MODEL_DIR_FILES = ("model.pt", "network.json", "plans.json", "dataset.json")
SOURCES = ("a bundle (folder or .zip), an nnU-Net results folder <Trainer>__<Plans>__<configuration>, "
           "or a zip from nnUNetv2_export_model_to_zip")


def open_model(source: str | Path, fold: int | str | None = None, *, device: torch.device | str = "cpu",
               trusted: bool = False) -> NnUNetModel:
    """Open ``source`` (see the module docstring) as a network ready for nnU-Net's predictor.

    Every model any command uses is opened here, and nothing in it runs as code: a zip is
    extracted only after every entry's name and size is checked (:func:`~stitch_ops.bundle.archive.safe_extract`),
    a bundle's files must match its ``manifest.sha256`` (:func:`~stitch_ops.bundle.manifest.check_manifest`),
    the plans may name only nnU-Net's architectures and torch's layers
    (:func:`~stitch_ops.nnunet.model.check_architecture`), weights are read as plain data.

    Args:
        source: path of the model.
        fold: one nnU-Net fold (default: every fold present, averaged as nnU-Net does).
        trusted: allow plans naming architectures outside the allowed ones (their code runs).

    Raises:
        ModelError: in one line, naming the source and what is wrong with it (for a zip, the
            path inside the zip, never the temporary folder it was extracted to).
    """
    source = Path(source)
    if source.is_file():
        import zipfile

        if not zipfile.is_zipfile(source):
            raise ModelError(f"{source} is a file but not a zip archive; expected {SOURCES}")
        with tempfile.TemporaryDirectory(prefix="stitch_ops_model_") as scratch, in_archive(source, scratch):
            root = safe_extract(source, Path(scratch))
            model = open_model(extracted_bundle_root(root, source), fold, device=device, trusted=trusted)
        model.description = f"{model.description} from {source.name}"
        return model
    if not source.is_dir():
        raise ModelError(f"no model at {source}: expected {SOURCES}")
    check_links(source)
    try:
        bundle = enclosing_bundle(source)
        if bundle is not None:
            check_bundle_files(bundle, required=bundle == source)
        return _open_folder(source, fold, device, trusted)
    except ModelError as err:
        if str(source) not in str(err):  # e.g. the plans' names: say whose plans
            err.args = (f"{source}: {err}",)
        raise


@contextmanager
def in_archive(archive: Path, scratch: str | Path) -> Iterator[None]:
    """Errors raised inside this block name ``archive/<entry>`` instead of the temporary folder
    ``scratch`` it was extracted to (which is gone when the user reads the message)."""
    try:
        yield
    except UserError as err:
        folder = str(Path(scratch).resolve())
        err.args = tuple(str(arg).replace(folder, str(archive)).replace(str(scratch), str(archive))
                         if isinstance(arg, str) else arg for arg in err.args)
        raise


def enclosing_bundle(folder: Path) -> Path | None:
    """The bundle ``folder`` is (``configs/metadata.json``) or lies in (its ``models/`` or
    ``models/fold_<k>/``), or None."""
    if (folder / "configs" / "metadata.json").is_file():
        return folder
    resolved = folder.resolve()
    for bundle in (resolved.parent, resolved.parent.parent):
        if (bundle / "configs" / "metadata.json").is_file() and resolved.is_relative_to(bundle / "models"):
            return bundle
    return None


def check_bundle_files(bundle: Path, required: bool = True) -> int:
    """A bundle's files against its manifest (the number checked). Run wherever a bundle's
    model is opened, not only by ``verify``.

    Args:
        required: a bundle shipping ``models/`` must have a manifest (False: a model folder
            opened inside a bundle folder, e.g. ``models/fold_0`` that ``configs/train.json``
            trained into the bundle the user ran it in, which no manifest can list).

    Raises:
        ModelError: a file changed, added or missing, a manifest line naming a path outside the
            bundle, or models without a manifest.
    """
    if not (bundle / MANIFEST).is_file():
        if required and (bundle / "models").is_dir():
            raise ModelError(f"{bundle} ships models/ but no {MANIFEST}: its files cannot be checked; ask the "
                             f"sender to export it again with `stitch-ops bundle export`")
        return 0
    try:
        return check_manifest(bundle)
    except ManifestError as err:
        raise ModelError(str(err)) from None


def extracted_bundle_root(root: Path, archive: Path) -> Path:
    """The bundle folder inside an extracted archive (itself, or its only top-level folder)."""
    if (root / "configs" / "metadata.json").is_file():
        return root
    children = [p for p in root.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / "configs" / "metadata.json").is_file():
        return children[0]
    return root


def _open_folder(folder: Path, fold: int | str | None, device: Any, trusted: bool) -> NnUNetModel:
    if (folder / "configs" / "metadata.json").is_file():
        models = folder / "models"
        if (models / "network.json").is_file():
            return _open_model_dir(models, fold, device, trusted)
        shipped = sorted(p for p in models.glob("*") if p.is_dir()) if models.is_dir() else []
        if fold is not None:
            shipped = [p for p in shipped if p.name == f"fold_{fold}"]
        if len(shipped) != 1:
            raise ModelError(f"{folder} is a bundle without a trained model to open: expected models/network.json "
                             f"(or one models/fold_<k>/), found {[p.name for p in shipped]}")
        return _open_folder(shipped[0], None, device, trusted)
    if (folder / "network.json").is_file():
        return _open_model_dir(folder, fold, device, trusted)
    if (folder / "weights.pth").is_file():
        return load_model(folder, device)
    if (folder / "stitch_ensemble.pt").is_file():
        return load_exported_ensemble(folder)
    if is_results_folder(folder):
        return load_results_folder(folder, None if fold is None else [fold], device=device, trusted=trusted)
    found = find_results_folders(folder)
    if len(found) == 1:
        return load_results_folder(found[0], None if fold is None else [fold], device=device, trusted=trusted)
    if len(found) > 1:
        raise ModelError(f"{folder} holds several nnU-Net results folders "
                         f"({', '.join(p.name for p in found)}): pass the one to use")
    raise ModelError(f"{folder} is not a model: expected {SOURCES}")


def build_from_spec(spec: dict[str, Any], plans: dict[str, Any], dataset_json: dict[str, Any],
                    trusted: bool = False) -> torch.nn.Module:
    """The network (random weights) a bundle's ``network.json`` describes.

    Kinds: ``nnunet`` (one fold, or several averaged as nnU-Net does), ``stitch_ensemble``
    (``ensemble``: a :class:`~stitch_ops.stitching.StitchEnsembleDescription`), ``ensemble``
    (``members``: parent descriptions, their softmax averaged).
    """
    kind = spec.get("kind")
    try:
        if kind == "nnunet":
            networks = [build_network(plans, dataset_json, spec["configuration"], trusted)
                        for _ in spec.get("folds") or [None]]
            return networks[0] if len(networks) == 1 else FoldEnsemble(networks)
        if kind == "stitch_ensemble":
            description = StitchEnsembleDescription.from_dict(spec["ensemble"])
            parents: list[Any] = list(description.parents)
        elif kind == "ensemble":
            parents = [ParentSpec.from_dict(m) for m in spec["members"]]
        else:
            raise ModelError(f"unknown network kind {kind!r}; expected nnunet, stitch_ensemble or ensemble")
    except (KeyError, TypeError, AttributeError) as err:
        raise ModelError(f"the {kind} description in network.json lacks or mistypes {err}; export it again") from None
    if not trusted:  # every parent checked before any is built
        for parent in parents:
            check_architecture(dict(parent.plans), parent.configuration)
    if kind == "stitch_ensemble":
        return build_stitch_ensemble(description, trusted)
    return TwoModelEnsemble(*(parent.build(trusted=trusted) for parent in parents))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_received_json(path, hint="the model folder is damaged: export it again")
    except InputFileError as err:
        raise ModelError(str(err)) from None


def _open_model_dir(folder: Path, fold: int | str | None, device: Any, trusted: bool) -> NnUNetModel:
    missing = [name for name in MODEL_DIR_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"{folder} is not a bundle model folder: missing {missing}")
    spec = _read_json(folder / "network.json")
    if spec.get("format") != NETWORK_FORMAT:
        raise ModelError(f"{folder / 'network.json'} has format {spec.get('format')!r}, expected {NETWORK_FORMAT!r}")
    plans, dataset_json = _read_json(folder / "plans.json"), _read_json(folder / "dataset.json")
    network = build_from_spec(spec, plans, dataset_json, trusted)
    load_weights(network, load_plain(folder / "model.pt"), folder / "model.pt",
                 "network.json, plans.json and dataset.json")
    folds = spec.get("folds") or [None]
    weights_file: Path | None = folder / "model.pt"
    if fold is not None and spec.get("kind") == "nnunet" and len(folds) > 1:
        if fold not in folds:
            raise ModelError(f"{folder} has folds {folds}, not {fold}")
        network = network.networks[folds.index(fold)]
        spec = {**spec, "folds": [fold]}
        weights_file = None  # one fold of the file's weights
    axes = spec.get("mirroring_axes")
    return NnUNetModel(network.to(device).eval(), plans, dataset_json, spec["configuration"],
                       tuple(axes) if axes is not None else None, description=spec.get("description", spec["kind"]),
                       network_spec={k: v for k, v in spec.items() if k not in ("format", "description")},
                       weights_file=weights_file)


def write_model_dir(model: NnUNetModel, target: Path, *, link_weights: bool = False) -> Path:
    """Write ``model`` as a bundle model folder (``model.pt`` state_dict, ``network.json``,
    the plans and dataset.json that preprocess its input) into an existing folder ``target``.

    ``model.pt`` is a byte-for-byte copy of the model's :attr:`~NnUNetModel.weights_file` when it
    has one (an exported model, a bundle's ``model.pt``), or with ``link_weights`` a hard link
    to it (a copy where links are impossible): only for a file nothing changes in place, like
    the pipeline's exports (written whole and swapped in, linked to DVC's cache), whose
    weights are then stored once however many bundles carry them."""
    target.mkdir(parents=True, exist_ok=True)
    if model.weights_file is not None:
        if not (link_weights and hard_link(model.weights_file, target / "model.pt")):
            shutil.copyfile(model.weights_file, target / "model.pt")
    else:
        torch.save({k: v.detach().cpu() for k, v in model.network.state_dict().items()}, target / "model.pt")
    spec = {"format": NETWORK_FORMAT, **model.spec, "configuration": model.configuration,
            "mirroring_axes": list(model.mirroring_axes) if model.mirroring_axes is not None else None,
            "description": model.description}
    for name, content in (("network.json", spec), ("plans.json", model.plans), ("dataset.json", model.dataset_json)):
        write_json(target / name, content)
    return target
