"""Unlabeled training images for stitches: random patches of one party's preprocessed data.

Stitches are trained without labels, so these helpers read only the image
arrays of an nnU-Net preprocessed folder (``nnUNet_preprocessed/DatasetXXX/<data
identifier>/``) and never open a segmentation file: the folder may lack them.
Patches are drawn uniformly (nnU-Net's foreground oversampling needs labels).

Example::

    >>> patches = RandomPatches(PreprocessedImages(folder), patch_size=(64, 64), batch_size=4, seed=0)
    >>> next(iter(patches.epoch(0))).shape
    torch.Size([4, 1, 64, 64])
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stitch_ops.errors import InputFileError

__all__ = ["PreprocessedImages", "RandomPatches"]


class PreprocessedImages:
    """The image arrays ``C X Y Z`` of an nnU-Net preprocessed folder (``.b2nd`` or ``.npz``/``.npy``).

    Args:
        folder: the preprocessed configuration folder.
        identifiers: cases to use (e.g. a fold's training cases); all cases if ``None``.

    Raises:
        ValueError: if the folder holds no preprocessed images or lacks a requested case.
    """

    def __init__(self, folder: Path, identifiers: Sequence[str] | None = None):
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, infer_dataset_class

        self.folder = Path(folder)
        if not self.folder.is_dir() or not any(self.folder.iterdir()):
            raise InputFileError(f"no preprocessed images in {self.folder}: expected nnUNet_preprocessed/DatasetXXX/<data identifier>/")
        dataset_class = infer_dataset_class(str(self.folder))
        self.blosc2 = dataset_class is nnUNetDatasetBlosc2
        available = sorted(dataset_class.get_identifiers(str(self.folder)))
        missing = sorted(set(identifiers or ()) - set(available))
        if missing:
            raise InputFileError(f"cases {missing[:5]} are not in {self.folder} (it has {len(available)} cases, e.g. {available[:3]})")
        self.identifiers = sorted(identifiers) if identifiers is not None else available

    def __len__(self) -> int:
        return len(self.identifiers)

    def open(self, identifier: str):
        """The image array ``C X Y Z`` of a case, lazily read where the format allows (blosc2, ``.npy``)."""
        if self.blosc2:
            import blosc2

            mmap = {} if os.name == "nt" else {"mmap_mode": "r"}
            return blosc2.open(urlpath=str(self.folder / f"{identifier}.b2nd"), mode="r", dparams={"nthreads": 1}, **mmap)
        npy = self.folder / f"{identifier}.npy"
        if npy.is_file():
            return np.load(npy, mmap_mode="r")
        with np.load(self.folder / f"{identifier}.npz") as archive:
            return archive["data"]


class RandomPatches:
    """Batches of random patches ``B C *patch_size`` (float32), an endless stream per epoch.

    For a 2-D ``patch_size`` on 3-D preprocessed arrays (nnU-Net's ``2d``
    configuration) a random slice along the first spatial axis is taken, as
    nnU-Net's 2-D data loader does. Cases smaller than the patch are zero-padded
    (zero is the mean after nnU-Net's normalisation).

    Args:
        images: the cases to sample from.
        patch_size: spatial patch size, 2-D or 3-D.
        batch_size: patches per batch.
        seed: with the epoch, determines every patch, so a resumed run sees the same data.
    """

    def __init__(self, images: PreprocessedImages, patch_size: Sequence[int], batch_size: int, seed: int = 0):
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch_size should be 2-D or 3-D, got {tuple(patch_size)}")
        if batch_size < 1:
            raise ValueError(f"batch_size should be >= 1, got {batch_size}")
        self.images, self.patch_size, self.batch_size, self.seed = images, tuple(int(p) for p in patch_size), batch_size, seed

    def epoch(self, epoch: int) -> Iterator[Tensor]:
        """The endless stream of batches of ``epoch`` (pass ``patches.epoch`` to ``train_stitches``)."""
        rng = np.random.default_rng([self.seed, epoch])
        while True:
            yield torch.from_numpy(np.stack([self._patch(rng) for _ in range(self.batch_size)]))

    def __iter__(self) -> Iterator[Tensor]:
        return self.epoch(0)

    def _patch(self, rng: np.random.Generator) -> np.ndarray:
        data = self.images.open(self.images.identifiers[rng.integers(len(self.images))])
        spatial = tuple(data.shape[1:])
        if len(spatial) != 3:
            raise ValueError(f"expected preprocessed arrays C X Y Z, got shape {tuple(data.shape)}")
        window = ((1,) if len(self.patch_size) == 2 else ()) + self.patch_size
        starts = [int(rng.integers(max(size - p, 0) + 1)) for size, p in zip(spatial, window)]
        region = (slice(None), *(slice(s, s + p) for s, p in zip(starts, window)))
        patch = np.asarray(data[region], dtype=np.float32)
        padding = [(0, 0)] + [(0, p - n) for p, n in zip(window, patch.shape[1:])]
        patch = np.pad(patch, padding)
        return patch[:, 0] if len(self.patch_size) == 2 else patch
