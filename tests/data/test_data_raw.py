"""Raw-dataset validation: what nnU-Net accepts, and clear errors for what it would choke on."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from stitch_ops.data.raw import DatasetError, check_compatible, validate_raw_dataset

if TYPE_CHECKING:
    from conftest import SyntheticData


class _InProcessPool:
    """Stands in for nnU-Net's spawn pool, so its checks run in this process in milliseconds."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> _InProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def starmap(self, func, iterable):  # noqa: ANN001, ANN201 - mirrors multiprocessing.Pool.starmap
        return list(itertools.starmap(func, iterable))


@pytest.mark.parametrize(("pair", "party"), [("polyp", "a"), ("polyp", "b"), ("pelvis", "a"), ("pelvis", "b")])
def test_nnunet_verifies_synthetic_dataset(
    pair: str, party: str, synthetic: SyntheticData, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    class _Context:
        Pool = _InProcessPool

    monkeypatch.setattr(vdi.multiprocessing, "get_context", lambda method: _Context())
    vdi.verify_dataset_integrity(str(synthetic.root / pair / party), num_processes=1)  # raises on any problem


def test_validate_describes_dataset(synthetic: SyntheticData) -> None:
    info = validate_raw_dataset(synthetic.root / "polyp" / "b")
    assert info.channel_names == ("R", "G", "B")
    assert info.label_map == {"background": 0, "polyp": 1}
    assert info.file_ending == ".png"
    assert info.files_per_case == 1
    assert len(info.case_ids) == synthetic.cases["polyp"]["b"]
    assert info.has_case_groups and info.test_case_ids == ()
    pelvis = validate_raw_dataset(synthetic.root / "pelvis" / "a")
    assert pelvis.channel_names == ("MRI",) and pelvis.file_ending == ".nii.gz"


def test_check_compatible(synthetic: SyntheticData) -> None:
    polyp_a, polyp_b = (validate_raw_dataset(synthetic.root / "polyp" / p) for p in ("a", "b"))
    check_compatible(polyp_a, polyp_b)
    pelvis_a = validate_raw_dataset(synthetic.root / "pelvis" / "a")
    with pytest.raises(DatasetError, match="mismatched labels or channels between parties") as err:
        check_compatible(polyp_a, pelvis_a)
    assert "channels" in str(err.value) and "labels" in str(err.value) and "file endings" in str(err.value)


@pytest.fixture()
def polyp_copy(synthetic: SyntheticData, tmp_path: Path) -> Path:
    """A writable copy of synthetic polyp party b to break in various ways."""
    return Path(shutil.copytree(synthetic.root / "polyp" / "b", tmp_path / "b"))


def _edit_json(root: Path, **changes: object) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def _first_case(root: Path) -> str:
    return sorted((root / "labelsTr").iterdir())[0].name[: -len(".png")]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "dataset.json").unlink(), "dataset.json is missing"),
        (lambda r: (r / "dataset.json").write_text("{"), "not valid JSON"),
        (lambda r: _edit_json(r, numTraining=3), "numTraining"),
        (lambda r: _edit_json(r, file_ending=".jpg"), "not supported"),
        (lambda r: _edit_json(r, channel_names={"0": "gray"}), "channel"),
        (lambda r: _edit_json(r, labels={"background": 0, "polyp": 2}), "consecutive"),
        (lambda r: (r / "labelsTr" / f"{_first_case(r)}.png").unlink(), "no label for case"),
        (lambda r: (r / "imagesTr" / f"{_first_case(r)}_0000.png").unlink(), "label\\(s\\) without image"),
        (lambda r: (r / "imagesTr" / f"{_first_case(r)}_0000.png").write_bytes(b"not a png"), "cannot read image"),
        (
            lambda r: Image.fromarray(np.full((8, 8), 1, np.uint8)).save(r / "labelsTr" / f"{_first_case(r)}.png"),
            "differs from image size",
        ),
        (
            lambda r: Image.fromarray(np.full((64, 64), 2, np.uint8)).save(r / "labelsTr" / f"{_first_case(r)}.png"),
            "not declared",
        ),
        (lambda r: (r / "case_groups.csv").write_text("case,group\nnobody,v1\n"), "no group for case"),
    ],
)
def test_validate_names_the_problem(polyp_copy: Path, breakage, message: str) -> None:  # noqa: ANN001
    validate_raw_dataset(polyp_copy)  # intact copy passes
    breakage(polyp_copy)
    with pytest.raises(DatasetError, match=message):
        validate_raw_dataset(polyp_copy)


def test_unlabelled_test_images_are_ignored(polyp_copy: Path) -> None:
    """nnU-Net datasets often carry imagesTs without labels: they cannot be evaluated, so they are not test cases."""
    (polyp_copy / "imagesTs").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(polyp_copy / "imagesTs" / "extra_0000.png")
    assert validate_raw_dataset(polyp_copy).test_case_ids == ()
    (polyp_copy / "labelsTs").mkdir()
    with pytest.raises(DatasetError, match="no label for case"):
        validate_raw_dataset(polyp_copy)
