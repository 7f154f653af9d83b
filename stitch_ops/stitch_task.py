"""``stitch-ops stitch``: combine your own model with another party's, on your own images.

What an institution runs when it has its own trained model, a model received from another
institution (any source :func:`~stitch_ops.bundle.sources.open_model` accepts) and its own
images, some of them perhaps labelled. Nothing but the received model crosses the
institution's boundary.

1. both models are opened as data and checked for compatibility before any work (labels,
   channels, 2-D vs 3-D, a shared scale, readable images with the right channel count);
2. with ``labels``: a seeded share (``holdout``) of the labelled images is held out; their
   label values are checked against the models' (0/255 masks of a binary model are read
   as 0/1, and the summary says so; anything else is refused);
3. the other images are preprocessed with the *own* model's plans (cached, resumable) and
   the two networks are traced, matched and their stitches trained on them (labels never
   read; :func:`~stitch_ops.stitching.train.train_stitch_network`);
4. with ``labels``: the stitch-ensembles at ``max_positions`` positions are scored on the
   held-out images, which never trained a stitch, k is selected by strategy 1 (lowest mean
   rank of Dice and HD95), and own, other, the plain ensemble and the chosen
   stitch-ensemble are compared there, with a one-line recommendation; without: the
   rule-of-thumb position (strategy 3: a number of matches after the last skip
   concatenation, as a pipeline measured it, :func:`rule_of_thumb_k`) is used, and the
   summary says so;
5. the chosen stitch-ensemble is exported as a verified MONAI bundle (folder and zip) whose
   metadata identifies both parents (dataset, trainer, plans, folds, SHA-256 of the weights).

Every step writes its output whole or not at all; a rerun with the same settings resumes
after the last finished step (stitch training after the last finished epoch). Files in
``out`` that this command did not write are never touched (:data:`OWN_FILES`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from stitch_ops.approaches import Approach, StitchMethod
from stitch_ops.errors import InputFileError, UserError
from stitch_ops.outputs import (OutputExistsError, output_dir, output_file, read_json, refuse_existing, write_json,
                                write_table)

if TYPE_CHECKING:
    from stitch_ops.nnunet.model import NnUNetModel

__all__ = ["StitchTask", "check_compatible", "check_labels", "convert_255", "hold_out",
           "positions_to_score", "recommend", "rule_of_thumb_k", "run"]

logger = logging.getLogger(__name__)

MAX_SCALE_RATIO = math.sqrt(2.0)
"""Two layers share a scale if their physical voxel sizes (spacing x downsampling) differ
by at most half an octave."""


UNFINGERPRINTED = ("out", "device", "threads", "overwrite", "name", "authors", "description")
"""Settings that change neither the stitches nor the scores: a rerun with others resumes."""


class IncompatibleModels(UserError):
    """The two models cannot be stitched on these images; the message names both and the fix."""


@dataclass(frozen=True)
class StitchTask:
    """Everything ``stitch-ops stitch`` was asked to do (its hash decides resume vs refuse)."""

    own: Path
    other: Path
    images: Path
    out: Path
    labels: Path | None = None
    method: str = StitchMethod.DOUBLE_BATCHED.value
    epochs: int = 2
    iterations_per_epoch: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    max_positions: int | None = None
    rule_of_thumb: Path | None = None
    own_fold: int | str | None = None
    other_fold: int | str | None = None
    seed: int = 0
    holdout: float = 0.5
    device: str = "auto"
    trust: bool = False
    threads: int | None = None
    overwrite: bool = False
    name: str | None = None
    authors: str | None = None
    description: str | None = None

    def fingerprint(self) -> str:
        record = {k: str(v) for k, v in asdict(self).items() if k not in UNFINGERPRINTED}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _open(source: Path, fold: int | str | None, role: str, trust: bool) -> NnUNetModel:
    from stitch_ops.bundle.sources import open_model

    model = open_model(source, fold, trusted=trust)
    if model.spec.get("kind") != "nnunet":
        raise IncompatibleModels(f"--{role} {source} is a {model.spec.get('kind')}, not one nnU-Net: stitch two "
                                 f"plain nnU-Net models (their bundles, results folders or zips)")
    if len(model.folds) > 1:
        raise IncompatibleModels(f"--{role} {source} holds folds {model.folds}; a stitch joins two single "
                                 f"networks: choose one with --{role}-fold")
    return model


def _physical_scales(model: NnUNetModel) -> list[list[float]]:
    """Per axis, the voxel size (mm) of every stage: target spacing x cumulative stride."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(model.plans).get_configuration(model.configuration)
    strides = configuration.configuration["architecture"]["arch_kwargs"]["strides"]
    dims = len(configuration.patch_size)
    per_axis = [[s] * dims if isinstance(s, int) else list(s) for s in strides]
    spacing = list(configuration.spacing)[-dims:]
    scales = []
    for axis in range(dims):
        factor, axis_scales = 1, []
        for stride in per_axis:
            factor *= int(stride[axis])
            axis_scales.append(spacing[axis] * factor)
        scales.append(axis_scales)
    return scales


