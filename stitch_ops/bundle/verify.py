"""Check a model received from another party before trusting anything in it.

Every source kind the tools accept is verified: a MONAI bundle (folder or ``.zip``), an
nnU-Net results folder, a zip from ``nnUNetv2_export_model_to_zip`` (and a model folder the
pipeline exported). A received model is *data*: a bundle's configs may name Python callables
(``"_target_"``) and expressions (``"$..."``) that MONAI would execute, a weights file may be a
pickle that runs code, plans may name classes nnU-Net would import and call, a zip may write
outside the folder it is extracted into or inflate to fill the disk. Verification refuses,
with one line naming the problem (and the user's path, never a temporary folder):

1. a zip entry that escapes the target folder, or a symbolic link (zip-slip); an archive over
   the size limits (:mod:`stitch_ops.limits`: entry size, total, compression ratio), before
   anything is extracted;
2. a symbolic link in the folder pointing outside it;
3. a file a project bundle never contains (``hubconf.py``, ``configs/logging.conf``, any
   ``*.py``, YAML configs, ...); in an nnU-Net source, any code file;
4. missing files, metadata missing a mandatory key or not matching the JSON schema shipped
   with the package (``metadata_schema.json``; no network needed);
5. a file that does not match ``manifest.sha256`` (changed after export; a checksum list,
   not a signature), a file the manifest does not list, a manifest line outside the bundle;
6. in ``metadata.json`` or any config: a ``_target_`` other than the project's own workflow
   functions (:data:`PROJECT_TARGETS`, exact names), any ``$`` expression or ``%`` macro, a
   ``@`` reference to anything but an entry of the same config, MONAI's other ``_..._`` keys
   (``_mode_``, ``_requires_``, ...), a default path outside the working folder (``/``, ``~``,
   ``..``: the workflows write where a config says); unless the user passes ``trust``;
7. plans naming a class outside nnU-Net's architectures and torch's layers, weights that are
   not plain data (loaded with ``weights_only=True``, never unpickled), or a network that does
   not map an input of the declared shape (capped) to the declared output and labels.

So ``python -m monai.bundle run`` on a bundle that passed can only run the project's own
workflow functions, and those open the model through the same checks.
"""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stitch_ops.bundle.archive import check_links, safe_extract
from stitch_ops.bundle.manifest import MANIFEST, ManifestError, check_manifest
from stitch_ops.bundle.sources import extracted_bundle_root, in_archive, open_model
from stitch_ops.errors import InputFileError, UserError
from stitch_ops.limits import limits
from stitch_ops.nnunet.model import ModelError, read_received_json
from stitch_ops.nnunet.results import find_results_folders
from stitch_ops.stitching.parents import ParentSpec

REQUIRED_FILES = ("configs/metadata.json", "LICENSE", "docs/README.md")
SCHEMA_FILE = Path(__file__).with_name("metadata_schema.json")
# every file a bundle of this project can hold (``*``: one path part); nothing else is accepted
BUNDLE_FILES = ("LICENSE", MANIFEST, "configs/metadata.json", "configs/inference.json", "configs/train.json",
                "docs/*.md", "models/model.pt", "models/network.json", "models/plans.json", "models/dataset.json",
                *(f"models/fold_*/{name}" for name in ("weights.pth", "plans.json", "dataset.json", "model.json",
                                                       "stitch_ensemble.pt", "stitch_ensemble.json")))
# the exact ``_target_`` names the project's bundles instantiate (bundles/*/configs and the
# exported inference.json; tests/bundle/test_attacks.py keeps the two in step)
PROJECT_TARGETS = frozenset({
    "stitch_ops.bundle.workflows.bundle_network", "stitch_ops.bundle.workflows.segment",
    "stitch_ops.bundle.workflows.segment_with_stitch_ensemble", "stitch_ops.bundle.workflows.train_on_own_data",
    "stitch_ops.baselines.workflows.segment_ensemble", "stitch_ops.baselines.workflows.finetune_on_own_data",
    "stitch_ops.baselines.workflows.train_federated", "stitch_ops.baselines.workflows.train_merged",
    "stitch_ops.config.NnUNetSchedule"})
# files that are code wherever they are (refused in an nnU-Net source too)
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".pyx", ".so", ".dylib", ".dll", ".exe", ".sh", ".bash", ".bat",
                 ".cmd", ".ps1", ".ipynb", ".conf", ".cfg", ".ini")
SOURCE_KINDS = ("a MONAI bundle (folder or .zip), an nnU-Net results folder or a zip from "
                "nnUNetv2_export_model_to_zip")


