"""Shared plans: the condition for approaches that exchange weights.

Fine-tuning, federated averaging and merged training only make sense when every party's
network has the same architecture and sees identically preprocessed data, i.e. when the
parties use the *same nnU-Net plans*:

- **transferred plans** (fine-tuning ``a→b``): party b preprocesses its own data with
  the plans of a's model — nnunetv2's ``move_plans_between_datasets`` logic, without its
  global folders: only the dataset name and the image reader/writer are adapted;
- **joint plans** (``a‖b`` and ``a+b``): plans made by nnU-Net's planner from the two
  parties' *combined fingerprint*. A fingerprint is summary statistics (per-case spacings
  and shapes, foreground intensity statistics), which a party can share without sharing
  images; spacings and shapes are concatenated exactly, the intensity statistics are
  combined approximately (see :func:`combine_fingerprints`).

Preprocessing runs in this process (no worker pool): the same
``preprocessor.run_case_save`` nnU-Net's own preprocessing calls per case.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stitch_ops.approaches import other
from stitch_ops.baselines.merged import build_merged_dataset
from stitch_ops.config import PARTIES
from stitch_ops.errors import UserError
from stitch_ops.nnunet.env import NnUNetRoots, configure, planning_environment
from stitch_ops.nnunet.plan import PLANS
from stitch_ops.outputs import output_dir, read_json, scratch_dir, write_json
from stitch_ops.paths import JOINT, PairPaths, dataset_name

logger = logging.getLogger(__name__)

FINGERPRINT = "dataset_fingerprint.json"


def _reader_writer_name(raw_dataset: Path, dataset_json: Mapping[str, Any]) -> str:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    cases = get_filenames_of_train_images_and_targets(str(raw_dataset), dict(dataset_json))
    if not cases:
        raise FileNotFoundError(f"{raw_dataset} has no training cases to pick a reader/writer from")
    example = next(iter(cases.values()))["images"][0]
    return determine_reader_writer_from_dataset_json(dict(dataset_json), example, allow_nonmatching_filename=True,
                                                     verbose=False).__name__


def transfer_plans(source_plans: Mapping[str, Any], target_raw_dataset: Path) -> dict[str, Any]:
    """Plans of another dataset made usable for ``target_raw_dataset`` (as nnunetv2's
    ``move_plans_between_datasets``): architecture, patch size, spacing and normalisation
    stay; the dataset name and the image reader/writer become the target's."""
    plans = copy.deepcopy(dict(source_plans))
    dataset_json = read_json(target_raw_dataset / "dataset.json")
    plans["dataset_name"] = target_raw_dataset.name
    plans["image_reader_writer"] = _reader_writer_name(target_raw_dataset, dataset_json)
    return plans


def preprocess_with_plans(plans: Mapping[str, Any], raw_dataset: Path, preprocessed_root: Path,
                          configuration: str, *, fingerprint: Mapping[str, Any], progress: bool = True) -> Path:
    """Preprocess the training cases of ``raw_dataset`` with ``plans`` into
    ``preprocessed_root/<dataset name>`` (whole or not at all): plans as ``nnUNetPlans.json``,
    ``dataset.json``, the fold split, ``fingerprint`` (nnU-Net's trainer copies it into its
    output folder) and the preprocessed cases.

    Returns:
        The preprocessed dataset folder.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    plans = dict(plans)
    if plans.get("dataset_name") != raw_dataset.name:
        raise UserError(f"plans are for dataset {plans.get('dataset_name')!r}, not {raw_dataset.name!r}: "
                         f"transfer them first (transfer_plans)")
    dataset_json = read_json(raw_dataset / "dataset.json")
    splits = raw_dataset / "splits_final.json"
    if not splits.is_file():
        raise FileNotFoundError(f"{splits} is missing: the raw dataset must come from the split stage")
    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration(configuration)
    target = preprocessed_root / raw_dataset.name
    with output_dir(target) as staging:
        (staging / config.data_identifier).mkdir()
        (staging / "gt_segmentations").mkdir()
        write_json(staging / f"{PLANS}.json", plans)
        write_json(staging / "dataset.json", dataset_json)
        shutil.copyfile(splits, staging / "splits_final.json")
        write_json(staging / FINGERPRINT, fingerprint)
        preprocessor = config.preprocessor_class(verbose=False)
        cases = get_filenames_of_train_images_and_targets(str(raw_dataset), dataset_json)
        for case, files in tqdm(cases.items(), desc=f"preprocess {raw_dataset.name}", disable=not progress):
            preprocessor.run_case_save(str(staging / config.data_identifier / case), files["images"],
                                       files["label"], plans_manager, config, dataset_json)
            shutil.copyfile(files["label"], staging / "gt_segmentations" / f"{case}{dataset_json['file_ending']}")
    logger.info("preprocessed %d cases of %s with plans %r into %s", len(cases), raw_dataset.name,
                plans.get("plans_name"), target)
    return target


def combine_fingerprints(fingerprints: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The fingerprint of the union of several datasets, from their fingerprints alone.

    Exact: ``spacings`` and ``shapes_after_crop`` (per-case lists, concatenated).
    Approximate (nnU-Net computes them from pooled foreground voxel samples, which are not
    in a fingerprint): per-channel ``mean`` (case-weighted), ``std`` (pooled: weighted
    mean of variance plus variance of means), ``median`` and the 0.5/99.5 percentiles
    (case-weighted means), ``min``/``max`` (exact); ``median_relative_size_after_cropping``
    (case-weighted mean of the medians). Only CT normalisation reads the intensity
    statistics; z-score (MRI) and RGB normalisation do not.
    """
    if not fingerprints:
        raise ValueError("combine_fingerprints needs at least one fingerprint")
    weights = np.array([len(f["spacings"]) for f in fingerprints], dtype=float)
    weights /= weights.sum()
    channels = fingerprints[0]["foreground_intensity_properties_per_channel"].keys()
    intensity = {}
    for channel in channels:
        stats = [f["foreground_intensity_properties_per_channel"][channel] for f in fingerprints]
        means = np.array([s["mean"] for s in stats])
        mean = float(weights @ means)
        variance = float(weights @ (np.array([s["std"] for s in stats]) ** 2 + (means - mean) ** 2))
        intensity[channel] = {
            "mean": mean, "std": variance ** 0.5,
            "median": float(weights @ np.array([s["median"] for s in stats])),
            "percentile_00_5": float(weights @ np.array([s["percentile_00_5"] for s in stats])),
            "percentile_99_5": float(weights @ np.array([s["percentile_99_5"] for s in stats])),
            "min": float(min(s["min"] for s in stats)), "max": float(max(s["max"] for s in stats)),
        }
    return {
        "spacings": [s for f in fingerprints for s in f["spacings"]],
        "shapes_after_crop": [s for f in fingerprints for s in f["shapes_after_crop"]],
        "foreground_intensity_properties_per_channel": intensity,
        "median_relative_size_after_cropping": float(
            weights @ np.array([f["median_relative_size_after_cropping"] for f in fingerprints], dtype=float)),
    }


