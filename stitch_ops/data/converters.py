"""Converters from public dataset layouts to nnU-Net v2 raw datasets.

Real data enters the pipeline at the same point as the synthetic data: an
nnU-Net raw dataset with every case in ``imagesTr``/``labelsTr`` (the split
stage then makes the six parts). Each converter checks its input before it
writes anything it would later have to take back, names the offending file
and the fix in a :class:`~stitch_ops.data.raw.DatasetError`, and builds the
target in a temporary sibling folder that replaces ``target`` only when
complete.

Supported layouts:

``convert_kvasir``
    Kvasir-SEG / HyperKvasir: ``images/*.jpg`` and ``masks/*.jpg`` with equal
    file stems (``source`` may also be the HyperKvasir folder holding
    ``segmented-images/``). JPEG masks are lossy, so they are thresholded at
    128 (``>= 128`` is polyp).
``convert_cvc_clinicdb``
    CVC-ClinicDB: ``Original/`` and ``Ground Truth/`` (``.tif`` or ``.png``;
    ``source`` may also hold them under ``PNG/`` or ``TIF/``). Frames of one
    video are near-duplicates, so a frame-to-video table is *required*: a CSV
    with columns ``frame,video`` given as ``video_table`` or found as
    ``source/video_table.csv``; it becomes ``case_groups.csv`` so the split
    keeps videos intact.
``convert_nifti_folder``
    ``images/*.nii.gz`` and ``labels/*.nii.gz`` paired by file name (an image
    may carry nnU-Net's ``_0000`` suffix); labels must hold only 0 and 1.

Lossless 2-D masks (``.png``/``.tif``) must hold two values, ``{0, 255}`` or
``{0, 1}``; anything else is an error unless ``binarize=True`` asks for the
128 threshold explicitly -- a mask with grey levels may be a soft or
multi-class mask, and silently thresholding it would change its meaning.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stitch_ops.data.raw import (
    IMAGES_TR,
    LABELS_TR,
    DatasetError,
    image_path,
    label_path,
    sanitize_case_id,
    write_case_groups,
    write_dataset_json,
)
from stitch_ops.errors import UnknownNameError, UserError
from stitch_ops.outputs import output_dir, write_png

logger = logging.getLogger(__name__)

MASK_THRESHOLD = 128
_LOSSY = (".jpg", ".jpeg")
_IMAGE_SUFFIXES_2D = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
VIDEO_TABLE_CSV = "video_table.csv"


@dataclass(frozen=True)
class CasePair:
    """One image and its mask/label on the source side, with the case id it will get."""

    case: str
    image: Path
    label: Path


# =========================================================================== 2-D: Kvasir and CVC-ClinicDB


def convert_kvasir(
    source: Path,
    target: Path,
    *,
    image_size: int | None = None,
    binarize: bool = False,
    progress: bool = False,
) -> Path:
    """Convert Kvasir-SEG / HyperKvasir segmented images into an nnU-Net raw PNG dataset.

    Args:
        source: folder holding ``images/`` and ``masks/`` (or ``segmented-images/`` with those).
        target: output dataset folder (replaced when complete).
        image_size: resize every frame to ``image_size x image_size`` (bilinear
            for images, nearest for masks); ``None`` keeps native sizes. Useful
            on a CPU, where full-resolution Kvasir frames make planning slow.
        binarize: threshold lossless masks with grey levels at 128 instead of failing.
        progress: show a progress bar.

    Returns:
        ``target``, holding ``imagesTr/kvasir_{stem}_0000.png`` (RGB),
        ``labelsTr/kvasir_{stem}.png`` (0/1) and ``dataset.json`` (label ``polyp``).
        Kvasir frames are independent, so no ``case_groups.csv`` is written.

    Raises:
        DatasetError: missing folder or mask, unreadable file, size mismatch, non-binary lossless mask.
    """
    source, target = Path(source), Path(target)
    logger.info("converting Kvasir %s -> %s (image_size=%s)", source, target, image_size)
    root = source / "segmented-images" if (source / "segmented-images").is_dir() else source
    pairs = _pair_by_stem(
        _require_dir(root / "images", "Kvasir"), _require_dir(root / "masks", "Kvasir"), prefix="kvasir_"
    )
    return _write_natural_dataset(
        pairs, target, name="kvasir", image_size=image_size, binarize=binarize, groups=None, progress=progress
    )


def convert_cvc_clinicdb(
    source: Path,
    target: Path,
    video_table: Path | None = None,
    *,
    image_size: int | None = None,
    binarize: bool = False,
    progress: bool = False,
) -> Path:
    """Convert CVC-ClinicDB into an nnU-Net raw PNG dataset whose ``case_groups.csv`` lists its videos.

    Args:
        source: folder holding ``Original/`` and ``Ground Truth/`` (or ``PNG/`` or ``TIF/`` with those).
        target: output dataset folder (replaced when complete).
        video_table: CSV ``frame,video`` (``frame`` = file name or stem, e.g. ``1`` or ``1.tif``);
            default ``source/video_table.csv``. Required: without it frames of one
            video would land in different parts and leak between training and testing.
        image_size: optional square resize, as in :func:`convert_kvasir`.
        binarize: threshold lossless masks with grey levels at 128 instead of failing.
        progress: show a progress bar.

    Returns:
        ``target`` with ``imagesTr/cvc_{stem}_0000.png``, ``labelsTr/cvc_{stem}.png``,
        ``dataset.json`` and ``case_groups.csv`` (groups ``video_{video}``).

    Raises:
        DatasetError: as :func:`convert_kvasir`, plus a missing table or a frame missing from it.
    """
    source, target = Path(source), Path(target)
    logger.info("converting CVC-ClinicDB %s -> %s (video table %s)", source, target, video_table)
    originals, truths = _find_cvc_folders(source)
    pairs = _pair_by_stem(originals, truths, prefix="cvc_")
    table = Path(video_table) if video_table is not None else source / VIDEO_TABLE_CSV
    frame_to_video = _read_video_table(table)
    groups = _groups_from_table(pairs, frame_to_video, table)
    return _write_natural_dataset(
        pairs, target, name="cvc_clinicdb", image_size=image_size, binarize=binarize, groups=groups, progress=progress
    )


def _find_cvc_folders(source: Path) -> tuple[Path, Path]:
    for root in (source, source / "PNG", source / "TIF"):
        if (root / "Original").is_dir() and (root / "Ground Truth").is_dir():
            return root / "Original", root / "Ground Truth"
    raise DatasetError(
        f"{source} is not a CVC-ClinicDB folder: expected 'Original/' and 'Ground Truth/' in it "
        "(or under PNG/ or TIF/)."
    )


def _frame_key(name: str) -> str:
    """Normalise a frame reference so ``'1'``, ``'001'`` and ``'1.tif'`` all match frame ``1.tif``."""
    stem = Path(name.strip()).stem
    return str(int(stem)) if stem.isdigit() else stem


def _read_video_table(table: Path) -> dict[str, str]:
    if not table.is_file():
        raise DatasetError(
            f"CVC-ClinicDB needs a frame-to-video table, not found at {table}: write a CSV with columns 'frame,video' "
            f"(one row per frame) and pass it as video_table or save it as {VIDEO_TABLE_CSV} in the source folder. "
            "Frames of one video are near-duplicates; splitting them apart would leak test data into training."
        )
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"frame", "video"} <= {f.strip() for f in reader.fieldnames}:
            raise DatasetError(f"{table} must have the header 'frame,video'; got {reader.fieldnames}.")
        mapping: dict[str, str] = {}
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row["frame"] or not row["video"]:
                raise DatasetError(f"{table} line {reader.line_num}: empty frame or video.")
            mapping[_frame_key(row["frame"])] = row["video"]
    return mapping


def _groups_from_table(pairs: Sequence[CasePair], frame_to_video: Mapping[str, str], table: Path) -> dict[str, str]:
    groups, missing = {}, []
    for pair in pairs:
        video = frame_to_video.get(_frame_key(pair.image.name))
        if video is None:
            missing.append(pair.image.name)
        else:
            groups[pair.case] = sanitize_case_id(f"video_{video}")
    if missing:
        raise DatasetError(
            f"{table} has no video for frame(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; add a row "
            f"'{Path(missing[0]).stem},<video>' for each."
        )
    unused = len(frame_to_video) - len(pairs)
    if unused > 0:
        logger.warning("%s lists %d frame(s) that are not in the source folder; they are ignored", table, unused)
    return groups


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path} not found: the {what} layout needs this folder.")
    return path


def _list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(tuple(suffixes)))


def _pair_by_stem(images: Path, masks: Path, *, prefix: str) -> list[CasePair]:
    """Pair ``images/x.jpg`` with ``masks/x.*``; every image needs exactly one mask."""
    image_files = _list_files(images, _IMAGE_SUFFIXES_2D)
    if not image_files:
        raise DatasetError(f"{images} holds no images ({', '.join(_IMAGE_SUFFIXES_2D)}); the input folder is empty.")
    masks_by_stem: dict[str, list[Path]] = {}
    for mask in _list_files(masks, _IMAGE_SUFFIXES_2D):
        masks_by_stem.setdefault(mask.stem, []).append(mask)
    pairs, cases = [], set()
    for image in image_files:
        candidates = masks_by_stem.pop(image.stem, [])
        if not candidates:
            raise DatasetError(
                f"no mask for image {image}: expected {masks / image.name} (same name); add it or remove the image."
            )
        if len(candidates) > 1:
            raise DatasetError(f"image {image} has several masks {[c.name for c in candidates]}; keep one.")
        case = sanitize_case_id(image.stem, prefix=prefix)
        if case in cases:
            raise DatasetError(f"two images map to case id {case!r} (e.g. {image}); rename one.")
        cases.add(case)
        pairs.append(CasePair(case=case, image=image, label=candidates[0]))
    if masks_by_stem:
        logger.warning(
            "%d mask(s) in %s have no image and are ignored, e.g. %s",
            len(masks_by_stem),
            masks,
            next(iter(masks_by_stem)),
        )
    return pairs


def _write_natural_dataset(
    pairs: Sequence[CasePair],
    target: Path,
    *,
    name: str,
    image_size: int | None,
    binarize: bool,
    groups: Mapping[str, str] | None,
    progress: bool,
) -> Path:
    from tqdm.auto import tqdm

    if image_size is not None and image_size < 16:
        raise DatasetError(f"--image-size must be at least 16 pixels, got {image_size}; omit it to keep the "
                           f"native size.")
    with output_dir(target) as tmp:
        (tmp / IMAGES_TR).mkdir()
        (tmp / LABELS_TR).mkdir()
        empty = 0
        for pair in tqdm(pairs, desc=f"convert {name}", unit="case", disable=not progress):
            image, mask = _load_natural_pair(pair, image_size=image_size, binarize=binarize)
            empty += int(not mask.any())
            write_png(image_path(tmp, pair.case, ".png"), image)
            write_png(label_path(tmp, pair.case, ".png"), mask)
        if empty:
            logger.warning("%d of %d masks are empty (no polyp); kept as negative examples", empty, len(pairs))
        write_dataset_json(
            tmp,
            channel_names={"0": "R", "1": "G", "2": "B"},
            labels={"background": 0, "polyp": 1},
            num_training=len(pairs),
            file_ending=".png",
            name=name,
            description=f"converted by stitch_ops.data.converters from {pairs[0].image.parent.parent}",
        )
        if groups is not None:
            write_case_groups(tmp, groups)
    logger.info("wrote %d cases to %s", len(pairs), target)
    return target


def _load_natural_pair(pair: CasePair, *, image_size: int | None, binarize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read an RGB image and its 0/1 mask, checked for equal size, optionally resized."""
    from PIL import Image

    image = _open_pil(pair.image).convert("RGB")
    mask_img = _open_pil(pair.label)
    if mask_img.size != image.size:
        raise DatasetError(
            f"mask {pair.label} is {mask_img.size[0]}x{mask_img.size[1]} but image {pair.image} is "
            f"{image.size[0]}x{image.size[1]} (width x height); they must match pixel for pixel."
        )
    mask = _binary_mask(np.asarray(mask_img.convert("L")), pair.label, binarize=binarize)
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
        mask = np.asarray(Image.fromarray(mask).resize((image_size, image_size), Image.NEAREST))
    return np.asarray(image), mask