class BundleError(UserError):
    """A bundle or model is not what it claims to be, or carries code the user did not agree to run."""


@dataclass
class BundleReport:
    """What verification found: the source's kind, metadata, configs and shipped models."""

    path: Path
    metadata: dict[str, Any]
    configs: list[str]
    models: list[Path] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    files_checked: int = 0
    output_shape: tuple[int, ...] | None = None
    kind: str = "MONAI bundle"
    description: str = ""

    def next_steps(self) -> str:
        """Which command takes the verified source next."""
        if self.kind == "MONAI bundle" and not self.models:
            return (f"train with it: `python -m monai.bundle run --config_file {self.path}/configs/train.json "
                    f"--bundle_root {self.path} ...` (see its docs/README.md)")
        uses = f"`stitch-ops predict --model {self.path} --input IMAGES --out PREDICTIONS`"
        described = self.metadata.get("stitch_ops") if isinstance(self.metadata, dict) else None
        network = described.get("kind", "nnunet") if isinstance(described, dict) else "nnunet"
        if network == "nnunet":  # a stitch joins two single nnU-Nets, not ensembles
            uses += f", or `stitch-ops stitch --own YOUR_MODEL --other {self.path} --images YOUR_IMAGES --out DIR`"
        if self.kind != "MONAI bundle":
            uses += f", or make it a bundle: `stitch-ops bundle export --model {self.path} --out DIR`"
        return f"use it with {uses}"


def _walk(value: Any, where: str) -> Iterator[tuple[str, str | None, Any]]:
    """Yield (location, key, value) of every entry whose key starts with ``_``, and
    (location, None, text) of every string, anywhere in a config."""
    if isinstance(value, dict):
        for key, item in value.items():
            location = f"{where}#{key}"
            if str(key).startswith("_"):
                yield location, str(key), item
                if key == "_target_":
                    continue
            yield from _walk(item, location)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}#{index}")
    elif isinstance(value, str):
        yield where, None, value


def config_code(config: Any, name: str, *, is_metadata: bool = False) -> list[str]:
    """Everything in one config (or ``metadata.json``) that MONAI would run, import or
    resolve beyond plain data, as ``location: text``; empty for a project config.

    Allowed: ``_target_`` with a name in :data:`PROJECT_TARGETS`, and ``@id`` references to a
    top-level entry of the same config (both never in ``metadata.json``, which MONAI merges
    into every config as ``_meta_``, reachable by ``@_meta_#...``).
    """
    ids = set(config) if isinstance(config, dict) and not is_metadata else set()
    found = []
    for where, key, value in _walk(config, name):
        if key == "_target_":
            if is_metadata or not (isinstance(value, str) and value in PROJECT_TARGETS):
                found.append(f"{where}: {str(value)[:80]}")
        elif key is not None:
            found.append(f"{where}: MONAI's {key} key")
        elif value.startswith(("$", "%")):
            found.append(f"{where}: {value[:80]}")
        elif value.startswith("@"):
            reference = value[1:].replace("::", "#").split("#", 1)[0]
            if reference not in ids:
                found.append(f"{where}: {value[:80]} (a reference outside this config)")
        elif not is_metadata and _outside(value):
            found.append(f"{where}: {value[:80]} (a path outside the folder MONAI runs in)")
    return found


def _outside(text: str) -> bool:
    """Whether a config string is a path that leaves the working folder (absolute, ``~``, ``..``):
    a received config's defaults must not point the project's workflows at the user's files."""
    posix = text.replace("\\", "/")
    return posix.startswith(("/", "~")) or ".." in PurePosixPath(posix).parts or (len(text) > 1 and text[1] == ":")


def _read_json(path: Path) -> Any:
    try:
        return read_received_json(path, hint="the bundle is damaged: ask its sender for it again")
    except InputFileError as err:
        raise BundleError(str(err)) from None


def check_metadata(metadata: Any, where: Path) -> None:
    """Validate ``configs/metadata.json`` against the shipped schema (one line per refusal)."""
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    if not isinstance(metadata, dict):
        raise BundleError(f"{where} must hold a JSON object")
    absent = [key for key in schema["required"] if key not in metadata]
    if absent:
        raise BundleError(f"{where} lacks mandatory key(s) {absent} of the MONAI bundle specification")
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(metadata))
    if error is not None:
        location = "#".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{where}: {location}: {error.message.splitlines()[0][:200]}")


