"""Turn a bundle definition (``bundles/<approach>``) plus trained models into a trained
bundle a party can send to another: configs, docs and licence copied, the portable model
under ``models/fold_<k>``, and metadata stating what it was trained on and how it scored."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stitch_ops import __version__
from stitch_ops.bundle.verify import verify_bundle


def export_trained_bundle(definition: Path, models: Mapping[str, Path], target: Path,
                          metadata: Mapping[str, Any]) -> Path:
    """Write ``target`` atomically and verify it.

    Args:
        definition: the bundle folder in ``bundles/`` (configs/, docs/, LICENSE).
        models: name → exported model folder, copied to ``models/<name>``.
        metadata: fields added to ``configs/metadata.json`` (e.g. trained_on, eval_metrics).
    """
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(definition, staging)
    for name, folder in models.items():
        shutil.copytree(folder, staging / "models" / name)
    meta_path = staging / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta.update(metadata)
    meta.setdefault("optional_packages_version", {})["stitch_ops"] = __version__
    meta_path.write_text(json.dumps(meta, indent=4))
    verify_bundle(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
