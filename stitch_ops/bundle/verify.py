"""Check a MONAI bundle before trusting anything in it.

A bundle from another institution is *data*: its configs may name Python callables
(``"_target_"``) and expressions (``"$..."``) that MONAI would execute, its weights file may
be a pickle that runs code, its zip may write outside the folder it is extracted into.
Verification, in this order, refuses with one line naming the problem:

1. a zip entry that escapes the target folder, or a symbolic link (zip-slip);
2. a symbolic link in the folder pointing outside it;
3. missing files, metadata missing a mandatory key or not matching the JSON schema shipped
   with the package (``metadata_schema.json``; no network needed);
4. a file that does not match ``manifest.sha256`` (tampered after export), a file the
   manifest does not list;
5. a config ``_target_`` outside ``stitch_ops``/``monai``/``torch`` or any ``$`` expression,
   unless the user passes ``trust``;
6. weights that are not plain data (loaded with ``weights_only=True``, never unpickled), or
   a network that does not map an input of the declared shape to the declared output.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitch_ops.bundle.archive import UnsafeArchiveError, check_links, safe_extract
from stitch_ops.nnunet.model import ModelError
from stitch_ops.errors import InputFileError, UserError
from stitch_ops.outputs import read_json

REQUIRED_FILES = ("configs/metadata.json", "LICENSE", "docs/README.md")
SCHEMA_FILE = Path(__file__).with_name("metadata_schema.json")
MANIFEST = "manifest.sha256"
TRUSTED_TARGET_PREFIXES = ("stitch_ops.", "monai.", "torch.")


class BundleError(UserError):
    """A bundle is not what it claims to be, or carries code the user did not agree to run."""


@dataclass
class BundleReport:
    """What verification found: the bundle's metadata, its configs and shipped models."""

    path: Path
    metadata: dict[str, Any]
    configs: list[str]
    models: list[Path] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    files_checked: int = 0
    output_shape: tuple[int, ...] | None = None


def _walk(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Yield (location, text) of every ``_target_`` and ``$`` expression in a config."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "_target_" and isinstance(item, str):
                yield f"{where}#{key}", item
            else:
                yield from _walk(item, f"{where}#{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}#{index}")
    elif isinstance(value, str) and value.startswith("$"):
        yield where, value


def _read_json(path: Path) -> Any:
    try:
        return read_json(path, hint="the bundle is damaged: ask its sender for it again")
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


def check_manifest(path: Path) -> int:
    """Compare every file with ``manifest.sha256``; returns the number of files checked."""
    manifest = path / MANIFEST
    listed: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            listed[name] = digest
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST}
    for name in sorted(present - set(listed)):
        raise BundleError(f"{path}: {name} is not in {MANIFEST}: it was added after export; remove it or "
                          f"ask the sender for a fresh copy")
    for name, digest in sorted(listed.items()):
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} is listed in {MANIFEST} but missing; ask the sender for a "
                              f"complete copy")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise BundleError(f"{path}: {name} does not match its SHA-256 in {MANIFEST}: the file was changed "
                              f"after export; do not use it, ask the sender for a fresh copy")
    return len(listed)


def verify_bundle(path: Path, *, trust: bool = False) -> BundleReport:
    """Verify the bundle at ``path`` (folder or ``.zip``); raise :class:`BundleError` naming the first problem.

    Args:
        path: the bundle folder (``configs/``, ``docs/``, ``LICENSE``, optional ``models/``) or zip.
        trust: accept ``$`` expressions and ``_target_``s outside stitch_ops/monai/torch.
    """
    path = Path(path)
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="stitch_ops_verify_") as scratch:
            try:
                root = safe_extract(path, Path(scratch))
            except UnsafeArchiveError as err:
                raise BundleError(str(err)) from None
            except ValueError as err:
                raise BundleError(f"{path} is neither a bundle folder nor a zip of one ({err})") from None
            from stitch_ops.bundle.sources import _single_root

            report = verify_bundle(_single_root(root, path), trust=trust)
            report.path = path
            return report
    if not path.is_dir():
        raise BundleError(f"no bundle folder at {path}")
    try:
        check_links(path)
    except UnsafeArchiveError as err:
        raise BundleError(str(err)) from None
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} is not a MONAI bundle: missing {missing}")
    metadata = _read_json(path / "configs" / "metadata.json")
    check_metadata(metadata, path / "configs" / "metadata.json")
    models = path / "models"
    files_checked = 0
    if (path / MANIFEST).is_file():
        files_checked = check_manifest(path)
    elif models.is_dir():
        raise BundleError(f"{path} ships models/ but no {MANIFEST}: its files cannot be checked; export it again "
                          f"with `stitch-ops bundle export`")
    configs = sorted(p.name for p in (path / "configs").glob("*.json") if p.name != "metadata.json")
    report = BundleReport(path, metadata, configs, files_checked=files_checked)
    for name in configs:
        for where, text in _walk(_read_json(path / "configs" / name), name):
            is_trusted_target = "#_target_" in where and text.startswith(TRUSTED_TARGET_PREFIXES)
            if not is_trusted_target:
                report.code.append(f"{where}: {text}")
    if report.code and not trust:
        shown = "; ".join(report.code[:3])
        raise BundleError(f"{path} carries code that would run when its configs are parsed ({shown}); read it, "
                          f"and pass --trust only if you trust the sender")
    if models.is_dir():
        report.models, report.output_shape = _check_network(path, metadata, trust)
    return report


def _check_network(path: Path, metadata: dict[str, Any], trust: bool) -> tuple[list[Path], tuple[int, ...]]:
    """Load the shipped network as data and push an input of the declared shape through it."""
    import torch

    from stitch_ops.bundle.sources import open_model

    try:
        model = open_model(path, trusted=trust)
    except (ModelError, ValueError, RuntimeError, KeyError) as err:
        raise BundleError(f"shipped model in {path / 'models'} is refused: {str(err).splitlines()[0]}") from None
    fmt = metadata["network_data_format"]
    inputs, outputs = next(iter(fmt["inputs"].values())), next(iter(fmt["outputs"].values()))
    spatial = [_size(s) for s in inputs["spatial_shape"]]
    shape = (1, int(inputs["num_channels"]), *spatial)
    try:
        with torch.no_grad():
            output = model.network(torch.rand(shape))
    except Exception as err:  # a network that cannot run the declared input is broken, whatever it raises
        raise BundleError(f"shipped network does not accept the declared input {shape}: "
                          f"{str(err).splitlines()[0][:200]}") from None
    expected = (1, int(outputs["num_channels"]), *spatial)
    if tuple(output.shape) != expected:
        raise BundleError(f"shipped network maps {shape} to {tuple(output.shape)}, but metadata.json declares "
                          f"{expected}")
    return [path / "models"], tuple(output.shape)


def _size(spec: int | str) -> int:
    """A spatial size from MONAI's notation: ``64``, ``"32*n"`` (n=1), ``"2**p"`` (p=1), ``"*"`` (32)."""
    if isinstance(spec, int):
        return spec
    if spec == "*":
        return 32
    if "**p" in spec:
        return int(spec.split("**")[0])
    return int(spec.split("*")[0])