def unexpected_files(path: Path) -> list[str]:
    """Files of the bundle ``path`` that a bundle of this project never contains (see :data:`BUNDLE_FILES`)."""
    found = []
    for file in sorted(p for p in path.rglob("*") if not p.is_dir()):
        name = PurePosixPath(file.relative_to(path).as_posix())
        if not any(len(name.parts) == len(PurePosixPath(pattern).parts) and name.match(pattern)
                   for pattern in BUNDLE_FILES):
            found.append(name.as_posix())
    return found


def code_files(path: Path) -> list[str]:
    """Files under ``path`` that are code (``*.py``, shared libraries, scripts, logging configs)."""
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and (p.suffix.lower() in CODE_SUFFIXES or p.name == "hubconf.py"))


def verify_bundle(path: Path, *, trust: bool = False) -> BundleReport:
    """Verify what was received at ``path``; raise :class:`BundleError` naming the first problem.

    Args:
        path: a bundle folder (``configs/``, ``docs/``, ``LICENSE``, optional ``models/``) or zip,
            an nnU-Net results folder or export zip, or a model folder the pipeline exported.
        trust: accept code in a bundle's configs and files, and architectures outside the
            allowed ones (the sender's code will run).
    """
    try:
        return _verify(Path(path), trust)
    except BundleError:
        raise
    except UserError as err:  # an unsafe archive, a size over the limits, ...: one kind of refusal
        raise BundleError(str(err)) from None


def _verify(path: Path, trust: bool) -> BundleReport:
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise BundleError(f"{path} is a file but not a zip archive; expected {SOURCE_KINDS}")

        with tempfile.TemporaryDirectory(prefix="stitch_ops_verify_") as scratch, in_archive(path, scratch):
            root = extracted_bundle_root(safe_extract(path, Path(scratch)), path)
            report = _verify_folder(root, trust)
        report.path = path
        if report.kind != "MONAI bundle":
            report.kind = "nnU-Net export zip" if report.kind == "nnU-Net results folder" else f"zip of an {report.kind}"
        return report
    if not path.is_dir():
        raise BundleError(f"no bundle folder at {path}, nor any other model: expected {SOURCE_KINDS}")
    return _verify_folder(path, trust)


def _verify_folder(path: Path, trust: bool) -> BundleReport:
    check_links(path)
    if (path / "configs" / "metadata.json").is_file() or not _looks_like_model(path):
        return _verify_bundle_folder(path, trust)
    return _verify_model_source(path, trust)


def _looks_like_model(path: Path) -> bool:
    return any((path / name).is_file() for name in ("weights.pth", "stitch_ensemble.pt", "network.json")) or bool(
        find_results_folders(path))


def _verify_bundle_folder(path: Path, trust: bool) -> BundleReport:
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} is not a MONAI bundle: missing {missing} (nor an nnU-Net results folder or "
                          f"export: expected {SOURCE_KINDS})")
    metadata = _read_json(path / "configs" / "metadata.json")
    check_metadata(metadata, path / "configs" / "metadata.json")
    models = path / "models"
    files_checked = 0
    if (path / MANIFEST).is_file():
        try:
            files_checked = check_manifest(path)
        except ManifestError as err:
            raise BundleError(str(err)) from None
    elif models.is_dir():
        raise BundleError(f"{path} ships models/ but no {MANIFEST}: its files cannot be checked; export it again "
                          f"with `stitch-ops bundle export`")
    unexpected = unexpected_files(path)
    if unexpected and not trust:
        raise BundleError(f"{path} holds {', '.join(unexpected[:3])}, which a bundle of this project never "
                          f"contains (MONAI or Python could run it); refused: ask the sender for a bundle made "
                          f"by `stitch-ops bundle export`")
    configs = sorted(p.name for p in (path / "configs").glob("*.json") if p.name != "metadata.json")
    report = BundleReport(path, metadata, configs, files_checked=files_checked)
    report.code = [f"{name}: unexpected file" for name in unexpected]
    report.code += config_code(metadata, "metadata.json", is_metadata=True)
    for name in configs:
        report.code += config_code(_read_json(path / "configs" / name), name)
    if report.code and not trust:
        shown = "; ".join(report.code[:3])
        raise BundleError(f"{path} carries code that would run when its configs are parsed ({shown}); read it, "
                          f"and pass --trust only if you trust the sender")
    if models.is_dir():
        report.models, report.output_shape = _check_network(path, metadata, trust)
    return report


