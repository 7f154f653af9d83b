"""Read, write and validate nnU-Net v2 *raw* datasets.

Every dataset in this project -- synthetic, converted from a public
collection, or pointed at by the user -- passes through the same raw format
before planning, so one module owns its rules:

```
<dataset>/
    dataset.json              channel_names, labels, numTraining, file_ending
    imagesTr/{case}_{XXXX}{file_ending}   one file per channel file index
    labelsTr/{case}{file_ending}
    [imagesTs/, labelsTs/]    the held-out test part (written by the split)
    [case_groups.csv]         columns ``case,group``: cases that must stay in one
                              part (frames of one video)
```

For natural 2-D images (``.png``) nnU-Net's ``NaturalImage2DIO`` reads one
RGB file as three channels, so ``channel_names`` counts *channels in the
pixel data*, not files; the validator checks exactly that, as nnU-Net's own
``verify_dataset_integrity`` does, but without spawning worker processes and
with errors that name the file and the fix.

Writers go through :func:`stitch_ops.outputs.output_dir` so that an interrupted run
never leaves a folder that looks like a finished dataset.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stitch_ops.errors import InputFileError, UserError
from stitch_ops.outputs import read_json, write_json

logger = logging.getLogger(__name__)

IMAGES_TR = "imagesTr"
LABELS_TR = "labelsTr"
IMAGES_TS = "imagesTs"
LABELS_TS = "labelsTs"
DATASET_JSON = "dataset.json"
CASE_GROUPS_CSV = "case_groups.csv"

#: File endings read with PIL (nnU-Net's NaturalImage2DIO); one file may hold RGB channels.
NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif")
#: File endings read with SimpleITK (nnU-Net's SimpleITKIO / NibabelIO).
MEDICAL_IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
SUPPORTED_ENDINGS = NATURAL_IMAGE_ENDINGS + MEDICAL_IMAGE_ENDINGS

_REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class DatasetError(UserError):
    """A dataset on disk is not what the pipeline needs; the message names the file and the fix."""


@dataclass(frozen=True)
class RawDatasetInfo:
    """What :func:`validate_raw_dataset` learned about one raw dataset.

    Attributes:
        path: the dataset folder.
        channel_names: channel names ordered by channel index (``dataset.json``).
        labels: ``(name, value)`` pairs ordered by value, background first.
        file_ending: e.g. ``".png"`` or ``".nii.gz"``.
        case_ids: training cases (``imagesTr``), sorted.
        test_case_ids: cases in ``imagesTs`` (empty for a source dataset), sorted.
        files_per_case: image files per case (1 for RGB ``.png``: one file, three channels).
        has_case_groups: whether ``case_groups.csv`` exists (the split then keeps groups intact).
    """

    path: Path
    channel_names: tuple[str, ...]
    labels: tuple[tuple[str, int], ...]
    file_ending: str
    case_ids: tuple[str, ...]
    test_case_ids: tuple[str, ...] = ()
    files_per_case: int = 1
    has_case_groups: bool = False

    @property
    def name(self) -> str:
        """The folder name, which nnU-Net uses as the dataset name (``Dataset001_polyp_a``)."""
        return self.path.name

    @property
    def label_map(self) -> dict[str, int]:
        """``labels`` as the mapping written in ``dataset.json``."""
        return dict(self.labels)


# --------------------------------------------------------------------------- paths


def image_path(root: Path, case: str, file_ending: str, channel: int = 0, *, test: bool = False) -> Path:
    """Where nnU-Net expects channel file ``channel`` of ``case`` (``imagesTr/{case}_0000.png``)."""
    return Path(root) / (IMAGES_TS if test else IMAGES_TR) / f"{case}_{channel:04d}{file_ending}"


def label_path(root: Path, case: str, file_ending: str, *, test: bool = False) -> Path:
    """Where nnU-Net expects the label of ``case`` (``labelsTr/{case}.png``)."""
    return Path(root) / (LABELS_TS if test else LABELS_TR) / f"{case}{file_ending}"


def check_case_id(case: str) -> str:
    """Return ``case`` if it is a safe nnU-Net case identifier, else raise :class:`DatasetError`.

    nnU-Net finds channel files by stripping ``_XXXX`` from the name, so an id
    that itself ends in ``_dddd`` or holds path characters would be misread.
    """
    if not _CASE_ID.match(case) or _CHANNEL_FILE.match(case):
        raise DatasetError(
            f"case id {case!r} is not usable by nnU-Net: expected letters, digits, '_', '-', '.' "
            "(starting with a letter or digit) and no trailing '_dddd'; rename the file."
        )
    return case


def sanitize_case_id(stem: str, prefix: str = "") -> str:
    """Turn a file stem from a public dataset into a valid case id (``'1'`` -> ``'cvc_1'``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.-")
    case = f"{prefix}{cleaned}" if prefix else cleaned
    if _CHANNEL_FILE.match(case):  # a trailing _dddd would be read as a channel index
        case = f"{case}x"
    return check_case_id(case)


# --------------------------------------------------------------------------- writing


def write_dataset_json(
    root: Path,
    *,
    channel_names: Mapping[str, str] | Sequence[str],
    labels: Mapping[str, int],
    num_training: int,
    file_ending: str,
    **extra: object,
) -> Path:
    """Write nnU-Net v2's ``dataset.json`` (keys sorted, so reruns give identical bytes)."""
    if not isinstance(channel_names, Mapping):
        channel_names = {str(i): name for i, name in enumerate(channel_names)}
    content = {
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "labels": {k: int(v) for k, v in labels.items()},
        "numTraining": int(num_training),
        "file_ending": file_ending,
        **extra,
    }
    return write_json(Path(root) / DATASET_JSON, content, sort_keys=True)


def read_dataset_json(root: Path) -> dict:
    """Load ``dataset.json`` and check nnU-Net's required keys, with an error naming the fix."""
    path = Path(root) / DATASET_JSON
    try:
        content = read_json(path, hint=f"an nnU-Net raw dataset needs a dataset.json with keys {_REQUIRED_KEYS}; "
                                       f"fix or regenerate it.")
    except InputFileError as err:
        raise DatasetError(str(err)) from err
    missing = [k for k in _REQUIRED_KEYS if k not in content]
    if missing:
        raise DatasetError(f"{path} lacks required key(s) {missing}; nnU-Net v2 needs {list(_REQUIRED_KEYS)}.")
    if "dataset" in content:
        raise DatasetError(
            f"{path} lists files under 'dataset'; this project expects the imagesTr/labelsTr folder layout."
        )
    return content


def write_case_groups(root: Path, groups: Mapping[str, str]) -> Path:
    """Write ``case_groups.csv`` (``case,group``), sorted by case so reruns are byte-identical."""
    path = Path(root) / CASE_GROUPS_CSV
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["case", "group"])
        for case in sorted(groups):
            writer.writerow([case, groups[case]])
    return path


