"""Synthetic two-party datasets: layout, determinism, geometry, labels and the domain shift."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from stitch_ops.data.synthetic import (
    PELVIS_STYLES,
    POLYP_STYLES,
    STYLE_MIXES,
    blend_styles,
    case_blend,
    case_style,
    generate_pair,
)

if TYPE_CHECKING:
    from conftest import SyntheticData


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _cases(party_dir: Path, ending: str) -> list[str]:
    return sorted(p.name[: -len(f"_0000{ending}")] for p in (party_dir / "imagesTr").iterdir())


@pytest.mark.parametrize("pair", ["polyp", "pelvis"])
def test_rerun_gives_identical_bytes(pair: str, synthetic: SyntheticData, tmp_path: Path) -> None:
    generate_pair(pair, tmp_path / pair, synthetic.cases[pair], seed=0, image_size=synthetic.size, progress=False)
    first, second = _files(synthetic.root / pair), _files(tmp_path / pair)
    assert sorted(first) == sorted(second)
    assert all(first[name] == second[name] for name in first)


def test_other_seed_gives_other_data(synthetic: SyntheticData, tmp_path: Path) -> None:
    generate_pair("polyp", tmp_path, {"a": 2, "b": 1}, seed=1, image_size=synthetic.size, progress=False)
    name = "imagesTr/polyp_a_0000_0000.png"
    assert (tmp_path / "a" / name).read_bytes() != (synthetic.root / "polyp" / "a" / name).read_bytes()


def test_case_does_not_depend_on_number_of_cases(synthetic: SyntheticData, tmp_path: Path) -> None:
    """Smoke-sized data is a prefix of quick-sized data (party a, no videos), so profiles stay comparable."""
    generate_pair("pelvis", tmp_path, {"a": 2, "b": 1}, seed=0, image_size=synthetic.size, progress=False)
    name = "imagesTr/pelvis_a_0001_0000.nii.gz"
    assert (tmp_path / "a" / name).read_bytes() == (synthetic.root / "pelvis" / "a" / name).read_bytes()


def test_polyp_layout_shapes_and_labels(synthetic: SyntheticData) -> None:
    for party in ("a", "b"):
        root = synthetic.root / "polyp" / party
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
        assert meta["labels"] == {"background": 0, "polyp": 1}
        assert meta["file_ending"] == ".png"
        cases = _cases(root, ".png")
        assert meta["numTraining"] == len(cases) == synthetic.cases["polyp"][party]
        assert cases[0] == f"polyp_{party}_0000"
        for case in cases:
            image = _png(root / "imagesTr" / f"{case}_0000.png")
            label = _png(root / "labelsTr" / f"{case}.png")
            assert image.shape == (synthetic.size, synthetic.size, 3) and image.dtype == np.uint8
            assert label.shape == (synthetic.size, synthetic.size) and label.dtype == np.uint8
            assert set(np.unique(label)) == {0, 1}, case


def test_pelvis_layout_spacing_and_labels(synthetic: SyntheticData) -> None:
    for party in ("a", "b"):
        root = synthetic.root / "pelvis" / party
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": "MRI"}
        assert meta["labels"] == {"background": 0, "rectum_sigmoid": 1}
        assert meta["file_ending"] == ".nii.gz"
        for case in _cases(root, ".nii.gz"):
            style, _ = case_style(PELVIS_STYLES, 0, "pelvis", party, _index(case))  # a's b-like cases: b-like spacing
            image = sitk.ReadImage(str(root / "imagesTr" / f"{case}_0000.nii.gz"))
            label = sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz"))
            # SimpleITK reports x, y, z; numpy (and nnU-Net) order is z, y, x with the slice axis first
            assert image.GetSpacing()[::-1] == pytest.approx(style.spacing)
            assert label.GetSpacing() == image.GetSpacing()
            array = sitk.GetArrayFromImage(label)
            assert array.shape[1:] == (synthetic.size, synthetic.size)
            assert style.n_slices[0] <= array.shape[0] <= style.n_slices[1]
            assert set(np.unique(array)) == {0, 1}
            assert array.reshape(array.shape[0], -1).any(axis=1).all(), "the tube must cross every slice"


def test_nnunet_reader_spacing(synthetic: SyntheticData) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    assert case_blend(0, "pelvis", "a", 0) == 0.0  # case 0 of a has a's own scanner
    for party, expected in (("a", [4.0, 0.53, 0.53]), ("b", [3.3, 0.52, 0.52])):
        path = synthetic.root / "pelvis" / party / "imagesTr" / f"pelvis_{party}_0000_0000.nii.gz"
        data, props = SimpleITKIO().read_images([str(path)])
        assert props["spacing"] == pytest.approx(expected)
        assert data.shape[0] == 1 and data.shape[2:] == (synthetic.size, synthetic.size)


def test_polyp_b_comes_in_videos(synthetic: SyntheticData) -> None:
    assert not (synthetic.root / "polyp" / "a" / "case_groups.csv").exists()
    root = synthetic.root / "polyp" / "b"
    with (root / "case_groups.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == _cases(root, ".png")
    videos = [r["group"] for r in rows]
    assert len(set(videos)) >= 6, "a six-bin split needs at least six videos"
    assert videos == sorted(videos), "frames of one video are consecutive"
    frames = [_png(root / "imagesTr" / f"{r['case']}_0000.png").astype(float) for r in rows]
    same = [np.abs(f - g).mean() for f, g, v, w in zip(frames, frames[1:], videos, videos[1:]) if v == w]
    other = [np.abs(f - g).mean() for f, g, v, w in zip(frames, frames[1:], videos, videos[1:]) if v != w]
    assert max(same) < min(other), "consecutive frames of a video must look alike, frames of other videos less so"


def _index(case: str) -> int:
    return int(case.rsplit("_", 1)[1])


def _own_style(pair: str, party: str, cases: list[str], own: bool = True) -> list[str]:
    """The cases drawn in the party's own style (``own``) or reaching into the other party's."""
    return [c for c in cases if (case_blend(0, pair, party, _index(c)) == 0.0) is own]


def _polyp_stats(root: Path, own: bool = True) -> dict[str, float]:
    """Cheap proxies of the shift: polyp/mucosa green ratio, frames with specular highlights, polyp area."""
    green, highlights, area = [], [], []
    cases = _cases(root, ".png")
    if root.name == "a":  # party a's frames are independent: frame index = video index
        cases = _own_style("polyp", "a", cases, own)
    for case in cases:
        image = _png(root / "imagesTr" / f"{case}_0000.png").astype(float)
        label = _png(root / "labelsTr" / f"{case}.png").astype(bool)
        ring = ndimage.binary_dilation(label, iterations=6) & ~ndimage.binary_dilation(label, iterations=2)
        green.append(np.median(image[..., 1][label]) / np.median(image[..., 1][ring]))
        highlights.append(bool((image.min(axis=-1) > 220).any()))
        area.append(label.mean())
    return {"green": float(np.median(green)), "highlights": float(np.mean(highlights)), "area": float(np.median(area))}


def test_polyp_parties_differ(synthetic: SyntheticData) -> None:
    a, b = (_polyp_stats(synthetic.root / "polyp" / p) for p in ("a", "b"))
    assert a["green"] > 1.05 and b["green"] < 0.92 and a["green"] > 1.25 * b["green"], (a, b)  # paler in a, redder in b
    assert a["highlights"] == 0.0 and b["highlights"] > 0.8, (a, b)  # specular highlights only in b
    assert a["area"] > 1.5 * b["area"], (a, b)  # b's polyps are smaller


def _pelvis_stats(root: Path, own: bool = True) -> dict[str, float]:
    """Tube/tissue contrast and noise (robust std of the difference of neighbouring columns)."""
    contrast, noise = [], []
    cases = _cases(root, ".nii.gz")
    if root.name == "a":
        cases = _own_style("pelvis", "a", cases, own)
    for case in cases:
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "imagesTr" / f"{case}_0000.nii.gz"))).astype(float)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz"))).astype(bool)
        core = ndimage.binary_erosion(label, structure=np.ones((1, 3, 3)), iterations=3)
        around = ndimage.binary_dilation(label, structure=np.ones((1, 3, 3)), iterations=5) & ~label
        contrast.append(np.median(image[core]) / np.median(image[around]))
        diff = np.diff(image, axis=2)
        noise.append(np.median(np.abs(diff - np.median(diff))) / np.median(image))
    return {"contrast": float(np.median(contrast)), "noise": float(np.median(noise))}


def test_pelvis_parties_differ(synthetic: SyntheticData) -> None:
    a, b = (_pelvis_stats(synthetic.root / "pelvis" / p) for p in ("a", "b"))
    assert a["contrast"] < 0.4 and b["contrast"] > 1.0, (a, b)  # dark (air) lumen vs bright (gel) lumen
    assert b["noise"] > 1.5 * a["noise"], (a, b)


# ---- the paper's regime: a's style range covers part of b's, b's does not cover a's ----


def test_style_mix_draws_a_share_of_a_towards_b_and_none_of_b() -> None:
    for pair in ("polyp", "pelvis"):
        mix = STYLE_MIXES[pair]["a"]
        blends = np.array([case_blend(0, pair, "a", i) for i in range(400)])
        reaching = blends[blends > 0]
        assert abs(len(reaching) / len(blends) - mix.share) < 0.08, (pair, len(reaching))
        assert ((reaching >= mix.reach[0]) & (reaching <= mix.reach[1])).all()
        assert reaching.max() > 0.9, "some of a's cases look (almost) exactly like b's"
        assert all(case_blend(0, pair, "b", i) == 0.0 for i in range(100)), "b never reaches into a's style"
        assert [case_blend(0, pair, "a", i) for i in range(10)] == list(blends[:10]), "a case's blend is its own"


def test_blend_interpolates_every_field_but_the_recording_protocol() -> None:
    a, b = POLYP_STYLES["a"], POLYP_STYLES["b"]
    assert blend_styles(a, b, 0.0) == a
    assert blend_styles(a, b, 1.0) == replace(b, frames_per_video=a.frames_per_video)
    half = blend_styles(a, b, 0.5)
    assert half.radius == pytest.approx(tuple((x + y) / 2 for x, y in zip(a.radius, b.radius)))
    assert isinstance(half.highlights[1], int) and a.highlights[1] <= half.highlights[1] <= b.highlights[1]
    assert blend_styles(PELVIS_STYLES["a"], PELVIS_STYLES["b"], 1.0) == PELVIS_STYLES["b"]


def test_party_a_holds_b_like_frames_and_b_keeps_its_videos_whole(synthetic: SyntheticData, tmp_path: Path) -> None:
    """On a small generated pair: a's reaching frames show b's cues (redder polyps, highlights,
    bright gel lumen), a's own frames do not; b's videos stay consecutive and whole in the split."""
    from stitch_ops.data.raw import read_case_groups
    from stitch_ops.data.splits import split_raw_dataset

    root = synthetic.root / "polyp"
    own, reaching, b = _polyp_stats(root / "a"), _polyp_stats(root / "a", own=False), _polyp_stats(root / "b")
    assert _own_style("polyp", "a", _cases(root / "a", ".png"), own=False), "the fixture holds b-like frames of a"
    assert own["highlights"] == 0.0 and reaching["highlights"] > 0.5, (own, reaching)
    assert reaching["green"] < own["green"] and abs(reaching["green"] - b["green"]) < abs(own["green"] - b["green"])
    pelvis = synthetic.root / "pelvis"
    assert _pelvis_stats(pelvis / "a", own=False)["contrast"] > 2 * _pelvis_stats(pelvis / "a")["contrast"]
    record = split_raw_dataset(root / "b", tmp_path / "Dataset002_polyp_b", seed=0)
    part_of = {case: k for k, part in enumerate(record.parts) for case in part}
    groups = read_case_groups(root / "b")
    videos: dict[str, set[int]] = {}
    for case, video in groups.items():
        videos.setdefault(video, set()).add(part_of[case])
    assert all(len(parts) == 1 for parts in videos.values()), "a video is never cut between parts"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pair": "liver"}, r"expected one of \['polyp', 'pelvis'\]"),
        ({"n_cases": {"a": 3}}, "exactly the parties"),
        ({"n_cases": {"a": 3, "b": 0}}, "positive integer"),
        ({"seed": -1}, "non-negative"),
        ({"image_size": 16}, "at least 32"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str, tmp_path: Path) -> None:
    args = {"pair": "polyp", "out_dir": tmp_path, "n_cases": {"a": 1, "b": 1}, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_pair(**args, progress=False)
    assert not any(tmp_path.iterdir()), "nothing is written for refused arguments"


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_profile_test_sets_hold_enough_cases_for_a_paired_test(profile: str) -> None:
    """The test set (the last of six parts) holds >= 24 frames (polyp) / >= 12 volumes (pelvis) per
    party, and a is the larger party; polyp b's parts follow its videos (bin covering)."""
    import yaml

    from stitch_ops.data.splits import bin_covering_split, six_part_split
    from stitch_ops.data.synthetic import _video_lengths

    overlay = yaml.safe_load((Path(__file__).resolve().parents[2] / "stitch_ops" / "profiles" / f"{profile}.yaml").read_text())
    minimum = {"polyp": 24, "pelvis": 12}
    for pair, data in overlay["data"].items():
        cases = data["cases"]
        assert cases["a"] > cases["b"], (profile, pair)
        for party, n in cases.items():
            style = POLYP_STYLES[party] if pair == "polyp" else None
            if style is not None and style.frames_per_video > 1:
                lengths = _video_lengths(n, style.frames_per_video, 0, party)
                frames = iter(range(n))
                groups = {f"v{v}": [f"c{next(frames)}" for _ in range(length)] for v, length in enumerate(lengths)}
                test = bin_covering_split(groups)[-1]
            else:
                test = six_part_split([f"c{i}" for i in range(n)], seed=0)[-1]
            assert len(test) >= minimum[pair], (profile, pair, party, len(test))
