"""Converters on tiny files fabricated in the real layouts (Kvasir, CVC-ClinicDB, NIfTI), good and bad."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from stitch_ops.data.converters import convert_cvc_clinicdb, convert_kvasir, convert_nifti_folder
from stitch_ops.data.raw import DatasetError, read_case_groups, validate_raw_dataset

H, W = 30, 40  # deliberately not square: catches width/height swaps


def _disk(seed: int, shape: tuple[int, ...] = (H, W)) -> np.ndarray:
    """A 0/1 disk at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(10, shape[-2] - 10), rng.uniform(10, shape[-1] - 10)
    yy, xx = np.mgrid[0 : shape[-2], 0 : shape[-1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < 49).astype(np.uint8)


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- Kvasir


def _make_kvasir(root: Path, stems: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        Image.fromarray(_rgb(i)).save(root / "images" / f"{stem}.jpg", quality=90)
        mask = np.repeat(_disk(i)[..., None] * 255, 3, axis=-1).astype(np.uint8)  # Kvasir masks are RGB jpg
        Image.fromarray(mask).save(root / "masks" / f"{stem}.jpg", quality=75)
    return root


KVASIR_STEMS = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0s690hkp960855tjuaqvv0"]


def test_kvasir_converts_to_valid_png_dataset(tmp_path: Path) -> None:
    source = _make_kvasir(tmp_path / "Kvasir-SEG", KVASIR_STEMS)
    target = convert_kvasir(source, tmp_path / "out")
    info = validate_raw_dataset(target)
    assert info.case_ids == tuple(f"kvasir_{s}" for s in KVASIR_STEMS)
    assert info.channel_names == ("R", "G", "B") and info.label_map == {"background": 0, "polyp": 1}
    assert not info.has_case_groups
    for i, case in enumerate(info.case_ids):
        image = np.asarray(Image.open(target / "imagesTr" / f"{case}_0000.png"))
        label = np.asarray(Image.open(target / "labelsTr" / f"{case}.png"))
        assert image.shape == (H, W, 3) and label.shape == (H, W)
        assert set(np.unique(label)) == {0, 1}
        assert (label == _disk(i)).mean() > 0.98, "thresholding the jpg mask at 128 recovers the disk"


def test_hyperkvasir_nesting_and_resize(tmp_path: Path) -> None:
    source = tmp_path / "hyper-kvasir"
    _make_kvasir(source / "segmented-images", KVASIR_STEMS[:1])
    target = convert_kvasir(source, tmp_path / "out", image_size=32)
    case = f"kvasir_{KVASIR_STEMS[0]}"
    assert np.asarray(Image.open(target / "imagesTr" / f"{case}_0000.png")).shape == (32, 32, 3)
    assert set(np.unique(np.asarray(Image.open(target / "labelsTr" / f"{case}.png")))) == {0, 1}


def _no_leftovers(parent: Path, target: Path) -> None:
    assert not target.exists(), "a failed conversion must not leave a target"
    assert not [p for p in parent.iterdir() if p.name.startswith(".")], "temporary folders are removed"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda s: (s / "masks" / f"{KVASIR_STEMS[1]}.jpg").unlink(), "no mask for image"),
        (
            lambda s: Image.fromarray(np.zeros((W, H), np.uint8)).save(s / "masks" / f"{KVASIR_STEMS[2]}.jpg"),
            "must match pixel for pixel",
        ),
        (lambda s: (s / "images" / f"{KVASIR_STEMS[0]}.jpg").write_bytes(b"\xff\xd8 truncated"), "cannot read"),
        (lambda s: [p.unlink() for p in (s / "images").iterdir()], "input folder is empty"),
        (lambda s: [p.unlink() for p in (s / "masks").iterdir()] and (s / "masks").rmdir(), "masks not found"),
    ],
)
def test_kvasir_bad_inputs(tmp_path: Path, breakage: Callable[[Path], object], message: str) -> None:
    source = _make_kvasir(tmp_path / "in" / "Kvasir-SEG", KVASIR_STEMS)
    breakage(source)
    target = tmp_path / "out" / "kvasir"
    target.parent.mkdir()
    with pytest.raises(DatasetError, match=message):
        convert_kvasir(source, target)
    _no_leftovers(target.parent, target)


def test_failed_conversion_keeps_existing_target(tmp_path: Path) -> None:
    source = _make_kvasir(tmp_path / "Kvasir-SEG", KVASIR_STEMS)
    target = convert_kvasir(source, tmp_path / "out")
    before = sorted(p.name for p in (target / "imagesTr").iterdir())
    (source / "masks" / f"{KVASIR_STEMS[0]}.jpg").unlink()
    with pytest.raises(DatasetError, match="no mask for image"):
        convert_kvasir(source, target)
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == before


# --------------------------------------------------------------------------- CVC-ClinicDB