def check_compatible(own: NnUNetModel, other: NnUNetModel, own_name: str, other_name: str) -> None:
    """Refuse two models that cannot be stitched, before any work, in one line naming both.

    Raises:
        IncompatibleModels: different labels, channels, dimensionality, or no shared scale.
    """
    pair = f"own model {own_name} and other model {other_name}"
    own_labels, other_labels = own.dataset_json["labels"], other.dataset_json["labels"]
    if own_labels != other_labels:
        raise IncompatibleModels(f"{pair} segment different labels ({own_labels} vs {other_labels}): stitch "
                                 f"models trained for the same labels (same names and values)")
    own_channels = own.dataset_json["channel_names"]
    other_channels = other.dataset_json["channel_names"]
    if len(own_channels) != len(other_channels):
        raise IncompatibleModels(f"{pair} read {len(own_channels)} vs {len(other_channels)} input channels: "
                                 f"both must read the same images")
    names = [str(v).lower() for v in own_channels.values()], [str(v).lower() for v in other_channels.values()]
    if names[0] != names[1]:
        raise IncompatibleModels(f"{pair} read different channels ({dict(own_channels)} vs {dict(other_channels)}): "
                                 f"both must read the same modalities in the same order")
    dims = [len(m.plans["configurations"][m.configuration]["patch_size"]) for m in (own, other)]
    if dims[0] != dims[1]:
        raise IncompatibleModels(f"{pair} are {dims[0]}-D and {dims[1]}-D networks: stitch two 2-D or two 3-D "
                                 f"models (choose another configuration of one of them)")
    for axis, (scales_a, scales_b) in enumerate(zip(_physical_scales(own), _physical_scales(other))):
        if not any(max(a / b, b / a) <= MAX_SCALE_RATIO for a in scales_a for b in scales_b):
            raise IncompatibleModels(
                f"{pair} share no scale along axis {axis} (voxel sizes per stage {[round(s, 3) for s in scales_a]} "
                f"vs {[round(s, 3) for s in scales_b]} mm): their spacings are too different for any layers to "
                f"match; stitch models planned for similar spacings")


