"""Per-case segmentation metrics: Dice and HD95, with one explicit empty-mask policy.

Both metrics take binary masks of one case as numpy arrays of shape ``H W`` (2-D) or
``D H W`` (3-D), prediction and reference of the same shape. Spacing is given in numpy
axis order (for a NIfTI volume read with SimpleITK that is the reverse of
``image.GetSpacing()``); use 1.0 per axis for 2-D frames, so HD95 is in pixels.

Definitions:

- **Dice** = 2 |P ∩ R| / (|P| + |R|), from exact voxel counts (numpy, float64; MONAI's
  ``compute_dice`` gives the same value in float32).
- **HD95** = the *symmetric 95th-percentile Hausdorff distance* as MONAI
  (``monai.metrics.compute_hausdorff_distance(..., percentile=95)``) and the nnU-Net /
  Medical Segmentation Decathlon community define it: the surface of a mask is its set of
  boundary voxels (the mask minus its binary erosion with the face-connected structuring
  element, voxels outside the image counting as background); for every
  surface voxel of P the Euclidean distance, in physical units via ``spacing``, to the
  nearest surface voxel of R is taken, and vice versa; HD95 is the **maximum of the two
  directed 95th percentiles** (percentiles linearly interpolated, as ``torch.quantile``),
  *not* the 95th percentile of the pooled distances. The values are MONAI's to the bit
  (float32, so about 1e-6 relative rounding): :func:`hd95` runs MONAI's CPU steps (crop,
  erosion, a k-d tree of the surface voxels, ``torch.quantile``) with scipy and torch
  directly, because ``import monai`` loads every MONAI submodule (about 3 s of CPU time in
  each pipeline stage that scores a model, for one function: ``bench/stage_startup.py``); a
  test compares the two on random masks.

Empty-mask policy (applied by both functions, hence everywhere downstream, including
before the statistical tests):

- prediction and reference both empty: Dice = 1.0, HD95 = 0.0 (a perfect answer);
- exactly one of them empty: Dice = 0.0, HD95 = the diagonal of the image's extent in
  physical units, ``sqrt(sum((shape[i] * spacing[i]) ** 2))`` — a finite penalty larger
  than any distance two voxels of the image can have, so means, ranks and tests stay
  defined and an empty answer ranks below every non-empty one on HD95.

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8), dtype=bool); ref[2:6, 2:6] = True
    >>> pred = np.zeros((8, 8), dtype=bool); pred[2:6, 2:7] = True
    >>> round(dice(pred, ref), 4)
    0.8889
    >>> hd95(pred, ref, spacing=(1.0, 1.0))
    1.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["EmptyCase", "EmptyMaskPolicy", "EMPTY_MASK_POLICY", "dice", "hd95", "empty_case"]


class EmptyCase(str, Enum):
    """Which of prediction and reference contain no foreground."""

    NONE = "none"
    BOTH = "both"
    PREDICTION = "prediction"
    REFERENCE = "reference"


@dataclass(frozen=True)
class EmptyMaskPolicy:
    """Metric values used when the prediction and/or the reference mask is empty.

    Attributes:
        dice_both_empty: Dice when both masks are empty.
        dice_one_empty: Dice when exactly one mask is empty.
        hd95_both_empty: HD95 when both masks are empty.
        hd95_one_empty: how HD95 is set when exactly one mask is empty; only
            ``"image_diagonal"`` (the image extent's diagonal in physical units) exists.
    """

    dice_both_empty: float = 1.0
    dice_one_empty: float = 0.0
    hd95_both_empty: float = 0.0
    hd95_one_empty: str = "image_diagonal"

    def __post_init__(self) -> None:
        if self.hd95_one_empty != "image_diagonal":
            raise ValueError(f"hd95_one_empty must be 'image_diagonal', got {self.hd95_one_empty!r}.")

    def dice(self, case: EmptyCase) -> float:
        """Dice for a case with at least one empty mask."""
        return self.dice_both_empty if case is EmptyCase.BOTH else self.dice_one_empty

    def hd95(self, case: EmptyCase, shape: Sequence[int], spacing: Sequence[float]) -> float:
        """HD95 for a case with at least one empty mask, in the units of ``spacing``."""
        if case is EmptyCase.BOTH:
            return self.hd95_both_empty
        return image_diagonal(shape, spacing)


EMPTY_MASK_POLICY = EmptyMaskPolicy()
"""The project's single empty-mask policy (see the module docstring)."""


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the diagonal of the image's extent, ``sqrt(sum((n_i * s_i) ** 2))``."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def empty_case(pred: np.ndarray, ref: np.ndarray) -> EmptyCase:
    """Classify a case by which of its (binary) masks are empty."""
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return EmptyCase.BOTH
    if pred_empty:
        return EmptyCase.PREDICTION
    if ref_empty:
        return EmptyCase.REFERENCE
    return EmptyCase.NONE


def _check_masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two masks and return them as boolean arrays."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred should be a 2-D (H W) or 3-D (D H W) mask, got {pred.ndim} dimensions {pred.shape}.")
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref should have the same shape, expected {ref.shape} (ref), got {pred.shape}.")
    for name, mask in (("pred", pred), ("ref", ref)):
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"{name} should be a binary mask with values in {{0, 1}}, got values {np.unique(mask)[:10]}; "
                "select the label first, e.g. `mask == 1`."
            )
    return pred.astype(bool), ref.astype(bool)


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing should be {ndim} positive numbers (numpy axis order), got {spacing}.")
    return spacing


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two binary masks, with the empty-mask policy.

    Args:
        pred: predicted mask, ``H W`` or ``D H W``, bool or {0, 1}.
        ref: reference mask, same shape.

    Returns:
        Dice in [0, 1].

    Raises:
        ValueError: if the shapes differ, the masks are not 2-D/3-D or not binary.
    """
    pred, ref = _check_masks(pred, ref)
    case = empty_case(pred, ref)
    if case is not EmptyCase.NONE:
        return EMPTY_MASK_POLICY.dice(case)
    overlap = np.count_nonzero(pred & ref)
    return float(2.0 * overlap / (np.count_nonzero(pred) + np.count_nonzero(ref)))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance, with the empty-mask policy.

    The maximum of the two directed 95th percentiles of surface distances (see the module
    docstring).

    Args:
        pred: predicted mask, ``H W`` or ``D H W``, bool or {0, 1}.
        ref: reference mask, same shape.
        spacing: voxel size per axis in numpy axis order (``pred.ndim`` positive numbers).

    Returns:
        HD95 in the units of ``spacing`` (mm for NIfTI, pixels for 2-D frames).

    Raises:
        ValueError: if the shapes differ, the masks are not 2-D/3-D or not binary, or
            ``spacing`` does not have one positive entry per axis.
    """
    pred, ref = _check_masks(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    case = empty_case(pred, ref)
    if case is not EmptyCase.NONE:
        return EMPTY_MASK_POLICY.hd95(case, pred.shape, spacing)
    return _percentile_hausdorff(pred, ref, spacing, 95.0)


def _percentile_hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], percentile: float) -> float:
    """MONAI's ``compute_hausdorff_distance(pred, ref, percentile=percentile, spacing=spacing)``
    for two non-empty masks, computed as MONAI (1.6) computes it on a CPU, step for step, so that
    every float is the same: both masks cropped to the bounding box of their union with a
    margin of one voxel (zero-padded past the image's edge: ``CropForeground(margin=1,
    allow_smaller=False)``), surfaces by erosion and XOR, distances from a k-d tree over the
    surface voxels' scaled coordinates (leaf size 32) cast to float32, ``torch.quantile``."""
    import torch
    from scipy.ndimage import binary_erosion
    from scipy.spatial import KDTree

    union = pred | ref
    occupied = [np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
                for axis in range(union.ndim)]
    lows, highs = [int(o[0]) - 1 for o in occupied], [int(o[-1]) + 2 for o in occupied]
    scale = np.asarray(spacing, dtype=np.float64)
    surfaces = []
    for mask in (pred, ref):
        box = np.zeros([high - low for low, high in zip(lows, highs)], dtype=bool)
        inside = tuple(slice(max(low, 0), min(high, size)) for low, high, size in zip(lows, highs, mask.shape))
        box[tuple(slice(s.start - low, s.stop - low) for s, low in zip(inside, lows))] = mask[inside]
        surfaces.append(np.argwhere(binary_erosion(box) ^ box).astype(np.float64) * scale)
    directed = [torch.from_numpy(KDTree(to, leafsize=32).query(source, k=1)[0].astype(np.float32))
                for source, to in ((surfaces[0], surfaces[1]), (surfaces[1], surfaces[0]))]
    return float(torch.max(torch.stack([torch.quantile(d, percentile / 100) for d in directed])))