def _make_cvc(root: Path, n: int = 6, suffix: str = ".tif", table: bool = True) -> Path:
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    for i in range(1, n + 1):
        Image.fromarray(_rgb(i)).save(root / "Original" / f"{i}{suffix}")
        Image.fromarray(_disk(i) * 255).save(root / "Ground Truth" / f"{i}{suffix}")
    if table:
        with (root / "video_table.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["frame", "video"])
            writer.writerows([[i, 1 + (i - 1) // 2] for i in range(1, n + 1)])  # two frames per video
    return root


def test_cvc_tif_with_default_video_table(tmp_path: Path) -> None:
    target = convert_cvc_clinicdb(_make_cvc(tmp_path / "CVC-ClinicDB"), tmp_path / "out")
    info = validate_raw_dataset(target)
    assert info.case_ids == tuple(sorted(f"cvc_{i}" for i in range(1, 7)))
    assert read_case_groups(target) == {f"cvc_{i}": f"video_{1 + (i - 1) // 2}" for i in range(1, 7)}
    label = np.asarray(Image.open(target / "labelsTr" / "cvc_3.png"))
    np.testing.assert_array_equal(label, _disk(3))
    np.testing.assert_array_equal(np.asarray(Image.open(target / "imagesTr" / "cvc_3_0000.png")), _rgb(3))


def test_cvc_png_layout_with_explicit_table(tmp_path: Path) -> None:
    source = _make_cvc(tmp_path / "CVC" / "PNG", suffix=".png", table=False)
    table = tmp_path / "videos.csv"
    table.write_text("frame,video\n" + "".join(f"{i:03d}.png,{i % 3}\n" for i in range(1, 7)))  # zero-padded names
    target = convert_cvc_clinicdb(tmp_path / "CVC", tmp_path / "out", video_table=table)
    assert read_case_groups(target)["cvc_4"] == "video_1"
    assert validate_raw_dataset(target).has_case_groups
    assert source.is_dir()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda s: (s / "video_table.csv").unlink(), "needs a frame-to-video table"),
        (lambda s: (s / "video_table.csv").write_text("frame,video\n1,1\n2,1\n"), "no video for frame"),
        (lambda s: (s / "video_table.csv").write_text("image;clip\n1;1\n"), "header 'frame,video'"),
        (lambda s: (s / "Ground Truth" / "2.tif").unlink(), "no mask for image"),
        (
            lambda s: Image.fromarray((_disk(4) * 128).astype(np.uint8)).save(s / "Ground Truth" / "4.tif"),
            "not binary",
        ),
        (lambda s: (s / "Ground Truth").rename(s / "GT"), "not a CVC-ClinicDB folder"),
    ],
)
def test_cvc_bad_inputs(tmp_path: Path, breakage: Callable[[Path], object], message: str) -> None:
    source = _make_cvc(tmp_path / "CVC-ClinicDB")
    breakage(source)
    target = tmp_path / "out"
    with pytest.raises(DatasetError, match=message):
        convert_cvc_clinicdb(source, target)
    _no_leftovers(tmp_path, target)


def test_cvc_binarize_accepts_grey_masks(tmp_path: Path) -> None:
    source = _make_cvc(tmp_path / "CVC-ClinicDB")
    Image.fromarray((_disk(4) * 200).astype(np.uint8)).save(source / "Ground Truth" / "4.tif")
    target = convert_cvc_clinicdb(source, tmp_path / "out", binarize=True)
    np.testing.assert_array_equal(np.asarray(Image.open(target / "labelsTr" / "cvc_4.png")), _disk(4))


# --------------------------------------------------------------------------- NIfTI


SPACING_XYZ = (0.5, 0.6, 3.0)


def _write_nifti(array: np.ndarray, path: Path, spacing: tuple[float, ...] = SPACING_XYZ) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))


def _make_nifti(root: Path, names: list[str]) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for i, name in enumerate(names):
        label = np.stack([_disk(i)] * 5)  # Z Y X
        _write_nifti(label.astype(np.int16) * 300 + 100, images / name)
        _write_nifti(label, labels / name.replace("_0000", ""))
    return images, labels


def test_nifti_folder_converts_and_keeps_geometry(tmp_path: Path) -> None:
    images, labels = _make_nifti(tmp_path, ["p1.nii.gz", "p2.nii", "p3_0000.nii.gz"])
    target = convert_nifti_folder(images, labels, tmp_path / "out", label_name="rectum_sigmoid")
    info = validate_raw_dataset(target)
    assert info.case_ids == ("p1", "p2", "p3")
    assert info.label_map == {"background": 0, "rectum_sigmoid": 1} and info.channel_names == ("MRI",)
    image = sitk.ReadImage(str(target / "imagesTr" / "p2_0000.nii.gz"))
    label = sitk.ReadImage(str(target / "labelsTr" / "p2.nii.gz"))
    assert image.GetSpacing() == pytest.approx(SPACING_XYZ) and label.GetSpacing() == pytest.approx(SPACING_XYZ)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), np.stack([_disk(1)] * 5))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda i, l: (l / "p2.nii.gz").unlink(), "no label for image"),
        (lambda i, l: _write_nifti(np.stack([_disk(0)] * 4), l / "p1.nii.gz"), "share one voxel grid"),
        (lambda i, l: _write_nifti(np.stack([_disk(0)] * 5), l / "p1.nii.gz", (1.0, 1.0, 1.0)), "spacing"),
        (lambda i, l: _write_nifti(np.stack([_disk(0) * 2] * 5), l / "p1.nii.gz"), "expected only 0 and 1"),
        (lambda i, l: (i / "p2.nii.gz").write_bytes(b"\x1f\x8b garbage"), "cannot read"),
        (lambda i, l: [p.unlink() for p in i.iterdir()], "input folder is empty"),
    ],
)
def test_nifti_bad_inputs(tmp_path: Path, breakage: Callable[[Path, Path], object], message: str) -> None:
    images, labels = _make_nifti(tmp_path / "in", ["p1.nii.gz", "p2.nii.gz"])
    breakage(images, labels)
    with pytest.raises(DatasetError, match=message):
        convert_nifti_folder(images, labels, tmp_path / "out")
    _no_leftovers(tmp_path, tmp_path / "out")
