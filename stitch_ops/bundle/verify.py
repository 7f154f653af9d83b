"""Check a MONAI bundle before trusting anything in it.

A bundle from another institution is *data*: its configs may name Python callables
(``"_target_"``) and expressions (``"$..."``) that MONAI would execute. Verification reads
the configs as plain JSON, refuses code outside ``stitch_ops``/``monai`` unless the user
says they trust the sender, and loads shipped models with ``weights_only=True`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitch_ops.errors import UserError
from stitch_ops.nnunet.model import ModelError, load_model

REQUIRED_FILES = ("configs/metadata.json", "LICENSE", "docs/README.md")
REQUIRED_METADATA = ("version", "monai_version", "pytorch_version", "task", "description",
                     "network_data_format")
TRUSTED_TARGET_PREFIXES = ("stitch_ops.", "monai.")


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
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is not readable JSON ({err})") from err


def verify_bundle(path: Path, *, trust: bool = False) -> BundleReport:
    """Verify the bundle at ``path``; raise :class:`BundleError` naming the first problem.

    Args:
        path: the bundle folder (``configs/``, ``docs/``, ``LICENSE``, optional ``models/``).
        trust: accept ``$`` expressions and ``_target_``s outside stitch_ops/monai.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no bundle folder at {path}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} is not a MONAI bundle: missing {missing}")
    metadata = _read_json(path / "configs" / "metadata.json")
    absent = [key for key in REQUIRED_METADATA if key not in metadata]
    if absent:
        raise BundleError(f"{path}/configs/metadata.json lacks {absent}")
    configs = sorted(p.name for p in (path / "configs").glob("*.json") if p.name != "metadata.json")
    report = BundleReport(path, metadata, configs)
    for name in configs:
        for where, text in _walk(_read_json(path / "configs" / name), name):
            is_trusted_target = "#_target_" in where and text.startswith(TRUSTED_TARGET_PREFIXES)
            if not is_trusted_target:
                report.code.append(f"{where}: {text}")
    if report.code and not trust:
        raise BundleError(f"{path} carries code that would run when its configs are parsed: "
                          f"{report.code[:5]}. Read it, and pass --trust only if you trust the sender.")
    for model_dir in sorted(p for p in path.glob("models/*") if p.is_dir()):
        try:
            _load_shipped_model(model_dir)
        except (ModelError, ValueError, RuntimeError) as err:
            raise BundleError(f"shipped model {model_dir} is broken: {err}") from err
        report.models.append(model_dir)
    return report


def _load_shipped_model(folder: Path) -> None:
    """Load a shipped model the way its bundle would: an nnU-Net export or a stitch-ensemble."""
    from stitch_ops.stitching.pipeline import ENSEMBLE_FILE, load_exported_ensemble

    if (folder / ENSEMBLE_FILE).is_file():
        load_exported_ensemble(folder)
    else:
        load_model(folder)
