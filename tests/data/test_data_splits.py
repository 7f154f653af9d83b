"""The six-part protocol: part sizes, bin covering of videos, and the split dataset on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from stitch_ops.data.raw import DatasetError, validate_raw_dataset
from stitch_ops.data.splits import (
    SplitMethod,
    bin_covering_split,
    read_split_record,
    six_part_split,
    split_raw_dataset,
)

if TYPE_CHECKING:
    from conftest import SyntheticData


def _ids(n: int) -> list[str]:
    return [f"case_{i:03d}" for i in range(n)]


@pytest.mark.parametrize(
    ("n", "expected"), [(6, [1] * 6), (11, [1, 1, 1, 1, 1, 6]), (20, [3, 3, 3, 3, 3, 5]), (36, [6] * 6)]
)
def test_six_parts_of_floor_n_over_six_with_remainder_in_test_part(n: int, expected: list[int]) -> None:
    parts = six_part_split(_ids(n), seed=0)
    assert [len(p) for p in parts] == expected
    assert sorted(c for p in parts for c in p) == _ids(n)


def test_six_part_split_is_seeded_and_order_free() -> None:
    ids = _ids(30)
    assert six_part_split(ids, seed=3) == six_part_split(list(reversed(ids)), seed=3)
    assert six_part_split(ids, seed=3) != six_part_split(ids, seed=4)


def test_six_part_split_refuses_too_few_or_duplicate_cases() -> None:
    with pytest.raises(ValueError, match="at least 6 cases"):
        six_part_split(_ids(5), seed=0)
    with pytest.raises(ValueError, match="unique"):
        six_part_split(["x"] * 7, seed=0)


def _groups(sizes: dict[str, int]) -> dict[str, list[str]]:
    return {g: [f"{g}_{i}" for i in range(s)] for g, s in sizes.items()}


def test_bin_covering_hand_example() -> None:
    """n = 18, target 3: A(4) alone, then B, C, D+?, E+F, G+H+I; groups never cut."""
    groups = _groups({"A": 4, "B": 3, "C": 3, "D": 2, "E": 2, "F": 1, "G": 1, "H": 1, "I": 1})
    bins = bin_covering_split(groups, n_bins=6)
    assert bins == [
        groups["A"],
        groups["B"],
        groups["C"],
        groups["D"],
        sorted(groups["E"] + groups["F"]),
        sorted(groups["G"] + groups["H"] + groups["I"]),
    ]


def test_bin_covering_second_phase_fills_emptiest_bin_smallest_first() -> None:
    """Target 10/3: bins take 3, 3, 3 in phase 1; the 1 left goes to the emptiest bin (lowest index on ties)."""
    groups = _groups({"p": 3, "q": 3, "r": 3, "s": 1})
    assert [len(b) for b in bin_covering_split(groups, n_bins=3)] == [4, 3, 3]


def test_bin_covering_second_phase_goes_smallest_first() -> None:
    """n = 9, target 3: phase 1 gives A | B | C; then E(1) joins bin 0 (all tie at 2), D(2) the emptiest, bin 1."""
    groups = _groups({"A": 2, "B": 2, "C": 2, "D": 2, "E": 1})
    assert bin_covering_split(groups, n_bins=3) == [
        sorted(groups["A"] + groups["E"]),
        sorted(groups["B"] + groups["D"]),
        groups["C"],
    ]


@pytest.mark.parametrize("trial", range(40))
def test_bin_covering_keeps_groups_whole_and_bins_balanced(trial: int) -> None:
    rng = np.random.default_rng(trial)
    sizes = {f"video{i:02d}": int(s) for i, s in enumerate(rng.integers(1, 9, int(rng.integers(6, 30))))}
    groups = _groups(sizes)
    bins = bin_covering_split(groups, n_bins=6)
    where = {case: k for k, cases in enumerate(bins) for case in cases}
    assert sorted(where) == sorted(c for cases in groups.values() for c in cases)
    assert sum(len(b) for b in bins) == len(where), "every case in exactly one bin"
    for cases in groups.values():
        assert len({where[c] for c in cases}) == 1, "a group is never cut"
    lengths = [len(b) for b in bins]
    assert min(lengths) > 0
    assert max(lengths) - min(lengths) <= max(sizes.values())
    shuffled = dict(sorted(groups.items(), key=lambda kv: rng.random()))
    assert bin_covering_split(shuffled, n_bins=6) == bins, "deterministic, whatever the mapping's order"


def test_bin_covering_refuses_bad_groups() -> None:
    with pytest.raises(ValueError, match="at least 6 groups"):
        bin_covering_split(_groups({"a": 5, "b": 5}))
    with pytest.raises(ValueError, match="non-empty"):
        bin_covering_split({**_groups({str(i): 1 for i in range(6)}), "empty": []})
    with pytest.raises(ValueError, match="one group"):
        bin_covering_split({"a": ["x"], "b": ["x"], **_groups({str(i): 1 for i in range(6)})})


@pytest.mark.parametrize("party", ["a", "b"])
def test_split_raw_dataset_writes_working_nnunet_dataset(party: str, synthetic: SyntheticData, tmp_path: Path) -> None:
    source = synthetic.root / "polyp" / party
    target = tmp_path / f"Dataset00{1 if party == 'a' else 2}_polyp_{party}"
    record = split_raw_dataset(source, target, seed=0)

    n = synthetic.cases["polyp"][party]
    info = validate_raw_dataset(target)
    assert info.test_case_ids == record.test_cases
    assert len(info.case_ids) + len(info.test_case_ids) == n
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["numTraining"] == len(info.case_ids)

    folds = json.loads((target / "splits_final.json").read_text())
    assert len(folds) == 5 and all(set(f) == {"train", "val"} for f in folds)
    for k, fold in enumerate(folds):
        assert fold["val"] == list(record.parts[k])
        assert sorted(fold["train"] + fold["val"]) == sorted(info.case_ids), "each fold covers the CV cases once"
        assert not set(fold["train"]) & set(fold["val"])
    assert json.loads((target / "test_cases.json").read_text()) == list(record.test_cases)
    assert read_split_record(target) == record

    if party == "a":
        assert record.method is SplitMethod.SIX_PART
        assert [len(p) for p in record.parts] == [n // 6] * 5 + [n - 5 * (n // 6)]
        assert not (target / "case_groups.csv").exists()
    else:
        assert record.method is SplitMethod.BIN_COVERING
        assert (target / "case_groups.csv").read_bytes() == (source / "case_groups.csv").read_bytes()
        groups = {}
        for line in (source / "case_groups.csv").read_text().splitlines()[1:]:
            case, group = line.split(",")
            groups.setdefault(group, set()).add(case)
        parts = [set(p) for p in record.parts]
        assert all(any(cases <= part for part in parts) for cases in groups.values()), "videos stay in one part"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"


def test_split_is_deterministic_and_seeded(synthetic: SyntheticData, tmp_path: Path) -> None:
    source = synthetic.root / "pelvis" / "a"
    first = split_raw_dataset(source, tmp_path / "Dataset001_x", seed=5)
    again = split_raw_dataset(source, tmp_path / "Dataset001_x", seed=5)  # also replaces an existing target
    other = split_raw_dataset(source, tmp_path / "Dataset002_x", seed=6)
    assert first == again
    assert first.parts != other.parts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_x", "Dataset002_x"]


def test_split_refuses_bad_target_name_and_leaves_nothing(synthetic: SyntheticData, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Dataset001_polyp_a"):
        split_raw_dataset(synthetic.root / "polyp" / "a", tmp_path / "polyp_a", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_split_leaves_no_dataset(
    synthetic: SyntheticData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure half-way (here: disk full while copying) must not leave a dataset that looks complete."""
    calls, real_copy = [], shutil.copyfile

    def failing_copy(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) > 3:
            raise OSError("No space left on device")
        real_copy(src, dst)

    monkeypatch.setattr("stitch_ops.data.splits.shutil.copyfile", failing_copy)
    with pytest.raises(OSError, match="No space"):
        split_raw_dataset(synthetic.root / "polyp" / "a", tmp_path / "Dataset001_polyp_a", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_split_refuses_too_few_videos(synthetic: SyntheticData, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(synthetic.root / "polyp" / "b", source)
    rows = (source / "case_groups.csv").read_text().splitlines()
    (source / "case_groups.csv").write_text(
        "\n".join([rows[0]] + [f"{r.split(',')[0]},one_video" for r in rows[1:]]) + "\n"
    )
    with pytest.raises(DatasetError, match="at least 6 groups"):
        split_raw_dataset(source, tmp_path / "Dataset002_polyp_b", seed=0)
