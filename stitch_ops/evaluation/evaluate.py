"""Evaluate a folder of predicted segmentations against the reference labels.

Produces the tidy per-case table (one row a case, columns :data:`CASE_COLUMNS`), a
summary per group, and the two files of a ``metrics/{pair}/{approach}/{trained_on}/fold_{k}/``
folder: ``cases.csv`` and ``summary.json``.

Labels are nnU-Net raw labels: ``.png`` (2-D frames; spacing 1.0, so HD95 is in pixels)
or any format SimpleITK reads, such as ``.nii.gz`` (3-D; spacing from the file header,
in mm). Foreground is label 1; in a multi-label file only label 1 is evaluated, every
other label counting as background. Empty masks follow
:data:`stitch_ops.evaluation.metrics.EMPTY_MASK_POLICY`.

``test_party`` names the evaluated set: a party id (``a``, ``b``) for that party's test
set, ``val_<party>`` for a fold's validation cases. ``summary.json`` has flat keys
``{set}/{metric}_{stat}`` (see :func:`summary_key`) where ``set`` is ``test_<party>`` for a
test set and the name itself for a validation set, e.g. ``test_a/dice_mean``,
``test_b/hd95_median``, ``val_a/n_cases``: the same names for every approach, so DVC
compares them across stages and MLflow logs them as metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from stitch_ops.errors import InputFileError, reading

from stitch_ops.evaluation.metrics import dice, hd95
from stitch_ops.outputs import write_json, write_table

logger = logging.getLogger(__name__)

__all__ = [
    "CASE_COLUMNS",
    "GROUP_COLUMNS",
    "FOREGROUND_LABEL",
    "read_label",
    "evaluate_case",
    "evaluate_folder",
    "summarize",
    "summary_key",
    "summary_metrics",
    "write_evaluation",
]

GROUP_COLUMNS: tuple[str, ...] = ("pair", "test_party", "approach", "trained_on", "fold")
"""Columns that identify one evaluated model on one test set."""

CASE_COLUMNS: tuple[str, ...] = (*GROUP_COLUMNS, "case", "dice", "hd95")
"""Columns of the tidy per-case table, in order."""

METRICS: tuple[str, ...] = ("dice", "hd95")
STATISTICS: tuple[str, ...] = ("mean", "median", "std")
FOREGROUND_LABEL = 1
MASK_255 = 255
"""The foreground value of masks saved as images (0/255): never a label value here (nnU-Net's
labels are 0, 1, 2, ...), so a label holding it is refused rather than scored as empty."""


REREAD_HINT = ("replace it: rerun the stage that wrote it (a prediction: the model's predict stage; "
               "a reference label: the split stage)")


def read_label(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a label file as a foreground mask and its spacing.

    Args:
        path: a ``.png`` (2-D) or a SimpleITK-readable volume such as ``.nii.gz`` (3-D).

    Returns:
        ``(mask, spacing)``: boolean mask ``H W`` or ``D H W`` (``label == 1``) and the
        spacing in numpy axis order (1.0 per axis for PNG).

    Raises:
        InputFileError: the file is missing, unreadable (corrupt), holds a
            multi-component (e.g. RGB) image, or values other than 0 and 1 (e.g. a 0/255 mask).
    """
    import SimpleITK as sitk

    with reading(path, "label image", REREAD_HINT):
        image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(
            f"{path}: a label file should hold one integer label per pixel, "
            f"got {image.GetNumberOfComponentsPerPixel()} components (RGB?); {REREAD_HINT}"
        )
    array = sitk.GetArrayFromImage(image)
    if array.size and array.max() >= MASK_255:  # a 0/255 mask: scored as it is, every Dice would be 0
        values = np.unique(array)
        raise InputFileError(
            f"{path}: a label file holds label values (0 background, {FOREGROUND_LABEL} foreground), got "
            f"{values[:8].tolist()}{' ...' if len(values) > 8 else ''}: a mask saved as 0/255; convert it to 0/1 "
            f"(`stitch-ops data convert` does) before scoring")
    if path.name.lower().endswith(".png"):
        spacing = (1.0,) * array.ndim
    else:
        spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return array == FOREGROUND_LABEL, spacing


def evaluate_case(pred_file: Path, ref_file: Path) -> tuple[float, float]:
    """Dice and HD95 of one predicted label file against its reference (reference spacing).

    Returns:
        ``(dice, hd95)``.
    """
    ref, spacing = read_label(ref_file)
    pred, pred_spacing = read_label(pred_file)
    if not np.allclose(pred_spacing, spacing, rtol=1e-3):
        logger.warning("%s: spacing %s differs from the reference's %s; using the reference's.",
                       pred_file, pred_spacing, spacing)
    return dice(pred, ref), hd95(pred, ref, spacing)


def _case_files(ref_dir: Path, file_ending: str, cases: Sequence[str] | None) -> list[Path]:
    if not ref_dir.is_dir():
        raise FileNotFoundError(f"Reference label folder {ref_dir} does not exist.")
    if cases is not None:
        files = [ref_dir / f"{case}{file_ending}" for case in cases]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} requested cases have no reference label in {ref_dir}: "
                                    f"{_names(missing)}.")
        return files
    files = sorted(p for p in ref_dir.iterdir() if p.name.endswith(file_ending) and p.is_file())
    if not files:
        raise FileNotFoundError(f"No reference labels ending in {file_ending!r} in {ref_dir}.")
    return files