def _open_pil(path: Path):
    """Open and fully decode an image, turning PIL's many error types into a DatasetError."""
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as err:
        raise DatasetError(
            f"cannot read {path} ({err}); the file is corrupt or not an image: replace or remove it."
        ) from err


def _binary_mask(values: np.ndarray, path: Path, *, binarize: bool) -> np.ndarray:
    """Map a greyscale mask to 0/1: JPEG masks by threshold, lossless masks only if two-valued (or ``binarize``)."""
    if path.name.lower().endswith(_LOSSY) or binarize:
        return (values >= MASK_THRESHOLD).astype(np.uint8)
    present = set(np.unique(values).tolist())
    if present <= {0, 1}:
        return values.astype(np.uint8)
    if present <= {0, 255}:
        return (values == 255).astype(np.uint8)
    raise DatasetError(
        f"mask {path} is not binary: values {sorted(present)[:8]}{' ...' if len(present) > 8 else ''}; expected "
        "0/255 or 0/1. Fix the mask, or pass binarize=True to threshold lossless masks at 128."
    )


# =========================================================================== 3-D: NIfTI folders


def convert_nifti_folder(
    images: Path,
    labels: Path,
    target: Path,
    label_name: str = "foreground",
    *,
    channel_name: str = "MRI",
    progress: bool = False,
) -> Path:
    """Convert paired NIfTI images and binary labels into an nnU-Net raw dataset.

    Args:
        images: folder of single-channel 3-D ``.nii.gz``/``.nii`` images.
        labels: folder of labels with the same file names (an image named
            ``x_0000.nii.gz`` also pairs with label ``x.nii.gz``).
        target: output dataset folder (replaced when complete).
        label_name: name of label value 1 in ``dataset.json``.
        channel_name: the channel's name; nnU-Net normalises ``"CT"`` with
            dataset-wide statistics and anything else per image (z-score).
        progress: show a progress bar.

    Returns:
        ``target`` with ``imagesTr/{case}_0000.nii.gz`` (geometry kept),
        ``labelsTr/{case}.nii.gz`` (uint8, the image's geometry) and ``dataset.json``.

    Raises:
        DatasetError: empty folder, missing label, unreadable file, size or
            spacing mismatch, label values other than 0 and 1, multi-channel images.
    """
    images, labels, target = Path(images), Path(labels), Path(target)
    logger.info("converting NIfTI %s + %s -> %s (label %r)", images, labels, target, label_name)
    _require_dir(images, "NIfTI images")
    _require_dir(labels, "NIfTI labels")
    pairs = _pair_nifti(images, labels)
    from tqdm.auto import tqdm

    with output_dir(target) as tmp:
        (tmp / IMAGES_TR).mkdir()
        (tmp / LABELS_TR).mkdir()
        for pair in tqdm(pairs, desc="convert nifti", unit="case", disable=not progress):
            _convert_nifti_pair(pair, tmp)
        write_dataset_json(
            tmp,
            channel_names={"0": channel_name},
            labels={"background": 0, label_name: 1},
            num_training=len(pairs),
            file_ending=".nii.gz",
            name=target.name,
            description=f"converted by stitch_ops.data.converters from {images}",
        )
    logger.info("wrote %d cases to %s", len(pairs), target)
    return target


