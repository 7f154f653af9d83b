"""Merged data (``a+b``): one nnU-Net on the pooled datasets — the upper bound that needs
data sharing.

The pooled dataset (id 3, ``Dataset003_{pair}_merged``) holds the cross-validation cases
of both parties, preprocessed with the joint plans; its fold ``k`` trains on the union of
the parties' fold-``k`` training cases and validates on the union of their validation
cases. Test cases are never copied in, and :func:`check_no_test_cases` proves it before
training.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from stitch_ops.errors import UserError
from stitch_ops.nnunet.plan import PLANS
from stitch_ops.outputs import output_dir, read_json, write_json
from stitch_ops.paths import MERGED_DATASET_ID

logger = logging.getLogger(__name__)


class TestCaseLeakError(UserError):
    """A test case reached a training dataset or its split."""

    __test__ = False  # not a pytest test class


def merged_dataset_name(pair: str) -> str:
    return f"Dataset{MERGED_DATASET_ID:03d}_{pair}_merged"


def merge_splits(splits: Sequence[Sequence[Mapping[str, Sequence[str]]]]) -> list[dict[str, list[str]]]:
    """Fold ``k`` of the pooled dataset = union of every party's fold ``k``."""
    n_folds = {len(s) for s in splits}
    if len(n_folds) != 1:
        raise ValueError(f"the parties' splits have different numbers of folds: {sorted(n_folds)}")
    return [{"train": [c for s in splits for c in s[k]["train"]], "val": [c for s in splits for c in s[k]["val"]]}
            for k in range(n_folds.pop())]


def check_no_test_cases(folder: Path, test_cases: Mapping[str, Sequence[str]], configuration: str) -> None:
    """Raise :class:`TestCaseLeakError` if any party's test case is in the preprocessed
    dataset ``folder`` (its data or its split)."""
    tests = {case for cases in test_cases.values() for case in cases}
    plans = read_json(folder / f"{PLANS}.json")
    data_dir = folder / plans["configurations"][configuration]["data_identifier"]
    in_data = {p.name.split(".")[0].removesuffix("_seg") for p in data_dir.iterdir()} & tests
    splits = read_json(folder / "splits_final.json")
    in_splits = {c for fold in splits for c in fold["train"] + fold["val"]} & tests
    if in_data or in_splits:
        raise TestCaseLeakError(f"test cases in the training dataset {folder}: data {sorted(in_data)[:5]}, "
                                f"splits {sorted(in_splits)[:5]}")


def build_merged_dataset(pair: str, party_folders: Mapping[str, Path], merged_root: Path, configuration: str,
                         *, test_cases: Mapping[str, Sequence[str]]) -> Path:
    """Pool the parties' preprocessed datasets (which must share plans) into
    ``merged_root/Dataset003_{pair}_merged`` (whole or not at all).

    Args:
        party_folders: party → its preprocessed dataset folder (joint plans).
        test_cases: party → its test case ids, checked absent from the result.

    Returns:
        The pooled preprocessed dataset folder.
    """
    name = merged_dataset_name(pair)
    folders = dict(party_folders)
    plans = [read_json(f / f"{PLANS}.json") for f in folders.values()]
    architectures = {json.dumps(p["configurations"][configuration], sort_keys=True) for p in plans}
    if len(architectures) != 1:
        raise ValueError(f"cannot pool {sorted(folders)}: their {configuration} plans differ; "
                         f"preprocess both with the joint plans")
    merged_plans = {**plans[0], "dataset_name": name}
    dataset_json = read_json(next(iter(folders.values())) / "dataset.json")
    dataset_json["numTraining"] = sum(read_json(f / "dataset.json")["numTraining"] for f in folders.values())
    dataset_json["name"] = name
    splits = merge_splits([read_json(f / "splits_final.json") for f in folders.values()])
    data_identifier = merged_plans["configurations"][configuration]["data_identifier"]

    target = merged_root / name
    with output_dir(target) as staging:
        (staging / data_identifier).mkdir()
        (staging / "gt_segmentations").mkdir()
        for party, folder in folders.items():
            for sub in (data_identifier, "gt_segmentations"):
                for file in sorted((folder / sub).iterdir()):
                    if (staging / sub / file.name).exists():
                        raise ValueError(f"case file {file.name} exists in more than one party's data; "
                                         f"case ids must be unique across parties to pool them")
                    shutil.copy2(file, staging / sub / file.name)
        for file_name, content in ((f"{PLANS}.json", merged_plans), ("dataset.json", dataset_json),
                                   ("splits_final.json", splits)):
            write_json(staging / file_name, content)
        fingerprint = next(iter(folders.values())) / "dataset_fingerprint.json"  # the joint (combined) one
        if fingerprint.is_file():
            shutil.copyfile(fingerprint, staging / fingerprint.name)
        check_no_test_cases(staging, test_cases, configuration)
    logger.info("pooled %s into %s: fold sizes %s", sorted(folders), target,
                [(len(f["train"]), len(f["val"])) for f in splits])
    return target