def check_images(model: NnUNetModel, images: Path, model_names: str, progress: bool = True) -> dict[str, list[str]]:
    """Every case of ``images`` readable with the models' channel count; returns case -> files.

    Raises:
        InputFileError: an unreadable image, a wrong channel count.
        FileNotFoundError: an empty or missing folder.
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from stitch_ops.nnunet.predict import list_cases

    file_ending = model.dataset_json["file_ending"]
    if not images.is_dir():
        raise FileNotFoundError(f"no images folder at {images}")
    try:
        cases = list_cases(images, file_ending)
    except FileNotFoundError:
        raise FileNotFoundError(f"{images} holds no images named {{case}}_0000{file_ending}, as {model_names} "
                                f"expect (nnU-Net's naming)") from None
    expected = len(model.dataset_json["channel_names"])
    reader = None
    for case, files in tqdm(cases.items(), desc="check images", unit="case", disable=not progress):
        try:
            if reader is None:
                reader = determine_reader_writer_from_dataset_json(model.dataset_json, files[0], verbose=False)()
            data, _ = reader.read_images(files)
        except Exception as err:  # any reader failure means the same for the user: unreadable
            raise InputFileError(f"cannot read case {case} of {images} ({files[0]}): "
                             f"{str(err).splitlines()[0][:150]}") from None
        if data.shape[0] != expected:
            raise InputFileError(f"case {case} of {images} has {data.shape[0]} channel(s), but {model_names} read "
                             f"{expected} ({dict(model.dataset_json['channel_names'])})")
    return cases


def _preprocess_to_folder(model: NnUNetModel, images: Path, cases: list[str], folder: Path,
                          progress: bool) -> Path:
    """Each case preprocessed with ``model``'s plans into ``folder/{case}.npz`` + ``.npy``
    (readable by :class:`~stitch_ops.stitching.PreprocessedImages`); finished cases are kept."""
    from stitch_ops.nnunet.predict import iter_preprocessed

    folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if not (folder / f"{c}.npz").is_file()]
    for item in iter_preprocessed(model, images, todo, progress) if todo else ():
        case = item.case
        # the array as .npy (memory-mapped when patches are drawn); the .npz, written last, is
        # how nnU-Net's dataset class lists a case, so a killed write leaves no listed case
        with output_file(folder / f"{case}.npy") as tmp, tmp.open("wb") as handle:
            np.save(handle, item.data.astype(np.float32))
        with output_file(folder / f"{case}.npz") as tmp, tmp.open("wb") as handle:
            np.savez(handle, data=np.zeros((1,), np.float32))
    return folder


def _as_model(network: Any, own: NnUNetModel, description: str, spec: dict[str, Any] | None) -> NnUNetModel:
    from stitch_ops.nnunet.model import NnUNetModel

    return NnUNetModel(network, own.plans, own.dataset_json, own.configuration, None, description, spec)


def rule_of_thumb_k(network: Any, source: Path | None = None) -> tuple[int, int, Any]:
    """Selection strategy 3 in this task, for a :class:`~stitch_ops.stitching.StitchedNetwork`:
    what runs without labels, and the one position ``--max-positions 1`` scores.

    Args:
        source: a pipeline run's ``selection.json`` (``--rule-of-thumb``); default: the rule of
            thumb this package ships (:func:`~stitch_ops.evaluation.selection.read_rule_of_thumb`).

    Returns:
        ``(k, last_merge, rule)``: the position, the match of the last skip concatenation it is
        counted from, and the :class:`~stitch_ops.evaluation.selection.RuleOfThumb` used.

    Raises:
        UserError: ``source`` holds no structural rule of thumb.
    """
    from stitch_ops.evaluation.selection import read_rule_of_thumb
    from stitch_ops.graph.matching import last_merge_match

    try:
        rule = read_rule_of_thumb(source)
    except ValueError as err:
        raise UserError(f"--rule-of-thumb: {err}") from None
    last_merge = last_merge_match(network.graph_a, network.matches)
    return rule.position(len(network.matches), last_merge), last_merge, rule


def positions_to_score(network: Any, max_positions: int | None, rule_source: Path | None = None) -> list[int]:
    """The positions scored on the held-out images: ``max_positions`` spread evenly over the
    matches (every one by default); one position is the rule of thumb, never k = 0."""
    from stitch_ops.stitching.scoring import evaluated_positions

    if max_positions == 1:
        return [rule_of_thumb_k(network, rule_source)[0]]
    return evaluated_positions(len(network.matches), max_positions)


def hold_out(labelled: list[str], share: float, seed: int) -> list[str]:
    """The labelled cases kept for selecting k and for the final comparison: a seeded share
    (at least one) of ``labelled``, sorted. The stitches never train on them."""
    if not 0 < share <= 1:
        raise UserError(f"--holdout is the share of the labelled images kept for selection, in (0, 1]; got {share}")
    count = max(1, int(round(share * len(labelled))))
    chosen = np.random.default_rng(seed).choice(sorted(labelled), size=count, replace=False)
    return sorted(str(c) for c in chosen)


BINARY_255 = {0, 255}


def check_labels(model: NnUNetModel, labels: Path, cases: list[str]) -> str | None:
    """Read the labels of ``cases`` once and check their values against the models' label set,
    before any work.

    Masks saved as 0/255 (the usual format of public polyp masks) for a binary model are
    accepted, to be read as 0/1 (:func:`convert_255`): the returned note says so. Any other
    value is refused: scored as it is, every Dice would be 0.

    Returns:
        ``None`` when the labels hold the models' values, else the note for 0/255 masks.

    Raises:
        InputFileError: a label holds values the models do not segment, several components
            per pixel, or cannot be read.
    """
    import SimpleITK as sitk

    ending = model.dataset_json["file_ending"]
    allowed = {int(v) for v in model.dataset_json["labels"].values() if not isinstance(v, (list, tuple))}
    names = dict(model.dataset_json["labels"])
    found: dict[int, str] = {}
    for case in cases:
        path = labels / f"{case}{ending}"
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise InputFileError(f"cannot read label {path}: {str(err).strip().splitlines()[-1][:150]}") from None
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputFileError(f"label {path} has {image.GetNumberOfComponentsPerPixel()} components per pixel "
                                 f"(RGB?); a label holds one value per pixel ({names})")
        for value in np.unique(sitk.GetArrayViewFromImage(image)).tolist():
            found.setdefault(int(value), case)
    unknown = sorted(set(found) - allowed)
    if not unknown:
        return None
    if allowed == {0, 1} and set(found) <= BINARY_255:
        return f"labels in {labels} are saved as 0/255: 255 read as 1 ({names}); the files were not changed"
    raise InputFileError(
        f"labels in {labels} hold values {sorted(found)[:10]} (e.g. {unknown[0]} in {found[unknown[0]]}{ending}), "
        f"but the models segment {names}: save each label with the models' values (`stitch-ops data convert` "
        f"turns 0/255 and JPEG masks into 0/1)")


def convert_255(model: NnUNetModel, labels: Path, cases: list[str], target: Path) -> Path:
    """The 0/255 labels of ``cases`` as 0/1 in ``target`` (written whole), same geometry."""
    import SimpleITK as sitk

    ending = model.dataset_json["file_ending"]
    with output_dir(target) as staging:
        for case in cases:
            image = sitk.ReadImage(str(labels / f"{case}{ending}"))
            converted = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) == 255).astype(np.uint8))
            converted.CopyInformation(image)
            sitk.WriteImage(converted, str(staging / f"{case}{ending}"))
    return target


def parent_record(source: Path, model: NnUNetModel) -> dict[str, Any]:
    """What identifies one parent in the exported bundle: dataset, trainer, plans,
    configuration, folds and the SHA-256 of the weights file(s) it was opened from."""
    from stitch_ops.bundle.manifest import sha256 as _sha256

    identity = re.search(r"(\w+)__(\w+)__(\w+)", model.description)
    record: dict[str, Any] = {
        "dataset": model.plans.get("dataset_name") or model.dataset_json.get("name"),
        "trainer": identity.group(1) if identity else None,
        "plans": model.plans.get("plans_name") or (identity.group(2) if identity else None),
        "configuration": model.configuration, "folds": model.folds, "source": source.name}
    if source.is_file():
        record["sha256"] = {source.name: _sha256(source)}
    elif (source / "models" / "model.pt").is_file():
        record["sha256"] = {"models/model.pt": _sha256(source / "models" / "model.pt")}
    else:
        record["sha256"] = {f"fold_{f}/checkpoint_final.pth": _sha256(source / f"fold_{f}" / "checkpoint_final.pth")
                            for f in model.folds if (source / f"fold_{f}" / "checkpoint_final.pth").is_file()}
    return record


def _score(models: dict[str, NnUNetModel], preprocessed: Any, labels: Path, cases: list[str], scratch: Path,
           device: str) -> dict[str, tuple[float, float]]:
    from stitch_ops.stitching.scoring import score_on_validation

    scores = {}
    for name, model in models.items():
        frame = score_on_validation(model, preprocessed, labels, scratch / name.replace(" ", "_"), device,
                                    pair="task", test_party="val", approach=Approach.STITCH, trained_on="task",
                                    fold=0, cases=cases)
        scores[name] = (float(frame["dice"].mean()), float(frame["hd95"].mean()))
    shutil.rmtree(scratch, ignore_errors=True)
    return scores


def recommend(scores: dict[str, dict[str, float]], k: int) -> str:
    """The one-line recommendation from the held-out comparison (Dice decides; the
    stitch-ensemble only where it beats the plain ensemble)."""
    dice = {name: s["dice"] for name, s in scores.items()}
    stitch, plain = dice[STITCH_ROW], dice[PLAIN_ROW]
    ensemble = (f"the stitch-ensemble (k={k}, Dice {stitch:.4f}, above the plain ensemble's {plain:.4f})"
                if stitch > plain else f"the plain ensemble (Dice {plain:.4f}; the stitch-ensemble at k={k} does "
                                       f"not beat it: {stitch:.4f})")
    best_single = max(("own", "other"), key=dice.__getitem__)
    best_ensemble = max(stitch, plain)
    if dice[best_single] > best_ensemble:
        who = "your own model" if best_single == "own" else "the other party's model"
        return (f"recommendation: {who} is best on your own held-out images (Dice {dice[best_single]:.4f}); "
                f"an ensemble, {ensemble}, costs {dice[best_single] - best_ensemble:.4f} Dice here and buys "
                f"robustness on data like the other party's, which your images cannot measure")
    if stitch > plain:
        return (f"recommendation: use the stitch-ensemble (the exported bundle): Dice {stitch:.4f} on your held-out "
                f"images, above the plain ensemble's {plain:.4f} and own {dice['own']:.4f}")
    return (f"recommendation: use the plain ensemble of the two models (Dice {plain:.4f}): the stitch-ensemble at "
            f"k={k} does not beat it on your held-out images ({stitch:.4f}); the exported bundle holds the "
            f"stitch-ensemble")


PLAIN_ROW, STITCH_ROW = "plain ensemble", "stitch-ensemble"


def _start_over(out: Path) -> None:
    """With ``--overwrite``: remove what an earlier stitch run wrote in ``out`` (only its own files)."""
    for name in OWN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


OWN_FILES = ("task.json", "positions.csv", "summary.json", "bundle", "bundle.zip", "work")
"""Everything ``stitch-ops stitch`` writes into ``--out``; other files there are never touched."""


def prepare_out(task: StitchTask, check_only: bool = False) -> None:
    """Refuse an ``--out`` that would mix runs or overwrite files this run did not write.

    An ``--out`` with this task's ``task.json`` resumes; one with another run's, or holding
    any of :data:`OWN_FILES` without a ``task.json``, is refused unless ``--overwrite`` (then
    those files, and only those, are removed: not with ``check_only``, the check before any
    work)."""
    out, marker = task.out, task.out / "task.json"
    if marker.is_file():
        if read_json(marker).get("fingerprint") == task.fingerprint():
            return
        if not task.overwrite:
            raise OutputExistsError(f"{out} holds a stitch run with other settings ({marker}); choose another "
                                    f"--out, or pass --overwrite to replace that run's files (others are kept)")
    else:
        refuse_existing(out, OWN_FILES, task.overwrite)
    if not check_only:
        _start_over(out)


def run(task: StitchTask, progress: bool = True) -> dict[str, Any]:
    """Run ``task`` (see the module docstring); returns the summary also written to
    ``out/summary.json`` and exports the stitch-ensemble to ``out/bundle`` (+ ``.zip``)."""
    import pandas as pd

    from stitch_ops.bundle.export import ExportInfo, export_bundle
    from stitch_ops.evaluation.selection import select_position
    from stitch_ops.nnunet.predict import preprocess_cases
    from stitch_ops.stitching import PreprocessedImages, TwoModelEnsemble, extract_stitch_ensemble
    from stitch_ops.stitching.network import load_stitched_network
    from stitch_ops.stitching.artifacts import NETWORK_FILE
    from stitch_ops.stitching.scoring import score_positions
    from stitch_ops.stitching.train import train_stitch_network
    from stitch_ops.stitching.train import StitchTrainingConfig

    try:
        config = StitchTrainingConfig(method=task.method, epochs=task.epochs,
                                      iterations_per_epoch=task.iterations_per_epoch, batch_size=task.batch_size,
                                      lr=task.lr, seed=task.seed)
    except ValueError as err:
        raise UserError(f"bad stitch schedule: {option_names(str(err))}") from None
    if task.max_positions is not None and task.max_positions < 1:
        raise UserError(f"--max-positions must be >= 1, got {task.max_positions}")
    prepare_out(task, check_only=True)  # before the models are opened
    if task.threads is not None:
        import torch

        torch.set_num_threads(task.threads)
    own = _open(task.own, task.own_fold, "own", task.trust)
    other = _open(task.other, task.other_fold, "other", task.trust)
    names = f"own model {task.own} and other model {task.other}"
    check_compatible(own, other, str(task.own), str(task.other))
    cases = check_images(own, task.images, names, progress)
    held_out: list[str] = []
    if task.labels is not None:
        if not task.labels.is_dir():
            raise FileNotFoundError(f"no labels folder at {task.labels}")
        ending = own.dataset_json["file_ending"]
        labelled = sorted(c for c in cases if (task.labels / f"{c}{ending}").is_file())
        if not labelled:
            raise FileNotFoundError(f"no label in {task.labels} is named like an image case of {task.images} "
                                    f"({{case}}{ending}, e.g. {next(iter(cases))}{ending})")
        held_out = hold_out(labelled, task.holdout, task.seed)
        if len(held_out) == len(cases):
            raise UserError(f"all {len(cases)} image(s) of {task.images} would be held out for selection "
                            f"(--holdout {task.holdout} of {len(labelled)} labelled): the stitches need images "
                            f"that are not held out; lower --holdout or add unlabelled images")
    training_cases = sorted(set(cases) - set(held_out))
    labels_note = check_labels(own, task.labels, held_out) if task.labels is not None else None

    out, work = task.out, task.out / "work"
    prepare_out(task)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "task.json", {"fingerprint": task.fingerprint(), **{k: str(v) for k, v in asdict(task).items()}})
    labels = task.labels
    if labels is not None and labels_note is not None:
        labels = convert_255(own, labels, held_out, work / "labels")

    configuration = own.plans["configurations"][own.configuration]
    folder = _preprocess_to_folder(own, task.images, training_cases, work / "preprocessed", progress)
    network_dir = work / "network"
    if (network_dir / NETWORK_FILE).is_file():
        logger.info("stitches already trained: %s", network_dir / NETWORK_FILE)
        network = load_stitched_network(network_dir / NETWORK_FILE, own.network, other.network,
                                        retrain=f"delete {network_dir} and run the same command again to train "
                                                f"the stitches anew")
    else:
        network, _ = train_stitch_network(own, other, PreprocessedImages(folder, training_cases),
                                          configuration["patch_size"], config, network_dir, progress)
    num_matches = len(network.matches)

    positions_file = out / "positions.csv"
    summary: dict[str, Any] = {"matches": num_matches, "method": task.method, "images": len(cases),
                               "training_images": len(training_cases), "held_out_images": len(held_out)}
    if labels is not None:
        summary["held_out"] = {"share": task.holdout, "seed": task.seed, "cases": held_out}
        if labels_note:
            summary["labels_note"] = labels_note
        preprocessed = preprocess_cases(own, task.images, held_out, progress)
        scratch = work / "scoring"
        if positions_file.is_file():
            positions = pd.read_csv(positions_file)
        else:
            evaluated = positions_to_score(network, task.max_positions, task.rule_of_thumb)
            logger.info("scoring the stitch-ensembles at %d positions on %d held-out image(s)", len(evaluated),
                        len(held_out))
            scored = score_positions(network, evaluated, own, preprocessed, labels, scratch / "positions",
                                     task.device, pair="task", test_party="val", approach=Approach.STITCH,
                                     trained_on="task", fold=0, cases=held_out)
            shutil.rmtree(scratch, ignore_errors=True)
            from stitch_ops.graph.matching import last_merge_match

            landmark = last_merge_match(network.graph_a, network.matches)
            rows = [{"k": k, "relative_position": k / num_matches, "from_last_merge": k - landmark,
                     "node_a": network.matches[k].node_a,
                     "node_b": network.matches[k].node_b, "dice": float(scored[k]["dice"].mean()),
                     "hd95": float(scored[k]["hd95"].mean())} for k in evaluated]
            positions = pd.DataFrame(rows)
            positions["selected"] = positions["k"] == select_position(positions, "current_fold")
            write_table(positions_file, positions)
        k = int(positions.loc[positions["selected"], "k"].iloc[0])
        summary["selection"] = (f"strategy 1 (lowest mean rank of Dice and HD95) over {len(positions)} position(s), "
                                f"on {len(held_out)} held-out labelled image(s) (a seeded share {task.holdout} of the "
                                f"labelled images, seed {task.seed}) that never trained the stitches")
        summary["positions_scored"] = len(positions)
        baselines = _score({"own": own, "other": _as_model(other.network, own, "other", None),
                            PLAIN_ROW: _as_model(TwoModelEnsemble(own.network, other.network), own,
                                                 PLAIN_ROW, None)},
                           preprocessed, labels, held_out, scratch, task.device)
        chosen = positions.loc[positions["k"] == k].iloc[0]
        summary["held_out_scores"] = {name: {"dice": d, "hd95": h} for name, (d, h) in baselines.items()}
        summary["held_out_scores"][STITCH_ROW] = {"dice": float(chosen["dice"]), "hd95": float(chosen["hd95"])}
        summary["recommendation"] = recommend(summary["held_out_scores"], k)
    else:
        k, summary["last_merge"], rule = rule_of_thumb_k(network, task.rule_of_thumb)
        summary["from_last_merge"] = k - summary["last_merge"]
        summary["selection"] = (f"strategy 3 (no --labels): the rule-of-thumb position, {rule.from_last_merge:+d} "
                                f"matches from the last skip concatenation, not validated on your data "
                                f"(measured on: {rule.source})")
        summary["positions_scored"] = 0
        summary["recommendation"] = ("recommendation: none without labels: pass --labels with some labelled images "
                                     "to compare own, other, the plain ensemble and the stitch-ensemble")
    summary["k"] = k
    summary["relative_position"] = k / num_matches
    summary["match"] = [network.matches[k].node_a, network.matches[k].node_b]

    parents = {"own": parent_record(task.own, own), "other": parent_record(task.other, other)}
    ensemble = extract_stitch_ensemble(network, k)
    model = _as_model(ensemble, own, f"stitch-ensemble k={k} of {own.description} and {other.description}",
                      {"kind": "stitch_ensemble", "ensemble": ensemble.description.to_dict()})
    metrics = {f"held_out/{name}/{metric}": value for name, scores in summary.get("held_out_scores", {}).items()
               for metric, value in scores.items()}
    data = (f"{len(training_cases)} unlabelled images of the stitching institution (only the stitches were "
            f"trained, {task.method}; each parent was trained by its owner)")
    info = ExportInfo(approach=Approach.STITCH.value, trained_on=data, eval_metrics=metrics,
                      name=task.name, authors=task.authors or ExportInfo.authors,
                      description=task.description or (
                          f"A stitch-ensemble of two nnU-Nets (own: {_parent_line(parents['own'])}; other: "
                          f"{_parent_line(parents['other'])}), stitched at position k={k} of {num_matches} "
                          f"matches; its stitches were trained on {data}."),
                      parents=parents,
                      notes=(f"position k={k} of {num_matches} matches; {summary['selection']}",))
    export_bundle(model, out / "bundle", info)
    summary["bundle"] = str(out / "bundle")
    write_json(out / "summary.json", summary)
    return summary


def _parent_line(record: dict[str, Any]) -> str:
    return (f"{record['dataset']}, {record['trainer']}__{record['plans']}__{record['configuration']}, "
            f"folds {record['folds']}")


def option_names(message: str) -> str:
    """A schedule error as the user typed it: ``StitchTrainingConfig.iterations_per_epoch`` -> ``--iterations-per-epoch``."""
    return re.sub(r"StitchTrainingConfig\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), message)


def format_summary(summary: dict[str, Any]) -> str:
    """What ``stitch-ops stitch`` prints on stdout: the held-out table and the recommendation
    (or, without labels, the chosen position), then where the bundle is."""
    lines = []
    if "held_out_scores" in summary:
        lines += [f"on {summary['held_out_images']} held-out labelled image(s) (never used to train the stitches; "
                  f"stitches trained on {summary['training_images']}); k chosen on them: {summary['k']} of "
                  f"{summary['matches']} matches ({summary['positions_scored']} position(s) scored)",
                  f"  {'model':<24} {'Dice':>8} {'HD95':>8}"]
        for name, s in summary["held_out_scores"].items():
            label = f"{name} (k={summary['k']})" if name == STITCH_ROW else name
            lines.append(f"  {label:<24} {s['dice']:>8.4f} {s['hd95']:>8.2f}")
        if summary.get("labels_note"):
            lines.append(f"note: {summary['labels_note']}")
    else:
        lines.append(f"chosen k = {summary['k']} of {summary['matches']} matches: {summary['selection']}")
    lines.append(summary["recommendation"])
    lines.append(f"stitch-ensemble bundle: {summary['bundle']} (+ .zip)")
    return "\n".join(lines)