def _nifti_stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def _pair_nifti(images: Path, labels: Path) -> list[CasePair]:
    image_files = _list_files(images, _NIFTI_SUFFIXES)
    if not image_files:
        raise DatasetError(f"{images} holds no .nii.gz/.nii images; the input folder is empty.")
    label_files = {_nifti_stem(f.name): f for f in _list_files(labels, _NIFTI_SUFFIXES)}
    pairs, cases = [], set()
    for image in image_files:
        stem = _nifti_stem(image.name)
        base = stem[: -len("_0000")] if stem.endswith("_0000") else stem
        label = label_files.get(stem) or label_files.get(base)
        if label is None:
            raise DatasetError(
                f"no label for image {image}: expected {labels / image.name}; add it or remove the image."
            )
        case = sanitize_case_id(base)
        if case in cases:
            raise DatasetError(f"two images map to case id {case!r} (e.g. {image}); rename one.")
        cases.add(case)
        pairs.append(CasePair(case=case, image=image, label=label))
    return pairs


def _read_sitk(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise DatasetError(
            f"cannot read {path} ({lines[-1] if lines else err}); the file is corrupt: replace it."
        ) from err


def _convert_nifti_pair(pair: CasePair, root: Path) -> None:
    import SimpleITK as sitk

    image, label = _read_sitk(pair.image), _read_sitk(pair.label)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise DatasetError(
            f"{pair.image} has {image.GetDimension()} dimensions and {image.GetNumberOfComponentsPerPixel()} "
            "component(s); expected a single-channel 3-D volume (split multi-channel data into one file per channel)."
        )
    if label.GetSize() != image.GetSize():
        raise DatasetError(
            f"label {pair.label} has size {label.GetSize()} but image {pair.image} has {image.GetSize()} (x, y, z); "
            "they must share one voxel grid."
        )
    if not np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-3, atol=1e-4):
        raise DatasetError(
            f"label {pair.label} has spacing {label.GetSpacing()} but image {pair.image} has {image.GetSpacing()}; "
            "resample the label onto the image grid."
        )
    values = sitk.GetArrayViewFromImage(label)
    present = set(np.unique(values).tolist())
    if not present <= {0, 1}:
        raise DatasetError(
            f"label {pair.label} holds values {sorted(present)[:8]}; expected only 0 and 1 (binary). "
            "Merge or drop the other classes before converting."
        )
    if 1 not in present:
        logger.warning("label %s is empty (no foreground)", pair.label)
    out_label = sitk.GetImageFromArray(np.asarray(values, dtype=np.uint8))
    out_label.CopyInformation(image)  # nnU-Net expects image and label on the same geometry
    sitk.WriteImage(image, str(image_path(root, pair.case, ".nii.gz")), useCompression=True)
    sitk.WriteImage(out_label, str(label_path(root, pair.case, ".nii.gz")), useCompression=True)


LAYOUTS = ("kvasir", "cvc-clinicdb", "nifti")


def convert(layout: str, source: Path, target: Path, *, labels: Path | None = None, video_table: Path | None = None,
            label_name: str = "foreground", image_size: int | None = None, progress: bool = False) -> Path:
    """Convert a public dataset ``layout`` (one of :data:`LAYOUTS`) into an nnU-Net raw dataset.

    ``source`` is the dataset folder (for ``nifti``: the images folder, ``labels`` the labels
    folder); the other arguments apply to the layouts named in the CLI's help.
    """
    if layout == "kvasir":
        return convert_kvasir(source, target, image_size=image_size, progress=progress)
    if layout == "cvc-clinicdb":
        return convert_cvc_clinicdb(source, target, video_table, image_size=image_size, progress=progress)
    if layout == "nifti":
        if labels is None:
            raise UserError("nifti conversion needs --labels, the folder of label volumes")
        return convert_nifti_folder(source, labels, target, label_name, progress=progress)
    raise UnknownNameError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
