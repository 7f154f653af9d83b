"""The paper's data protocol: six parts, five for cross-validation, one for testing.

A dataset of n cases is cut into six parts of ``n // 6`` cases after a seeded
shuffle; the remainder goes to the last part, the test set, and the other
five are the folds of 5-fold cross-validation (fold k validates on part k).
Frames of one video are near-duplicates, so when a dataset has
``case_groups.csv`` the parts are made by *bin covering* instead, which
never cuts a group -- otherwise the validation and test scores would be
inflated by frames whose neighbours were trained on.

:func:`split_raw_dataset` applies the protocol to a raw dataset and writes the
working nnU-Net dataset (``imagesTr``/``labelsTr`` = parts 1-5,
``imagesTs``/``labelsTs`` = test part, ``splits_final.json``, ``test_cases.json``,
``split.json``).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stitch_ops.data.raw import (
    CASE_GROUPS_CSV,
    IMAGES_TR,
    IMAGES_TS,
    LABELS_TR,
    LABELS_TS,
    DatasetError,
    groups_to_members,
    image_path,
    label_path,
    read_case_groups,
    read_dataset_json,
    validate_raw_dataset,
    write_dataset_json,
)
from stitch_ops.outputs import output_dir, read_json, write_json

logger = logging.getLogger(__name__)

N_PARTS = 6
SPLITS_FINAL_JSON = "splits_final.json"
TEST_CASES_JSON = "test_cases.json"
SPLIT_JSON = "split.json"
_DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.-]+$")


class SplitMethod(str, Enum):
    """How the six parts were made."""

    SIX_PART = "six_part"
    BIN_COVERING = "bin_covering"


class Fold(NamedTuple):
    """One cross-validation fold: train on ``train``, validate on ``val`` (both sorted)."""

    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass(frozen=True)
class SplitRecord:
    """The six parts of one dataset; the last is the test set, the others the CV folds' validation parts.

    Attributes:
        parts: six tuples of sorted case ids.
        method: six-part shuffle or bin covering (when the data has case groups).
        seed: the shuffle seed (unused by bin covering, which is deterministic).
    """

    parts: tuple[tuple[str, ...], ...]
    method: SplitMethod
    seed: int

    @property
    def test_cases(self) -> tuple[str, ...]:
        """The held-out test part (never seen by training, validation or stitch selection)."""
        return self.parts[-1]

    @property
    def folds(self) -> tuple[Fold, ...]:
        """Five folds: fold k validates on part k and trains on the other four CV parts."""
        cv_parts = self.parts[:-1]
        return tuple(
            Fold(train=tuple(sorted(c for j, p in enumerate(cv_parts) if j != k for c in p)), val=part)
            for k, part in enumerate(cv_parts)
        )

    def to_json(self) -> dict[str, object]:
        """Plain data for ``split.json`` (provenance: method, seed, all six parts)."""
        return {"method": self.method.value, "seed": self.seed, "parts": [list(p) for p in self.parts]}

    def splits_final(self) -> list[dict[str, list[str]]]:
        """The folds in nnU-Net's ``splits_final.json`` format: ``[{"train": [...], "val": [...]}, ...]``."""
        return [{"train": list(fold.train), "val": list(fold.val)} for fold in self.folds]


# --------------------------------------------------------------------------- splitting case ids


