"""nnU-Net planning through ``stitch_ops.nnunet.plan``: the fingerprint's intensity sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers import kept_global_state


def _plan(raw: Path, preprocessed_root: Path, intensity_samples: int) -> Path:
    from stitch_ops.nnunet.env import NnUNetRoots, configure
    from stitch_ops.nnunet.plan import plan_and_preprocess

    configure(NnUNetRoots(raw=raw.parent, preprocessed=preprocessed_root))
    return plan_and_preprocess(1, preprocessed_root, raw, intensity_samples=intensity_samples, progress=False)


def test_intensity_samples_reach_the_fingerprint_and_leave_the_preprocessed_data_alone(tmp_path: Path) -> None:
    """``nnunet.intensity_samples`` is what nnU-Net's fingerprint samples: with one voxel per
    case its mean is the mean of the voxels nnU-Net's own ``analyze_case`` draws with one
    sample (same seed), which nnU-Net's 10^8 would not give. The channels here are normalised
    per image (z-score), so the preprocessed cases are the same byte for byte whatever it is."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from stitch_ops.data.splits import split_raw_dataset
    from stitch_ops.data.synthetic import generate_pair

    generate_pair("polyp", tmp_path / "source", {"a": 8, "b": 8}, seed=0, image_size=48, progress=False)
    raw = tmp_path / "nnUNet_raw" / "Dataset001_polyp_a"
    split_raw_dataset(tmp_path / "source" / "a", raw, seed=0)
    cases = get_filenames_of_train_images_and_targets(str(raw), json.loads((raw / "dataset.json").read_text()))
    with kept_global_state():
        one_each, four_each = (_plan(raw, tmp_path / f"preprocessed_{n}", len(cases) * n) for n in (1, 4))

    drawn = [DatasetFingerprintExtractor.analyze_case(c["images"], c["label"], NaturalImage2DIO, 1)[2]
             for c in cases.values()]
    fingerprint = json.loads((one_each / "dataset_fingerprint.json").read_text())
    for channel, stats in fingerprint["foreground_intensity_properties_per_channel"].items():
        assert stats["mean"] == float(np.mean([d[int(channel)] for d in drawn]))
    other = json.loads((four_each / "dataset_fingerprint.json").read_text())
    assert other["foreground_intensity_properties_per_channel"] != fingerprint["foreground_intensity_properties_per_channel"]

    data = sorted(p.relative_to(one_each) for p in one_each.rglob("*") if p.is_file() and p.suffix != ".json")
    assert data and data == sorted(p.relative_to(four_each) for p in four_each.rglob("*")
                                   if p.is_file() and p.suffix != ".json")
    assert all((one_each / p).read_bytes() == (four_each / p).read_bytes() for p in data)