def _names(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _check_predictions(pred_dir: Path, ref_files: list[Path]) -> None:
    missing = [f.name for f in ref_files if not (pred_dir / f.name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(ref_files)} predictions missing in {pred_dir}: {_names(missing)}. "
            "Run the prediction stage for these cases first."
        )


def evaluate_folder(
    pred_dir: Path,
    ref_dir: Path,
    file_ending: str,
    *,
    pair: str,
    test_party: str,
    approach: str,
    trained_on: str,
    fold: int,
    cases: Sequence[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate the reference labels in ``ref_dir`` against the same-named predictions.

    Args:
        pred_dir: folder of predicted segmentations (file names as in ``ref_dir``).
        ref_dir: folder of reference labels (e.g. an nnU-Net ``labelsTs``).
        file_ending: the dataset's file ending, e.g. ``".png"`` or ``".nii.gz"``.
        pair: dataset pair name.
        test_party: the evaluated set: a party id (``a``, ``b``) for its test set, or
            ``val_<party>`` for validation cases.
        approach: approach slug (``local``, ``finetune``, ...).
        trained_on: party (or parties) the model was trained on.
        fold: cross-validation fold of the model.
        cases: case ids to evaluate (e.g. a fold's validation cases in ``labelsTr``);
            ``None`` evaluates every label in ``ref_dir``.
        progress: show a tqdm progress bar.

    Returns:
        The tidy table, one row a case, columns exactly :data:`CASE_COLUMNS`
        (``case`` is the file name without ``file_ending``).

    Raises:
        FileNotFoundError: if ``ref_dir`` holds no labels (or not the requested cases), or
            predictions are missing (the missing names are listed).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    ref_files = _case_files(ref_dir, file_ending, cases)
    _check_predictions(pred_dir, ref_files)
    logger.info("Evaluating %d cases: predictions %s against references %s (%s %s %s fold %d on %s)",
                len(ref_files), pred_dir, ref_dir, pair, approach, trained_on, fold, test_party)
    rows = []
    for ref_file in tqdm(ref_files, desc=f"evaluate {test_party}", disable=not progress):
        case_dice, case_hd95 = evaluate_case(pred_dir / ref_file.name, ref_file)
        rows.append((pair, test_party, approach, trained_on, int(fold),
                     ref_file.name[: -len(file_ending)], case_dice, case_hd95))
    return pd.DataFrame(rows, columns=list(CASE_COLUMNS))


def _check_columns(cases: pd.DataFrame) -> None:
    missing = [c for c in CASE_COLUMNS if c not in cases.columns]
    if missing:
        raise ValueError(f"cases should have the columns {list(CASE_COLUMNS)}, missing {missing}.")


def summarize(cases: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and standard deviation of Dice and HD95 per evaluated model and test set.

    The standard deviation is the sample one (``ddof=1``), set to 0.0 for a group of one
    case so every value stays finite.

    Args:
        cases: tidy per-case table (columns :data:`CASE_COLUMNS`).

    Returns:
        One row per group of :data:`GROUP_COLUMNS`, columns ``GROUP_COLUMNS``, ``n_cases``,
        then ``{metric}_{stat}`` for metric in (dice, hd95) and stat in (mean, median, std).
    """
    _check_columns(cases)
    grouped = cases.groupby(list(GROUP_COLUMNS), sort=True)
    summary = grouped[list(METRICS)].agg(list(STATISTICS))
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary = summary.fillna({f"{m}_std": 0.0 for m in METRICS})
    summary.insert(0, "n_cases", grouped.size())
    return summary.reset_index()


def summary_key(test_party: str, name: str) -> str:
    """Flat metric name used in ``summary.json`` and MLflow.

    ``summary_key("a", "dice_mean") == "test_a/dice_mean"`` (a party's test set);
    validation sets keep their name: ``summary_key("val_a", "n_cases") == "val_a/n_cases"``.
    """
    prefix = test_party if test_party.startswith(("val", "test_")) else f"test_{test_party}"
    return f"{prefix}/{name}"


def summary_metrics(cases: pd.DataFrame) -> dict[str, float]:
    """Flat summary of a table holding one model's cases, keyed by :func:`summary_key`.

    Raises:
        ValueError: if the table holds more than one model (group) for a test set, since
            the keys would collide.
    """
    summary = summarize(cases)
    duplicated = summary["test_party"].duplicated(keep=False)
    if duplicated.any():
        groups = summary.loc[duplicated, list(GROUP_COLUMNS)].to_dict("records")
        raise ValueError(
            "summary.json holds one model per test set, but the cases mix several: "
            f"{groups}. Evaluate each (approach, trained_on, fold) into its own folder."
        )
    values = [c for c in summary.columns if c not in GROUP_COLUMNS]
    return {
        summary_key(row["test_party"], name): float(row[name])
        for row in summary.to_dict("records")
        for name in values
    }


def write_evaluation(cases: pd.DataFrame, out_dir: Path) -> dict[str, float]:
    """Write ``cases.csv`` and ``summary.json`` of one model into ``out_dir``.

    Args:
        cases: tidy per-case table of one (pair, approach, trained_on, fold), any number
            of test sets.
        out_dir: the model's metrics folder; created if missing.

    Returns:
        The flat summary written to ``summary.json`` (ready for ``tracking.log_run``).
    """
    out_dir = Path(out_dir)
    _check_columns(cases)
    metrics = summary_metrics(cases)
    write_table(out_dir / "cases.csv", cases.loc[:, list(CASE_COLUMNS)])
    write_json(out_dir / "summary.json", metrics, sort_keys=True)
    logger.info("Wrote %s and %s", out_dir / "cases.csv", out_dir / "summary.json")
    return metrics