def six_part_split(case_ids: Sequence[str], seed: int) -> list[list[str]]:
    """Shuffle ``case_ids`` with ``seed`` and cut them into six parts of ``n // 6``; the remainder joins the last.

    The ids are sorted before shuffling, so the result depends on the set of
    ids and the seed only, not on the order a folder listing returned.

    Args:
        case_ids: unique case identifiers, at least six.
        seed: shuffle seed.

    Returns:
        Six lists (each sorted); the last one, the test set, has ``n - 5 * (n // 6)`` cases.

    Raises:
        ValueError: fewer than six cases, or duplicate ids.

    Example:
        >>> [len(p) for p in six_part_split([f"c{i}" for i in range(20)], seed=0)]
        [3, 3, 3, 3, 3, 5]
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"case ids must be unique; got duplicates {sorted({c for c in ids if ids.count(c) > 1})[:5]}.")
    if len(ids) < N_PARTS:
        raise ValueError(
            f"the six-part split needs at least {N_PARTS} cases (five folds and a test part), got {len(ids)}."
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    size = len(ids) // N_PARTS
    parts = [shuffled[k * size : (k + 1) * size] for k in range(N_PARTS - 1)]
    parts.append(shuffled[(N_PARTS - 1) * size :])
    return [sorted(part) for part in parts]


def bin_covering_split(groups: Mapping[str, Sequence[str]], n_bins: int = 6) -> list[list[str]]:
    """Assign whole groups (e.g. videos) to ``n_bins`` bins of about ``n / n_bins`` cases each.

    The paper's bin covering: with groups sorted largest first, fill the bins
    one after another with the largest groups until the next group would
    overflow the target ``n / n_bins``; then add the remaining groups,
    smallest first, each to the currently emptiest bin. Groups are never cut;
    ties break by group name (then bin index), so the result is deterministic.

    Two edge cases the paper leaves open are settled so that no bin stays
    empty: an empty bin always takes the next group (a group larger than the
    target gets a bin of its own instead of blocking all bins), and a bin
    stops early when the remaining groups are needed to give each later bin
    one. Afterwards the bin sizes differ by at most the largest group's size.

    Args:
        groups: ``{group: case ids}``; every case in exactly one group.
        n_bins: number of bins (six for the paper's protocol; the last bin is the test set).

    Returns:
        ``n_bins`` sorted lists of case ids.

    Raises:
        ValueError: fewer groups than bins, an empty group, or a case in two groups.

    Example:
        >>> bin_covering_split({"v1": ["a", "b"], "v2": ["c"], "v3": ["d"]}, n_bins=3)
        [['a', 'b'], ['c'], ['d']]
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}.")
    _check_groups(groups)
    if len(groups) < n_bins:
        raise ValueError(
            f"bin covering needs at least {n_bins} groups to fill {n_bins} bins, got {len(groups)}; "
            "collect more videos or use fewer bins."
        )
    n = sum(len(cases) for cases in groups.values())
    largest_first = sorted(groups, key=lambda g: (-len(groups[g]), g))
    bins: list[list[str]] = [[] for _ in range(n_bins)]
    sizes = [0] * n_bins
    next_group = 0
    for b in range(n_bins):  # phase 1: largest groups while they fit under the target n / n_bins
        while next_group < len(largest_first):
            size = len(groups[largest_first[next_group]])
            overflows = (sizes[b] + size) * n_bins > n  # integer form of sizes[b] + size > n / n_bins
            needed_later = n_bins - 1 - b  # every later bin needs at least one group
            if sizes[b] > 0 and (overflows or len(largest_first) - next_group <= needed_later):
                break
            bins[b].extend(groups[largest_first[next_group]])
            sizes[b] += size
            next_group += 1
    rest = sorted(largest_first[next_group:], key=lambda g: (len(groups[g]), g))
    for group in rest:  # phase 2: smallest first, each into the emptiest bin
        b = min(range(n_bins), key=lambda i: (sizes[i], i))
        bins[b].extend(groups[group])
        sizes[b] += len(groups[group])
    if 0 in sizes:
        raise ValueError(f"bin covering left a bin empty (bin sizes {sizes}); the groups are too few or too unequal.")
    return [sorted(cases) for cases in bins]


def _check_groups(groups: Mapping[str, Sequence[str]]) -> None:
    seen: dict[str, str] = {}
    for group, cases in groups.items():
        if isinstance(cases, str) or len(cases) == 0:
            raise ValueError(f"group {group!r} must be a non-empty sequence of case ids, got {cases!r}.")
        for case in cases:
            if case in seen:
                raise ValueError(
                    f"case {case!r} is in groups {seen[case]!r} and {group!r}; a case belongs to one group."
                )
            seen[case] = group


# --------------------------------------------------------------------------- splitting a dataset on disk