def read_case_groups(root: Path) -> dict[str, str] | None:
    """Return ``{case: group}`` from ``case_groups.csv``, or ``None`` when the dataset has no groups."""
    path = Path(root) / CASE_GROUPS_CSV
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"case", "group"} <= set(reader.fieldnames):
            raise DatasetError(f"{path} must have the header 'case,group'; got {reader.fieldnames}.")
        groups: dict[str, str] = {}
        for row in reader:
            case, group = (row["case"] or "").strip(), (row["group"] or "").strip()
            if not case or not group:
                raise DatasetError(f"{path} line {reader.line_num}: empty case or group; every row needs both.")
            if case in groups:
                raise DatasetError(f"{path}: case {case!r} is listed twice; a case belongs to exactly one group.")
            groups[case] = group
    return groups


def groups_to_members(groups: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert ``{case: group}`` into ``{group: sorted cases}``."""
    members: dict[str, list[str]] = {}
    for case, group in groups.items():
        members.setdefault(group, []).append(case)
    return {group: sorted(cases) for group, cases in sorted(members.items())}


# --------------------------------------------------------------------------- reading headers


@dataclass(frozen=True)
class ImageHeader:
    """Shape facts read without decoding the pixels: ``spatial`` is numpy order (``[Z] Y X``)."""

    spatial: tuple[int, ...]
    channels: int


def read_header(path: Path) -> ImageHeader:
    """Read spatial size and channel count of one image file; raise :class:`DatasetError` if unreadable."""
    path = Path(path)
    if path.name.endswith(NATURAL_IMAGE_ENDINGS):
        return _read_natural_header(path)
    return _read_medical_header(path)


def _read_natural_header(path: Path) -> ImageHeader:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()  # catches truncated/corrupt files without decoding everything
        with Image.open(path) as img:
            width, height = img.size
            bands = len(img.getbands())
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError)
        raise DatasetError(
            f"cannot read image {path} ({err}); the file is corrupt or not an image: replace it."
        ) from err
    return ImageHeader(spatial=(height, width), channels=bands)


def _read_medical_header(path: Path) -> ImageHeader:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise DatasetError(f"cannot read image {path} ({_first_line(err)}); the file is corrupt: replace it.") from err
    size = reader.GetSize()[::-1]
    return ImageHeader(spatial=tuple(int(s) for s in size), channels=int(reader.GetNumberOfComponents()))


def read_label_array(path: Path) -> np.ndarray:
    """Read a label file's values (numpy order); raise :class:`DatasetError` if unreadable."""
    path = Path(path)
    if path.name.endswith(NATURAL_IMAGE_ENDINGS):
        from PIL import Image

        try:
            with Image.open(path) as img:
                return np.asarray(img)
        except Exception as err:
            raise DatasetError(f"cannot read label {path} ({err}); replace the file.") from err
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as err:
        raise DatasetError(f"cannot read label {path} ({_first_line(err)}); replace the file.") from err


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


# --------------------------------------------------------------------------- validation


def validate_raw_dataset(path: Path, *, check_label_values: bool = True) -> RawDatasetInfo:
    """Check that ``path`` is an nnU-Net v2 raw dataset this pipeline can use, and describe it.

    Checks ``dataset.json`` (required keys, labels ``0..k`` with background 0,
    a supported file ending), that every case has the same channel files and
    a label (and every label an image), that the channels in the pixel data
    add up to ``channel_names``, that image and label sizes agree, that label
    values are declared labels, and that ``case_groups.csv`` (if any) covers
    every case.

    Args:
        path: dataset folder (e.g. ``data/polyp/source/a``).
        check_label_values: read every label to check its values (the slow part).

    Returns:
        A :class:`RawDatasetInfo`.

    Raises:
        DatasetError: naming the first problem found, the file, and the fix.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"raw dataset folder {root} does not exist; run the prepare stage or fix the path.")
    meta = read_dataset_json(root)
    file_ending = _check_file_ending(root, meta["file_ending"])
    channel_names = _check_channel_names(root, meta["channel_names"])
    labels = _check_labels(root, meta["labels"])

    train = _collect_cases(root, IMAGES_TR, LABELS_TR, file_ending)
    if not train:
        raise DatasetError(f"{root / IMAGES_TR} holds no '*_0000{file_ending}' images; the dataset is empty.")
    if meta["numTraining"] != len(train):
        raise DatasetError(
            f"{root / DATASET_JSON} says numTraining={meta['numTraining']} but {root / IMAGES_TR} holds "
            f"{len(train)} cases; set numTraining to {len(train)}."
        )
    test = _collect_test_cases(root, file_ending)
    files_per_case = _check_channel_files(root, {**train, **test}, len(channel_names), file_ending)
    allowed = {value for _, value in labels}
    for test_part, cases in ((False, train), (True, test)):
        for case in cases:
            _check_case(
                root,
                case,
                file_ending,
                files_per_case=files_per_case,
                expected_channels=len(channel_names),
                allowed=allowed if check_label_values else None,
                test=test_part,
            )
    groups = read_case_groups(root)
    if groups is not None:
        _check_groups_cover(root, groups, set(train), set(test))
    info = RawDatasetInfo(
        path=root,
        channel_names=channel_names,
        labels=labels,
        file_ending=file_ending,
        case_ids=tuple(sorted(train)),
        test_case_ids=tuple(sorted(test)),
        files_per_case=files_per_case,
        has_case_groups=groups is not None,
    )
    logger.debug("validated %s: %d training, %d test cases", root, len(train), len(test))
    return info


def _collect_test_cases(root: Path, file_ending: str) -> dict[str, list[int]]:
    """Labelled test cases; ``imagesTs`` without ``labelsTs`` (plain nnU-Net inference input) is ignored."""
    if not (root / IMAGES_TS).is_dir():
        return {}
    if not (root / LABELS_TS).is_dir():
        logger.warning("%s has no %s: its images cannot be evaluated and are ignored", root / IMAGES_TS, LABELS_TS)
        return {}
    return _collect_cases(root, IMAGES_TS, LABELS_TS, file_ending)


def _check_file_ending(root: Path, ending: object) -> str:
    if not isinstance(ending, str) or ending not in SUPPORTED_ENDINGS:
        raise DatasetError(
            f"{root / DATASET_JSON}: file_ending {ending!r} is not supported; expected one of {SUPPORTED_ENDINGS} "
            "(nnU-Net refuses lossy .jpg for segmentations: convert to .png)."
        )
    return ending


def _check_channel_names(root: Path, channel_names: object) -> tuple[str, ...]:
    if not isinstance(channel_names, Mapping) or not channel_names:
        raise DatasetError(f"{root / DATASET_JSON}: channel_names must be a non-empty mapping like {{'0': 'MRI'}}.")
    keys = sorted(channel_names, key=lambda k: int(k) if str(k).isdigit() else -1)
    if [str(k) for k in keys] != [str(i) for i in range(len(keys))]:
        raise DatasetError(
            f"{root / DATASET_JSON}: channel_names keys must be '0'..'{len(keys) - 1}'; got {sorted(channel_names)}."
        )
    return tuple(str(channel_names[k]) for k in keys)


def _check_labels(root: Path, labels: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(labels, Mapping) or not all(isinstance(v, int) for v in labels.values()):
        raise DatasetError(
            f"{root / DATASET_JSON}: labels must map names to integers, e.g. {{'background': 0, 'polyp': 1}} "
            "(region-based labels are not supported here)."
        )
    ordered = tuple(sorted(((str(k), int(v)) for k, v in labels.items()), key=lambda kv: kv[1]))
    values = [v for _, v in ordered]
    if values != list(range(len(values))) or len(values) < 2 or ordered[0][0] != "background":
        raise DatasetError(
            f"{root / DATASET_JSON}: labels must be 'background': 0 followed by consecutive values 1, 2, ...; "
            f"got {dict(ordered)}."
        )
    return ordered


def _collect_cases(root: Path, images_dir: str, labels_dir: str, ending: str) -> dict[str, list[int]]:
    """Map case -> channel file indices found in ``images_dir``; check every case has a label and vice versa."""
    images, labels = root / images_dir, root / labels_dir
    if not images.is_dir():
        raise DatasetError(f"{images} is missing; an nnU-Net raw dataset keeps its images there.")
    cases: dict[str, list[int]] = {}
    for file in sorted(images.iterdir()):
        if not file.name.endswith(ending):
            continue
        match = _CHANNEL_FILE.match(file.name[: -len(ending)])
        if match is None:
            raise DatasetError(
                f"{file}: image names must be '{{case}}_{{XXXX}}{ending}' "
                "(XXXX = channel index, e.g. _0000); rename it."
            )
        cases.setdefault(match["case"], []).append(int(match["channel"]))
    label_cases = (
        {f.name[: -len(ending)] for f in labels.iterdir() if f.name.endswith(ending)} if labels.is_dir() else set()
    )
    missing = sorted(set(cases) - label_cases)
    if missing:
        raise DatasetError(
            f"no label for case(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}: expected "
            f"{labels / (missing[0] + ending)}; add the label or remove the image."
        )
    orphans = sorted(label_cases - set(cases))
    if orphans:
        raise DatasetError(
            f"label(s) without image: {labels / (orphans[0] + ending)}"
            f"{f' and {len(orphans) - 1} more' if len(orphans) > 1 else ''}; add '{orphans[0]}_0000{ending}' to "
            f"{images} or remove the label."
        )
    return cases


def _check_channel_files(root: Path, cases: Mapping[str, list[int]], n_channels: int, ending: str) -> int:
    """All cases must have channel files 0..k-1 (the same k); return k."""
    expected = 0
    for case, indices in sorted(cases.items()):
        indices = sorted(indices)
        if indices != list(range(len(indices))):
            raise DatasetError(
                f"{root}: case {case!r} has channel files {indices}; expected 0000..{len(indices) - 1:04d}."
            )
        if not expected:
            expected = len(indices)
        elif len(indices) != expected:
            raise DatasetError(
                f"{root}: case {case!r} has {len(indices)} channel file(s), other cases have {expected}; "
                "every case needs the same channels."
            )
    if expected > n_channels:
        raise DatasetError(
            f"{root / DATASET_JSON}: channel_names lists {n_channels} channel(s) but cases have {expected} "
            f"channel files (..._{expected - 1:04d}{ending}); mismatched labels or channels."
        )
    return expected


def _check_case(
    root: Path,
    case: str,
    ending: str,
    *,
    files_per_case: int,
    expected_channels: int,
    allowed: set[int] | None,
    test: bool,
) -> None:
    """Check one case's channel count, label channels, pixel grid and label values."""
    headers = [read_header(image_path(root, case, ending, c, test=test)) for c in range(files_per_case)]
    channels = sum(h.channels for h in headers)
    if channels != expected_channels:
        raise DatasetError(
            f"{image_path(root, case, ending, test=test)}: the pixel data holds {channels} channel(s) but "
            f"dataset.json's channel_names lists {expected_channels}; fix channel_names or the image."
        )
    lab = label_path(root, case, ending, test=test)
    label_header = read_header(lab)
    if label_header.channels != 1:
        raise DatasetError(f"{lab}: a label must be single-channel; got {label_header.channels} channels.")
    for header in headers:
        if header.spatial != label_header.spatial:
            raise DatasetError(
                f"{lab}: label size {label_header.spatial} differs from image size {header.spatial}; "
                "image and label must share one pixel grid."
            )
    if allowed is not None:
        values = set(np.unique(read_label_array(lab)).tolist())
        if not values <= allowed:
            raise DatasetError(
                f"{lab}: label values {sorted(values - allowed)} are not declared in dataset.json labels "
                f"{sorted(allowed)}; fix the label or dataset.json."
            )


def _check_groups_cover(root: Path, groups: Mapping[str, str], train: set[str], test: set[str]) -> None:
    ungrouped = sorted(train - set(groups))
    if ungrouped:
        raise DatasetError(
            f"{root / CASE_GROUPS_CSV} has no group for case(s) {ungrouped[:5]}; every case needs a row 'case,group'."
        )
    unknown = sorted(set(groups) - train - test)
    if unknown:
        raise DatasetError(
            f"{root / CASE_GROUPS_CSV} lists case(s) {unknown[:5]} that are not in the dataset; remove those rows."
        )


def check_compatible(a: RawDatasetInfo, b: RawDatasetInfo) -> None:
    """Raise :class:`DatasetError` unless the two parties' datasets can feed the same network.

    Stitching, ensembling, fine-tuning and federated averaging all assume both
    parties segment the same labels from the same input channels in the same
    file format; a mismatch found here is cheaper than one found after training.
    """
    problems = []
    if a.channel_names != b.channel_names:
        problems.append(f"channels {list(a.channel_names)} vs {list(b.channel_names)}")
    if a.labels != b.labels:
        problems.append(f"labels {a.label_map} vs {b.label_map}")
    if a.file_ending != b.file_ending:
        problems.append(f"file endings {a.file_ending!r} vs {b.file_ending!r}")
    if problems:
        raise DatasetError(
            f"mismatched labels or channels between parties ({a.path} vs {b.path}): {'; '.join(problems)}. "
            "Both parties must use the same channel_names, labels and file_ending in dataset.json."
        )
