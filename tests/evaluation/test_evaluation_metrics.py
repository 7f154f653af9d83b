"""Dice and HD95 on hand-checkable masks; expected values are worked out beside each case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stitch_ops.evaluation.metrics import (
    EMPTY_MASK_POLICY,
    EmptyCase,
    EmptyMaskPolicy,
    dice,
    empty_case,
    hd95,
)


def _mask(shape, *slices) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for index in slices:
        mask[index] = True
    return mask


def test_squares_2d():
    # ref 4x4, pred 4x5 (one extra column): Dice = 2*16 / (16 + 20) = 8/9.
    # Surface distances: pred's extra column is 1 px from ref's right edge, all else 0;
    # both directed 95th percentiles are 1 (10 zeros + 4 ones; 10 zeros + 2 ones).
    ref = _mask((8, 8), np.s_[2:6, 2:6])
    pred = _mask((8, 8), np.s_[2:6, 2:7])
    assert dice(pred, ref) == pytest.approx(8 / 9)
    assert hd95(pred, ref, spacing=(1.0, 1.0)) == pytest.approx(1.0)


def test_parallel_lines_anisotropic_2d():
    # One-pixel lines (erosion empties them, so the whole line is surface), 3 rows apart;
    # rows are 2.0 apart physically: every distance is 3 * 2.0 = 6.0.
    ref = _mask((12, 10), np.s_[2, :])
    pred = _mask((12, 10), np.s_[5, :])
    assert dice(pred, ref) == 0.0
    assert hd95(pred, ref, spacing=(2.0, 0.5)) == pytest.approx(6.0)
    assert hd95(pred.T, ref.T, spacing=(0.5, 2.0)) == pytest.approx(6.0)


@pytest.mark.parametrize(("row_spacing", "expected"), [(1.0, 0.5), (3.0, 1.5)])
def test_percentile_is_max_of_directed_not_pooled(row_spacing, expected):
    # ref: a 19-pixel line in row 0. pred: the same line plus one pixel 10 rows below.
    # pred -> ref: 19 zeros and one 10*row_spacing; 95th percentile (linear interpolation)
    #   at position 0.95 * 19 = 18.05 -> 0 + 0.05 * 10 * row_spacing.
    # ref -> pred: 19 zeros -> 0. Max of the directed percentiles = 0.5 * row_spacing.
    # (The percentile of the 39 pooled distances would be 0; the plain Hausdorff, 10.)
    ref = _mask((12, 19), np.s_[0, :])
    pred = _mask((12, 19), np.s_[0, :], np.s_[10, 0])
    # MONAI works in float32: the 0.95 quantile position carries ~1e-7 relative error.
    assert hd95(pred, ref, spacing=(row_spacing, 1.0)) == pytest.approx(expected, rel=1e-5)
    assert hd95(ref, pred, spacing=(row_spacing, 1.0)) == pytest.approx(expected, rel=1e-5)  # symmetric


def test_slabs_3d_anisotropic_spacing():
    # One-voxel slabs 3 slices apart, slice spacing 4.0 mm: every distance is 12.0 mm.
    spacing = (4.0, 0.5, 0.5)
    ref = _mask((8, 6, 6), np.s_[2])
    pred = _mask((8, 6, 6), np.s_[5])
    assert hd95(pred, ref, spacing) == pytest.approx(12.0)


def test_blocks_3d_shift_along_slices_vs_in_plane():
    spacing = (4.0, 0.5, 0.5)
    ref = _mask((8, 8, 8), np.s_[2:4, 1:5, 1:5])  # 2 slices thick: every voxel is surface
    # Shifted by one slice: half the voxels coincide (0), half are one slice off (4.0 mm);
    # 95th percentile of 16 zeros and 16 fours = 4.0. Dice = 2*16 / 64.
    pred_z = _mask((8, 8, 8), np.s_[3:5, 1:5, 1:5])
    assert dice(pred_z, ref) == pytest.approx(0.5)
    assert hd95(pred_z, ref, spacing) == pytest.approx(4.0)
    # Shifted by two columns: distances 0 (16), 0.5 (8) and 1.0 mm (8) each way -> 1.0.
    pred_x = _mask((8, 8, 8), np.s_[2:4, 1:5, 3:7])
    assert hd95(pred_x, ref, spacing) == pytest.approx(1.0)


def _ball(radius: float, shape=(32, 32, 32)) -> np.ndarray:
    grid = np.indices(shape) - np.array(shape)[:, None, None, None] // 2
    return np.sqrt((grid**2).sum(0)) <= radius


def test_concentric_spheres():
    # Radii 10 and 7: the surfaces are 3 voxels apart, up to one voxel of discretisation.
    outer, inner = _ball(10), _ball(7)
    value = hd95(inner, outer, spacing=(1.0, 1.0, 1.0))
    assert 3.0 <= value <= 4.0
    assert hd95(inner, outer, spacing=(2.0, 2.0, 2.0)) == pytest.approx(2 * value)
    # Dice of balls ~ 2 * 7^3 / (10^3 + 7^3) = 0.511.
    assert dice(inner, outer) == pytest.approx(2 * 7**3 / (10**3 + 7**3), abs=0.01)


def test_identical_masks():
    ref = _mask((6, 6, 6), np.s_[1:4, 2:5, 1:3])
    assert dice(ref, ref) == 1.0
    assert hd95(ref, ref, (1.0, 2.0, 3.0)) == 0.0


@pytest.mark.parametrize(
    ("pred_slice", "ref_slice", "case", "expected_dice", "expected_hd95"),
    [
        (None, None, EmptyCase.BOTH, 1.0, 0.0),
        (None, np.s_[1, 1], EmptyCase.PREDICTION, 0.0, 5.0),  # diagonal of 3x4 px: 5
        (np.s_[1, 1], None, EmptyCase.REFERENCE, 0.0, 5.0),
    ],
)
def test_empty_mask_policy_2d(pred_slice, ref_slice, case, expected_dice, expected_hd95):
    pred = _mask((3, 4), *([pred_slice] if pred_slice else []))
    ref = _mask((3, 4), *([ref_slice] if ref_slice else []))
    assert empty_case(pred, ref) is case
    assert dice(pred, ref) == expected_dice
    assert hd95(pred, ref, spacing=(1.0, 1.0)) == pytest.approx(expected_hd95)


def test_empty_mask_penalty_3d_and_bounds_every_real_distance():
    shape, spacing = (2, 3, 6), (3.0, 2.0, 1.0)
    diagonal = math.sqrt(6.0**2 + 6.0**2 + 6.0**2)  # extent 2*3, 3*2, 6*1
    ref = _mask(shape, np.s_[0, 0, 0])
    assert hd95(np.zeros(shape), ref, spacing) == pytest.approx(diagonal)
    assert hd95(ref, np.zeros(shape), spacing) == pytest.approx(diagonal)
    assert hd95(np.zeros(shape), np.zeros(shape), spacing) == 0.0
    # The worst real answer (opposite corner) stays below the penalty.
    worst = hd95(_mask(shape, np.s_[-1, -1, -1]), ref, spacing)
    assert worst == pytest.approx(math.sqrt(3.0**2 + 4.0**2 + 5.0**2))
    assert worst < diagonal


def test_policy_record():
    assert EMPTY_MASK_POLICY == EmptyMaskPolicy(1.0, 0.0, 0.0, "image_diagonal")
    with pytest.raises(ValueError, match="image_diagonal"):
        EmptyMaskPolicy(hd95_one_empty="infinity")


def test_shape_mismatch_says_expected_and_got():
    with pytest.raises(ValueError, match=r"expected \(4, 4\) \(ref\), got \(4, 5\)"):
        dice(np.zeros((4, 5)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"expected \(4, 4\) \(ref\), got \(4, 5\)"):
        hd95(np.zeros((4, 5)), np.zeros((4, 4)), (1.0, 1.0))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        dice(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="binary mask"):
        dice(np.full((3, 3), 2), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="spacing should be 2 positive numbers"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing should be 2 positive numbers"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), (1.0, 0.0))


def test_docstring_example_runs():
    import doctest

    from stitch_ops.evaluation import metrics

    assert doctest.testmod(metrics).failed == 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_is_monais_to_the_bit(ndim):
    """hd95 runs MONAI's CPU steps itself (so that no stage imports MONAI for one function):
    on random masks, blobs cut by the image's edge and anisotropic spacings it must give
    exactly the float that ``monai.metrics.compute_hausdorff_distance`` gives."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(ndim)
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(3, 40 if ndim == 2 else 14, ndim))
        if trial % 4 == 0:  # two overlapping blocks, each touching the image's edge
            pred = _mask(shape, tuple(slice(0, n // 2 + 1) for n in shape))
            ref = _mask(shape, tuple(slice(n // 3, n) for n in shape))
        else:
            pred, ref = (rng.random(shape) < rng.uniform(0.05, 0.9) for _ in range(2))
        if not pred.any() or not ref.any():
            continue  # the empty-mask policy decides those (tests above)
        spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, ndim).round(3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batches = (torch.from_numpy(mask.astype(np.float32))[None, None] for mask in (pred, ref))
            expected = compute_hausdorff_distance(*batches, include_background=True, percentile=95,
                                                  spacing=list(spacing))
        assert hd95(pred, ref, spacing) == float(expected[0, 0]), (shape, spacing)


def test_scoring_does_not_import_monai():
    """``import monai`` loads every MONAI submodule (about 3 s of CPU per process,
    ``bench/stage_startup.py``): a pipeline stage that scores its model must not pay it for HD95."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from stitch_ops.evaluation.metrics import dice, hd95\n"
            "ref = np.zeros((8, 8), bool); ref[2:6, 2:6] = True\n"
            "pred = np.zeros((8, 8), bool); pred[2:6, 2:7] = True\n"
            "assert hd95(pred, ref, (1.0, 1.0)) == 1.0 and dice(pred, ref) > 0.8\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'monai'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
