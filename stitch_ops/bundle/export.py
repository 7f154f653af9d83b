"""Turn a bundle definition (``bundles/<approach>``) plus trained models into a trained
bundle a party can send to another: configs, docs and licence copied, the portable model
under ``models/fold_<k>``, and metadata stating what it was trained on and how it scored."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stitch_ops import __version__
from stitch_ops.bundle.verify import verify_bundle
from stitch_ops.config import Params
from stitch_ops.outputs import output_dir, read_json, write_json
from stitch_ops.paths import PairPaths, bundle_definition


def export_trained_bundle(definition: Path, models: Mapping[str, Path], target: Path,
                          metadata: Mapping[str, Any]) -> Path:
    """Write ``target`` whole or not at all, verified before it is swapped in.

    Args:
        definition: the bundle folder in ``bundles/`` (configs/, docs/, LICENSE).
        models: name → exported model folder, copied to ``models/<name>``.
        metadata: fields added to ``configs/metadata.json`` (e.g. trained_on, eval_metrics).
    """
    with output_dir(target) as staging:
        shutil.copytree(definition, staging, dirs_exist_ok=True)
        for name, folder in models.items():
            shutil.copytree(folder, staging / "models" / name)
        meta_path = staging / "configs" / "metadata.json"
        meta = read_json(meta_path, hint=f"the bundle definition {definition} needs configs/metadata.json")
        meta.update(metadata)
        meta.setdefault("optional_packages_version", {})["stitch_ops"] = __version__
        write_json(meta_path, meta, indent=4)
        verify_bundle(staging)
    return target


def export_pipeline_model(pair: str, approach: str, trained_on: str, fold: int, params: Params, *,
                          root: Path = Path(".")) -> Path:
    """The trained bundle of one pipeline model, with its evaluation metrics when scored:
    ``exports/{pair}/{approach}_{trained_on}_fold{k}`` (the ``bundle*`` stages)."""
    params.pair(pair)
    paths = PairPaths(pair, root)
    summary = paths.metrics(approach, trained_on, fold) / "summary.json"
    metrics = read_json(summary, hint="rerun the evaluation stage") if summary.is_file() else {}
    return export_trained_bundle(bundle_definition(approach, root),
                                 {f"fold_{fold}": paths.model_dir(approach, trained_on, fold) / "export"},
                                 paths.export(approach, trained_on, fold),
                                 {"trained_on": f"{pair} party {trained_on}", "eval_metrics": metrics,
                                  "profile": params.profile})
