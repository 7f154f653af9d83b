"""evaluate_folder / summarize / write_evaluation on tiny PNG and NIfTI label folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from stitch_ops.evaluation.evaluate import (
    CASE_COLUMNS,
    evaluate_folder,
    read_label,
    summarize,
    summary_key,
    summary_metrics,
    write_evaluation,
)

IDS = dict(pair="toy", approach="local", trained_on="a", fold=0)


def _write(path: Path, array: np.ndarray, spacing_numpy_order=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    if spacing_numpy_order is not None:
        image.SetSpacing(tuple(reversed(spacing_numpy_order)))
    sitk.WriteImage(image, str(path))


def _square(shape, index) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[index] = 1
    return label


@pytest.fixture()
def png_folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "labelsTs", tmp_path / "pred"
    square = _square((8, 8), np.s_[2:6, 2:6])
    _write(ref_dir / "case_001.png", square)
    _write(pred_dir / "case_001.png", _square((8, 8), np.s_[2:6, 2:7]))  # Dice 8/9, HD95 1
    _write(ref_dir / "case_002.png", square)
    _write(pred_dir / "case_002.png", square)  # Dice 1, HD95 0
    _write(ref_dir / "case_003.png", np.zeros((3, 4)))
    _write(pred_dir / "case_003.png", _square((3, 4), np.s_[1, 1]))  # empty ref: Dice 0, HD95 = 5
    return pred_dir, ref_dir


def test_evaluate_png_folder(png_folders):
    pred_dir, ref_dir = png_folders
    cases = evaluate_folder(pred_dir, ref_dir, ".png", test_party="a", progress=False, **IDS)
    assert list(cases.columns) == list(CASE_COLUMNS)
    assert cases["case"].tolist() == ["case_001", "case_002", "case_003"]
    assert (cases[["pair", "test_party", "approach", "trained_on", "fold"]].drop_duplicates().values.tolist()
            == [["toy", "a", "local", "a", 0]])
    assert cases["dice"].tolist() == pytest.approx([8 / 9, 1.0, 0.0])
    assert cases["hd95"].tolist() == pytest.approx([1.0, 0.0, 5.0])


def test_nifti_uses_spacing_from_file_and_label_one_only(tmp_path):
    # Blocks one slice apart along an axis with 4.0 mm slices: HD95 = 4.0, Dice = 0.5.
    # The prediction also holds label 2 far away, which is background for the evaluation.
    spacing = (4.0, 0.5, 0.5)
    ref = _square((8, 8, 8), np.s_[2:4, 1:5, 1:5])
    pred = _square((8, 8, 8), np.s_[3:5, 1:5, 1:5])
    pred[7, 7, 7] = 2
    _write(tmp_path / "ref" / "vol.nii.gz", ref, spacing)
    _write(tmp_path / "pred" / "vol.nii.gz", pred, spacing)
    mask, read_spacing = read_label(tmp_path / "pred" / "vol.nii.gz")
    assert read_spacing == pytest.approx(spacing) and mask.sum() == 32
    cases = evaluate_folder(tmp_path / "pred", tmp_path / "ref", ".nii.gz", test_party="b",
                            progress=False, **IDS)
    assert cases.loc[0, "case"] == "vol"
    assert cases.loc[0, "dice"] == pytest.approx(0.5)
    assert cases.loc[0, "hd95"] == pytest.approx(4.0)


def test_missing_predictions_are_named(png_folders):
    pred_dir, ref_dir = png_folders
    (pred_dir / "case_002.png").unlink()
    (pred_dir / "case_003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 3 predictions missing .*case_002.png, case_003.png"):
        evaluate_folder(pred_dir, ref_dir, ".png", test_party="a", progress=False, **IDS)


def test_subset_of_cases(png_folders):
    pred_dir, ref_dir = png_folders
    cases = evaluate_folder(pred_dir, ref_dir, ".png", test_party="val_a", cases=["case_003", "case_001"],
                            progress=False, **IDS)
    assert cases["case"].tolist() == ["case_003", "case_001"]
    assert cases["hd95"].tolist() == pytest.approx([5.0, 1.0])
    with pytest.raises(FileNotFoundError, match="no reference label .*case_009.png"):
        evaluate_folder(pred_dir, ref_dir, ".png", test_party="val_a", cases=["case_009"], progress=False, **IDS)


def test_summary_key():
    assert summary_key("a", "dice_mean") == "test_a/dice_mean"
    assert summary_key("test_b", "hd95_mean") == "test_b/hd95_mean"
    assert summary_key("val_a", "n_cases") == "val_a/n_cases"


def test_empty_reference_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No reference labels ending in '.png'"):
        evaluate_folder(tmp_path, tmp_path, ".png", test_party="a", progress=False, **IDS)


def _table(test_party, dices, hd95s, fold=0) -> pd.DataFrame:
    return pd.DataFrame(
        [("toy", test_party, "local", "a", fold, f"c{i}", d, h) for i, (d, h) in enumerate(zip(dices, hd95s))],
        columns=list(CASE_COLUMNS),
    )


def test_summarize_statistics():
    cases = pd.concat([_table("a", [0.5, 0.7, 0.9], [1.0, 2.0, 6.0]), _table("b", [0.4], [3.0])])
    summary = summarize(cases).set_index("test_party")
    row = summary.loc["a"]
    assert row["n_cases"] == 3
    assert row["dice_mean"] == pytest.approx(0.7)
    assert row["dice_median"] == pytest.approx(0.7)
    assert row["dice_std"] == pytest.approx(0.2)  # sample std of 0.5, 0.7, 0.9
    assert row["hd95_mean"] == pytest.approx(3.0)
    assert row["hd95_median"] == pytest.approx(2.0)
    assert row["hd95_std"] == pytest.approx(np.sqrt(7.0))  # deviations -2, -1, 3: 14 / 2
    assert summary.loc["b", "dice_std"] == 0.0  # one case: defined as 0


def test_write_evaluation(tmp_path):
    cases = pd.concat([_table("a", [0.5, 0.7, 0.9], [1.0, 2.0, 6.0]), _table("b", [0.4], [3.0]),
                       _table("val_a", [0.8], [1.0])])
    metrics = write_evaluation(cases, tmp_path / "metrics")
    stats = [f"{m}_{s}" for m in ("dice", "hd95") for s in ("mean", "median", "std")]
    expected_keys = {f"{p}/{name}" for p in ("test_a", "test_b", "val_a") for name in ["n_cases", *stats]}
    written = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert set(written) == expected_keys and written == metrics
    assert written["test_a/dice_mean"] == pytest.approx(0.7)
    assert written["test_b/hd95_mean"] == pytest.approx(3.0)
    reread = pd.read_csv(tmp_path / "metrics" / "cases.csv")
    assert list(reread.columns) == list(CASE_COLUMNS) and len(reread) == 5


def test_summary_rejects_mixed_models():
    cases = pd.concat([_table("a", [0.5], [1.0], fold=0), _table("a", [0.6], [1.0], fold=1)])
    with pytest.raises(ValueError, match="one model per test set"):
        summary_metrics(cases)


def test_missing_columns():
    with pytest.raises(ValueError, match=r"missing \['hd95'\]"):
        summarize(_table("a", [0.5], [1.0]).drop(columns="hd95"))


def test_a_mask_saved_as_0_255_is_refused_not_scored_as_empty(png_folders):
    from stitch_ops.errors import InputFileError

    pred_dir, ref_dir = png_folders
    _write(ref_dir / "case_001.png", _square((8, 8), np.s_[2:6, 2:6]) * 255)
    with pytest.raises(InputFileError, match=r"case_001.png: .* got \[0, 255\]: a mask saved as 0/255; convert it"):
        evaluate_folder(pred_dir, ref_dir, ".png", test_party="a", progress=False, **IDS)
