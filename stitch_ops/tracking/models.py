"""Trained models in MLflow: a pyfunc that segments images with nnU-Net's predictor.

Every evaluated model that has an exported folder (``models/.../export``: an nnU-Net export
or a stitch-ensemble) is logged to its run as an MLflow *pyfunc* and registered as
``stitch_ops-<pair>-<approach>-<trained_on>`` (one version per evaluation). The
stitch-ensemble whose position was chosen by selection strategy 1 (``current_fold``) gets
the alias ``champion``, so ``mlflow.pyfunc.load_model("models:/<name>@champion")`` is the
model to use.

No pickle is involved: the pyfunc is logged *from code* (:mod:`stitch_ops.bundle.pyfunc_model`,
named by its path, :data:`PYFUNC_CODE`: logging never imports the model opener), and its weights
are loaded with ``torch.load(weights_only=True)`` from the export folder, which the model
carries as an artifact (:mod:`stitch_ops.bundle.segmenter` opens it as any model is opened).
Loading needs ``stitch_ops`` installed. In a local store the artifact's files are hard links
to the export's (the weights stored once, not once more in ``mlruns/``); the pipeline never
changes a file in place (:mod:`stitch_ops.outputs` swaps in new ones), so a later export
leaves the logged version as it was.

Input and output (the signature): images ``N C H W`` (2-D) or ``N C X Y Z`` (3-D), float32,
in the raw intensities the model's dataset uses (what the images folder holds); output the
label maps ``N H W`` / ``N X Y Z`` (int64), exactly what the pipeline's prediction writes. 2-D
images have nnU-Net's natural-image spacing; a 3-D image's spacing is the ``spacing``
parameter (default 1 mm).
"""

from __future__ import annotations

import filecmp
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from stitch_ops.approaches import Approach
from stitch_ops.outputs import hard_link, read_json

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHAMPION_STRATEGY = "current_fold"
MODEL_ARTIFACT = "model"
NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
PYFUNC_CODE = Path(__file__).parents[1] / "bundle" / "pyfunc_model.py"
"""The pyfunc's code, which MLflow runs where the model is loaded."""


def registered_name(pair: str, approach: str, trained_on: str) -> str:
    """Registry name of a model, ``stitch_ops-<pair>-<approach>-<trained_on>``."""
    return f"stitch_ops-{pair}-{approach}-{trained_on}"


def signature_and_example(folder: Path) -> tuple[Any, np.ndarray]:
    """The pyfunc's tensor signature and a small input example (zeros, one patch)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    plans, meta, dataset_json = (read_json(Path(folder) / name) for name in ("plans.json", "model.json", "dataset.json"))
    patch = list(plans["configurations"][meta["configuration"]]["patch_size"])
    channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    # natural images (PNG frames) are 2-D; volumes (NIfTI) are 3-D, also under a 2-D configuration
    volumes = dataset_json["file_ending"] not in NATURAL_IMAGE_ENDINGS
    shape = ([2] * (3 - len(patch)) + patch) if volumes else patch[-2:]
    spatial = (-1,) * len(shape)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, *spatial))]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, *spatial))]),
        params=ParamSchema([ParamSpec("spacing", "double", [1.0, 1.0, 1.0], (-1,))]))
    return signature, np.zeros((1, channels, *shape), dtype=np.float32)


def log_model(run_id: str, export: Path, *, pair: str, approach: str, trained_on: str) -> Any:
    """Log ``export`` as the run's pyfunc model, register a new version, and give it the
    ``champion`` alias if it is a stitch-ensemble selected by strategy 1.

    Returns:
        The registered model version.
    """
    import mlflow

    from stitch_ops.tracking import runs

    client, store = runs.open_client()
    signature, example = signature_and_example(export)
    name = registered_name(pair, approach, trained_on)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=str(PYFUNC_CODE),
                                       artifacts={MODEL_ARTIFACT: str(export)}, signature=signature,
                                       input_example=example, registered_model_name=name,
                                       pip_requirements=_requirements())
    version = client.get_model_version(name, str(info.registered_model_version))
    location = client.get_logged_model(info.model_id).artifact_location
    if urlparse(location).scheme in ("", "file"):  # a local store, not a server's
        from mlflow.utils.file_utils import local_file_uri_to_path

        saved = link_copies_to_export(Path(local_file_uri_to_path(location)), export)
        logger.info("%s: the logged model's copy of %s is hard links to it (%.1f MB saved)", name, export, saved / 1e6)
    meta = read_json(export / "model.json")
    if approach == Approach.STITCH and meta.get("selection") == CHAMPION_STRATEGY:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        logger.info("%s version %s is the %s (selection strategy 1)", name, version.version, CHAMPION)
    return version


def link_copies_to_export(model_artifacts: Path, export: Path) -> int:
    """Replace the logged pyfunc's copy of each file of ``export`` (MLflow copies it to
    ``<model_artifacts>/artifacts/<export name>/``) by a hard link to that file, where the
    bytes are equal. Returns the bytes no longer stored twice; 0 where links are impossible
    (another filesystem): the copies then stay."""
    saved = 0
    for source in sorted(export.rglob("*")):
        copy = model_artifacts / "artifacts" / export.name / source.relative_to(export)
        if not (source.is_file() and copy.is_file()) or copy.samefile(source) \
                or not filecmp.cmp(source, copy, shallow=False):
            continue
        link = copy.with_name(f".{copy.name}.link")
        if not hard_link(source, link):
            return saved
        os.replace(link, copy)  # the copy is swapped for the link whole
        saved += source.stat().st_size
    return saved


def _requirements() -> list[str]:
    """Pinned like this environment (no requirement inference: it loads the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "torch", "nnunetv2", "numpy")]