def _verify_model_source(path: Path, trust: bool) -> BundleReport:
    """An nnU-Net results folder (or export) or an exported model folder: no code, sizes,
    allowed architecture, plain weights, a network that runs."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    code = code_files(path)
    if code and not trust:
        raise BundleError(f"{path} holds {', '.join(code[:3])}: code has no place in a model; refused (pass "
                          f"--trust only if you trust the sender)")
    cap, total = limits(), 0
    for file in (p for p in path.rglob("*") if p.is_file()):
        total += file.stat().st_size
        if total > cap.max_total_bytes:
            raise cap.refuse(f"{path}'s files", total, "max_total_bytes")
    try:
        model = open_model(path, trusted=trust)
    except ModelError as err:
        raise BundleError(str(err)) from None
    kind = "nnU-Net results folder" if find_results_folders(path) else "exported model folder"
    spatial = [2 * s for s in ParentSpec.of_model(model).total_strides]  # every stage sees 2 voxels an axis
    if math.prod(spatial) > cap.max_voxels:
        raise cap.refuse(f"{path}: the smallest input its network takes, {spatial}, in voxels", math.prod(spatial),
                         "max_voxels")
    shape = (1, model.num_input_channels, *spatial)
    output = _run(model, shape)
    heads = PlansManager(model.plans).get_label_manager(model.dataset_json).num_segmentation_heads
    if tuple(output.shape) != (1, heads, *spatial):
        raise BundleError(f"{path}: the network maps {shape} to {tuple(output.shape)}, but its dataset.json has "
                          f"{heads} label(s)")
    return BundleReport(path, {}, [], models=[path], code=code, output_shape=tuple(output.shape), kind=kind,
                        description=model.description)


def _run(model: Any, shape: tuple[int, ...]) -> Any:
    import torch

    try:
        with torch.no_grad():
            return model.network(torch.rand(shape))
    except Exception as err:  # a network that cannot run the declared input is broken, whatever it raises
        raise BundleError(f"the shipped network does not accept an input {shape}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None


def _check_network(path: Path, metadata: dict[str, Any], trust: bool) -> tuple[list[Path], tuple[int, ...]]:
    """Load the shipped network as data and push an input of the declared shape (capped) through it;
    the declared output channels and their names must be the model's labels."""
    try:
        model = open_model(path, trusted=trust)
    except ModelError as err:
        raise BundleError(f"shipped model in {path / 'models'} is refused: {err}") from None
    fmt = metadata["network_data_format"]
    inputs, outputs = next(iter(fmt["inputs"].values())), next(iter(fmt["outputs"].values()))
    spatial = [_size(s, path) for s in inputs["spatial_shape"]]
    cap = limits()
    if math.prod(spatial) > cap.max_voxels:
        raise cap.refuse(f"{path / 'configs' / 'metadata.json'}: the declared input shape {spatial} in voxels",
                         math.prod(spatial), "max_voxels")
    shape = (1, int(inputs["num_channels"]), *spatial)
    output = _run(model, shape)
    expected = (1, int(outputs["num_channels"]), *spatial)
    if tuple(output.shape) != expected:
        raise BundleError(f"shipped network maps {shape} to {tuple(output.shape)}, but metadata.json declares "
                          f"{expected}")
    _check_labels(model, outputs, path)
    return [path / "models"], tuple(output.shape)


def _check_labels(model: Any, outputs: dict[str, Any], path: Path) -> None:
    """The output channels' names in metadata.json are the labels of the model's dataset.json."""
    labels = model.dataset_json.get("labels", {})
    names = {int(v) if not isinstance(v, (list, tuple)) else int(v[0]): str(k) for k, v in labels.items()}
    declared = outputs.get("channel_def")
    if declared is None:
        return
    expected = {str(i): names.get(i, str(i)) for i in range(int(outputs["num_channels"]))}
    if {str(k): str(v) for k, v in declared.items()} != expected:
        raise BundleError(f"{path / 'configs' / 'metadata.json'} names the output channels {declared}, but the "
                          f"model's dataset.json labels give {expected}: the bundle was edited after export; ask "
                          f"the sender for a fresh copy")


def _size(spec: int | str, path: Path) -> int:
    """A spatial size from MONAI's notation: ``64``, ``"32*n"`` (n=1), ``"2**p"`` (p=1), ``"*"`` (32)."""
    try:
        if isinstance(spec, int) and not isinstance(spec, bool) and spec > 0:
            return spec
        if spec == "*":
            return 32
        if isinstance(spec, str) and spec.endswith("**p"):
            return int(spec[:-3])
        if isinstance(spec, str) and spec.endswith("*n"):
            return int(spec[:-2])
    except ValueError:
        pass
    raise BundleError(f"{path / 'configs' / 'metadata.json'}: spatial_shape entry {str(spec)[:40]!r} is not a "
                      f"size MONAI knows (64, \"32*n\", \"2**p\" or \"*\")")