def plan_from_fingerprint(fingerprint: Mapping[str, Any], raw_dataset: Path, work: Path,
                          configuration: str) -> dict[str, Any]:
    """nnU-Net's planner (``ExperimentPlanner``) run on ``fingerprint`` instead of the
    fingerprint of ``raw_dataset`` (which only supplies dataset.json and the reader/writer).

    ``work`` is a scratch ``nnUNet_preprocessed`` root. Returns the plans (for
    ``raw_dataset``'s name; transfer them to each party).
    """
    folder = work / raw_dataset.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_json(folder / FINGERPRINT, fingerprint)
    configure(NnUNetRoots(raw=raw_dataset.parent, preprocessed=work))
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    planner = ExperimentPlanner(raw_dataset.name)
    with planning_environment():
        plans = planner.plan_experiment()
    if configuration not in plans["configurations"]:
        raise ValueError(f"the planner made no {configuration!r} configuration; it made "
                         f"{sorted(plans['configurations'])}")
    return plans


def prepare_transferred(pair: str, party: str, configuration: str, *, root: Path = Path("."),
                        progress: bool = True) -> Path:
    """Preprocess ``party``'s data with the other party's plans, for fine-tuning the other
    party's model on it: ``data/{pair}/nnUNet_preprocessed/{party}_with_plans_{other}``."""
    paths = PairPaths(pair, root)
    source = other(party)
    source_plans = read_json(paths.preprocessed_root(source) / dataset_name(pair, source) / f"{PLANS}.json")
    own_fingerprint = read_json(paths.preprocessed_root(party) / dataset_name(pair, party) / FINGERPRINT)
    raw = paths.raw_dataset(party)
    logger.info("preprocessing %s with the plans of party %s", raw.name, source)
    return preprocess_with_plans(transfer_plans(source_plans, raw), raw,
                                 paths.preprocessed_root(party, plans_from=source), configuration,
                                 fingerprint=own_fingerprint, progress=progress)


def prepare_joint(pair: str, configuration: str, *, root: Path = Path("."), progress: bool = True) -> dict[str, Path]:
    """Joint plans from the parties' combined fingerprint; each party's data preprocessed
    with them (``{party}_with_plans_joint``, for federated learning) and the pooled
    dataset built from those (``merged``, see :mod:`stitch_ops.baselines.merged`).

    Returns:
        ``{"a": folder, "b": folder, "merged": folder}``.
    """
    paths = PairPaths(pair, root)
    fingerprints = [read_json(paths.preprocessed_root(p) / dataset_name(pair, p) / FINGERPRINT) for p in PARTIES]
    combined = combine_fingerprints(fingerprints)
    with scratch_dir(paths.preprocessed_root("joint_planning")) as scratch:  # the planner needs a preprocessed root
        plans = plan_from_fingerprint(combined, paths.raw_dataset(PARTIES[0]), scratch, configuration)
    plans["plans_name"] = PLANS
    out: dict[str, Path] = {}
    for party in PARTIES:
        raw = paths.raw_dataset(party)
        out[party] = preprocess_with_plans(transfer_plans(plans, raw), raw,
                                           paths.preprocessed_root(party, plans_from=JOINT), configuration,
                                           fingerprint=combined, progress=progress)
    out["merged"] = build_merged_dataset(pair, {p: out[p] for p in PARTIES}, paths.preprocessed_root("merged"), configuration,
                                         test_cases={p: read_json(paths.raw_dataset(p) / "test_cases.json")
                                                     for p in PARTIES})
    return out
