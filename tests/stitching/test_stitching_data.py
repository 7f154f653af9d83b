"""Unlabeled patches from nnU-Net preprocessed folders: segmentations are never needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

from stitch_ops.stitching import (
    PreprocessedImages,
    RandomPatches,
    StitchedNetwork,
    StitchTrainingConfig,
    StitchMethod,
    train_stitches,
)


def _preprocessed_folder(folder, dataset_class, shapes, drop_segmentations: bool):
    """Cases written the way nnU-Net's preprocessing writes them, optionally without their segmentations."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate(shapes):
        data = rng.normal(size=shape).astype(np.float32)
        seg = np.zeros(shape, dtype=np.int8)
        kwargs = {"chunks": shape, "blocks": shape} if dataset_class is nnUNetDatasetBlosc2 else {}
        dataset_class.save_case(data, seg, {"spacing": [1.0] * 3}, str(folder / f"case_{i:03d}"), **kwargs)
    if drop_segmentations:
        for seg_file in folder.glob("*_seg.b2nd"):
            seg_file.unlink()
    return folder


def test_training_on_a_preprocessed_folder_without_segmentations(tmp_path, toy_pair):
    folder = _preprocessed_folder(tmp_path / "nnUNetPlans_2d", nnUNetDatasetBlosc2, [(1, 1, 40, 36), (1, 1, 30, 44)], drop_segmentations=True)
    assert not list(folder.glob("*_seg*"))
    images = PreprocessedImages(folder)
    assert images.identifiers == ["case_000", "case_001"]
    patches = RandomPatches(images, patch_size=(32, 32), batch_size=4, seed=0)
    network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
    config = StitchTrainingConfig(StitchMethod.DOUBLE_BATCHED, epochs=1, iterations_per_epoch=2, batch_size=4)
    history = train_stitches(network, patches.epoch, config, progress=False)
    assert len(history) == 1 and np.isfinite(history[0].loss)


def test_patches_are_reproducible_per_epoch_and_padded(tmp_path):
    folder = _preprocessed_folder(tmp_path / "nnUNetPlans_2d", nnUNetDatasetBlosc2, [(1, 1, 20, 12)], drop_segmentations=True)
    patches = RandomPatches(PreprocessedImages(folder), patch_size=(16, 16), batch_size=3, seed=5)
    first = next(patches.epoch(0))
    assert first.shape == (3, 1, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, next(patches.epoch(0))) and not torch.equal(first, next(patches.epoch(1)))
    assert (first[:, :, :, 12:] == 0).all()  # the case is 12 wide: zero-padded to 16


def test_3d_patches_from_numpy_format_with_a_case_subset(tmp_path):
    folder = _preprocessed_folder(tmp_path / "nnUNetPlans_3d_fullres", nnUNetDatasetNumpy, [(2, 12, 10, 9)] * 3, drop_segmentations=False)
    images = PreprocessedImages(folder, identifiers=["case_002", "case_000"])
    assert images.identifiers == ["case_000", "case_002"]
    assert next(iter(RandomPatches(images, patch_size=(8, 8, 8), batch_size=2))).shape == (2, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="cases \\['case_009'\\] are not in"):
        PreprocessedImages(folder, identifiers=["case_009"])


def test_empty_or_missing_folder_is_refused_with_the_expected_layout(tmp_path):
    with pytest.raises(ValueError, match="nnUNet_preprocessed/DatasetXXX/<data identifier>/"):
        PreprocessedImages(tmp_path / "missing")