def split_raw_dataset(source: Path, target: Path, seed: int) -> SplitRecord:
    """Apply the six-part protocol to the raw dataset ``source`` and write the working dataset ``target``.

    ``target``'s folder name is the nnU-Net dataset name (``Dataset001_polyp_a``).
    Written: ``imagesTr``/``labelsTr`` (parts 1-5), ``imagesTs``/``labelsTs``
    (the test part), ``dataset.json`` (``numTraining`` updated), nnU-Net's
    ``splits_final.json`` (fold k validates on part k; copy it into the
    preprocessed dataset folder so nnU-Net uses it), ``test_cases.json`` (a
    sorted list of case ids), ``split.json`` (the :class:`SplitRecord`:
    method, seed, six parts) and ``case_groups.csv`` when ``source`` has one.
    With case groups, bin covering is used and ``seed`` has no effect.

    The dataset is built in a temporary sibling folder and renamed at the end,
    so an interrupted run never leaves a dataset that looks complete.

    Args:
        source: raw dataset with every case in ``imagesTr``/``labelsTr``.
        target: output folder, named ``DatasetXXX_name``.
        seed: shuffle seed for the six-part split.

    Returns:
        The :class:`SplitRecord`.

    Raises:
        DatasetError: invalid source dataset or target name, or too few cases/groups.
    """
    source, target = Path(source), Path(target)
    logger.info("splitting %s into %s (seed %d)", source, target, seed)
    if not _DATASET_NAME.match(target.name):
        raise DatasetError(
            f"target folder {target.name!r} must be named like 'Dataset001_polyp_a' (nnU-Net finds datasets by that "
            "name); choose such a name."
        )
    info = validate_raw_dataset(source)
    if info.test_case_ids:
        raise DatasetError(
            f"{source} already has an {IMAGES_TS} folder; split the source dataset with all cases in {IMAGES_TR}."
        )
    record = _make_record(source, list(info.case_ids), seed)
    logger.info("split %s by %s: part sizes %s", source.name, record.method.value, [len(p) for p in record.parts])
    _write_split_dataset(source, target, record, files_per_case=info.files_per_case, file_ending=info.file_ending)
    return record


def _make_record(source: Path, case_ids: list[str], seed: int) -> SplitRecord:
    groups = read_case_groups(source)
    try:
        if groups is None:
            parts = six_part_split(case_ids, seed)
            method = SplitMethod.SIX_PART
        else:
            logger.info("%s has %s: bin covering keeps its groups intact (seed unused)", source.name, CASE_GROUPS_CSV)
            members = groups_to_members({case: groups[case] for case in case_ids})
            parts = bin_covering_split(members, N_PARTS)
            method = SplitMethod.BIN_COVERING
    except ValueError as err:
        raise DatasetError(f"cannot split {source}: {err}") from err
    return SplitRecord(parts=tuple(tuple(p) for p in parts), method=method, seed=int(seed))


def _write_split_dataset(
    source: Path, target: Path, record: SplitRecord, *, files_per_case: int, file_ending: str
) -> None:
    meta = read_dataset_json(source)
    train_cases = [c for part in record.parts[:-1] for c in part]
    with output_dir(target) as tmp:
        for folder in (IMAGES_TR, LABELS_TR, IMAGES_TS, LABELS_TS):
            (tmp / folder).mkdir()
        for test, cases in ((False, train_cases), (True, record.test_cases)):
            for case in cases:
                for channel in range(files_per_case):
                    shutil.copyfile(
                        image_path(source, case, file_ending, channel),
                        image_path(tmp, case, file_ending, channel, test=test),
                    )
                shutil.copyfile(label_path(source, case, file_ending), label_path(tmp, case, file_ending, test=test))
        extra = {k: v for k, v in meta.items() if k not in ("channel_names", "labels", "numTraining", "file_ending")}
        extra["numTest"] = len(record.test_cases)
        write_dataset_json(
            tmp,
            channel_names=meta["channel_names"],
            labels=meta["labels"],
            num_training=len(train_cases),
            file_ending=file_ending,
            **extra,
        )
        write_json(tmp / SPLITS_FINAL_JSON, record.splits_final())
        write_json(tmp / TEST_CASES_JSON, list(record.test_cases))
        write_json(tmp / SPLIT_JSON, record.to_json())
        if (source / CASE_GROUPS_CSV).is_file():
            shutil.copyfile(source / CASE_GROUPS_CSV, tmp / CASE_GROUPS_CSV)


def read_fold(dataset: Path, fold: int) -> Fold:
    """Fold ``fold`` (its training and validation case ids) of a split working dataset."""
    folds = read_split_record(dataset).folds
    if not 0 <= fold < len(folds):
        raise DatasetError(f"{dataset} has folds 0..{len(folds) - 1}, not fold {fold}")
    return folds[fold]


def read_split_record(dataset: Path) -> SplitRecord:
    """Read back the :class:`SplitRecord` that :func:`split_raw_dataset` wrote to ``dataset/split.json``.

    Later stages (training a fold, evaluating on the test part) read the split
    from disk rather than recomputing it, so they can never disagree with it.
    """
    path = Path(dataset) / SPLIT_JSON
    try:
        content = read_json(path, hint="rerun the split stage")
        return SplitRecord(
            parts=tuple(tuple(part) for part in content["parts"]),
            method=SplitMethod(content["method"]),
            seed=int(content["seed"]),
        )
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DatasetError(f"cannot read the split record {path} ({err}); rerun the split stage.") from err
