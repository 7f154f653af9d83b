"""``stitch-ops stitch``: combine your own model with another party's, on your own images.

What an institution runs when it has its own trained model, a model received from another
institution (any source :func:`~stitch_ops.bundle.sources.open_model` accepts) and its own
images, unlabeled. Nothing but the received model crosses the institution's boundary.

1. both models are opened as data and checked for compatibility before any work (labels,
   channels, 2-D vs 3-D, a shared scale, readable images with the right channel count);
2. the images are preprocessed with the *own* model's plans (cached, resumable);
3. the two networks are traced, matched and their stitches trained on the images
   (labels never read; :func:`~stitch_ops.stitching.pipeline.train_stitch_network`);
4. with ``labels``: the stitch-ensemble at evenly spread positions k, own, other and the
   plain ensemble are scored on the labeled images and k is selected by strategy 1 (lowest
   mean rank of Dice and HD95); without: the rule-of-thumb position (strategy 3: a number of
   matches after the last skip concatenation, as a pipeline measured it,
   :func:`~stitch_ops.evaluation.selection.read_rule_of_thumb`) is used, and the summary says so;
5. the chosen stitch-ensemble is exported as a verified MONAI bundle (folder and zip).

Every step writes its output whole or not at all; a rerun with the same settings resumes
after the last finished step (stitch training after the last finished epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from stitch_ops.approaches import Approach, StitchMethod
from stitch_ops.errors import InputFileError, UserError
from stitch_ops.nnunet.model import NnUNetModel
from stitch_ops.outputs import output_file, read_json, write_json, write_table

__all__ = ["StitchTask", "check_compatible", "quick_schedule", "run"]

logger = logging.getLogger(__name__)

MAX_SCALE_RATIO = math.sqrt(2.0)
"""Two layers share a scale if their physical voxel sizes (spacing x downsampling) differ
by at most half an octave."""


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
    max_positions: int | None = 6
    rule_of_thumb: Path | None = None
    own_fold: int | str | None = None
    other_fold: int | str | None = None
    seed: int = 0
    device: str = "auto"
    trust: bool = False

    def fingerprint(self) -> str:
        record = {k: str(v) for k, v in asdict(self).items() if k not in ("out", "device")}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def quick_schedule() -> dict[str, Any]:
    """The stitch schedule of the quick profile (``stitch_ops/profiles/quick.yaml``), with the
    double-batched method's epochs."""
    import yaml

    from stitch_ops.stitching.train import epochs_of

    profile = yaml.safe_load((Path(__file__).parents[1] / "profiles" / "quick.yaml").read_text())
    section = profile.get("stitching", {})
    schedule = {"max_positions": section.get("max_positions", 6), **section.get("training", {})}
    if "epochs" in schedule:
        schedule["epochs"] = epochs_of(schedule["epochs"], StitchMethod.DOUBLE_BATCHED)
    return schedule


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
    return NnUNetModel(network, own.plans, own.dataset_json, own.configuration, None, description, spec)


def _score(models: dict[str, NnUNetModel], preprocessed: Any, labels: Path, cases: list[str], scratch: Path,
           device: str) -> dict[str, tuple[float, float]]:
    from stitch_ops.stitching.pipeline import score_on_validation

    scores = {}
    for name, model in models.items():
        frame = score_on_validation(model, preprocessed, labels, scratch / name, device, pair="task",
                                    test_party="val", approach=Approach.STITCH, trained_on="task", fold=0, cases=cases)
        scores[name] = (float(frame["dice"].mean()), float(frame["hd95"].mean()))
    shutil.rmtree(scratch, ignore_errors=True)
    return scores


def run(task: StitchTask, progress: bool = True) -> dict[str, Any]:
    """Run ``task`` (see the module docstring); returns the summary also written to
    ``out/summary.json`` and exports the stitch-ensemble to ``out/bundle`` (+ ``.zip``)."""
    from stitch_ops.bundle.export import ExportInfo, export_bundle
    from stitch_ops.evaluation.selection import select_position
    from stitch_ops.stitching import PreprocessedImages, TwoModelEnsemble, extract_stitch_ensemble
    from stitch_ops.stitching.network import load_stitched_network
    from stitch_ops.stitching.pipeline import NETWORK_FILE, evaluated_positions, score_positions, train_stitch_network
    from stitch_ops.stitching.train import StitchTrainingConfig

    try:
        config = StitchTrainingConfig(method=task.method, epochs=task.epochs,
                                      iterations_per_epoch=task.iterations_per_epoch, batch_size=task.batch_size,
                                      lr=task.lr, seed=task.seed)
    except ValueError as err:
        raise UserError(f"bad stitch schedule: {err}") from None
    if task.max_positions is not None and task.max_positions < 1:
        raise UserError(f"--max-positions must be >= 1, got {task.max_positions}")
    own = _open(task.own, task.own_fold, "own", task.trust)
    other = _open(task.other, task.other_fold, "other", task.trust)
    names = f"own model {task.own} and other model {task.other}"
    check_compatible(own, other, str(task.own), str(task.other))
    cases = check_images(own, task.images, names, progress)
    val_cases: list[str] = []
    if task.labels is not None:
        if not task.labels.is_dir():
            raise FileNotFoundError(f"no labels folder at {task.labels}")
        ending = own.dataset_json["file_ending"]
        val_cases = sorted(c for c in cases if (task.labels / f"{c}{ending}").is_file())
        if not val_cases:
            raise FileNotFoundError(f"no label in {task.labels} is named like an image case of {task.images} "
                                    f"({{case}}{ending}, e.g. {next(iter(cases))}{ending})")

    out, work = task.out, task.out / "work"
    marker = out / "task.json"
    if marker.is_file() and read_json(marker).get("fingerprint") != task.fingerprint():
        raise UserError(f"{out} holds a stitch run with other settings ({marker}); choose another --out or "
                         f"delete it to start over")
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": task.fingerprint(), **{k: str(v) for k, v in asdict(task).items()}})

    configuration = own.plans["configurations"][own.configuration]
    folder = _preprocess_to_folder(own, task.images, sorted(cases), work / "preprocessed", progress)
    network_dir = work / "network"
    if (network_dir / NETWORK_FILE).is_file():
        logger.info("stitches already trained: %s", network_dir / NETWORK_FILE)
        network = load_stitched_network(network_dir / NETWORK_FILE, own.network, other.network,
                                        retrain=f"delete {network_dir} and run the same command again to train "
                                                f"the stitches anew")
    else:
        network, _ = train_stitch_network(own, other, PreprocessedImages(folder), configuration["patch_size"], config,
                                          network_dir, progress)
    num_matches = len(network.matches)

    positions_file = out / "positions.csv"
    summary: dict[str, Any] = {"matches": num_matches, "method": task.method, "images": len(cases),
                               "validation_cases": len(val_cases)}
    if task.labels is not None:
        from stitch_ops.nnunet.predict import preprocess_cases

        preprocessed = preprocess_cases(own, task.images, val_cases, progress)
        scratch = work / "scoring"
        if positions_file.is_file():
            positions = pd.read_csv(positions_file)
        else:
            evaluated = evaluated_positions(num_matches, task.max_positions)
            logger.info("scoring the stitch-ensembles at %d positions on %d labeled image(s)", len(evaluated),
                        len(val_cases))
            scored = score_positions(network, evaluated, own, preprocessed, task.labels, scratch / "positions",
                                     task.device, pair="task", test_party="val", approach=Approach.STITCH,
                                     trained_on="task", fold=0, cases=val_cases)
            shutil.rmtree(scratch, ignore_errors=True)
            rows = [{"k": k, "relative_position": k / num_matches, "node_a": network.matches[k].node_a,
                     "node_b": network.matches[k].node_b, "dice": float(scored[k]["dice"].mean()),
                     "hd95": float(scored[k]["hd95"].mean())} for k in evaluated]
            positions = pd.DataFrame(rows)
            positions["selected"] = positions["k"] == select_position(positions, "current_fold")
            write_table(positions_file, positions)
        k = int(positions.loc[positions["selected"], "k"].iloc[0])
        summary["selection"] = "strategy 1: lowest mean rank of Dice and HD95 on the labeled images"
        summary["positions_scored"] = len(positions)
        baselines = _score({"own": own, "other": _as_model(other.network, own, "other", None),
                            "plain ensemble": _as_model(TwoModelEnsemble(own.network, other.network), own,
                                                        "plain ensemble", None)},
                           preprocessed, task.labels, val_cases, scratch, task.device)
        chosen = positions.loc[positions["k"] == k].iloc[0]
        summary["validation"] = {name: {"dice": d, "hd95": h} for name, (d, h) in baselines.items()}
        summary["validation"]["stitch-ensemble"] = {"dice": float(chosen["dice"]), "hd95": float(chosen["hd95"])}
    else:
        from stitch_ops.evaluation.selection import read_rule_of_thumb
        from stitch_ops.graph.matching import last_merge_match

        rule = read_rule_of_thumb(task.rule_of_thumb)
        summary["last_merge"] = last_merge_match(network.graph_a, network.matches)
        k = rule.position(num_matches, summary["last_merge"])
        summary["from_last_merge"] = k - summary["last_merge"]
        summary["selection"] = (f"strategy 3 (no --labels): the rule-of-thumb position, {rule.from_last_merge:+d} "
                                f"matches from the last skip concatenation, not validated on your data "
                                f"(measured on: {rule.source})")
        summary["positions_scored"] = 0
    summary["k"] = k
    summary["relative_position"] = k / num_matches
    summary["match"] = [network.matches[k].node_a, network.matches[k].node_b]

    ensemble = extract_stitch_ensemble(network, k)
    model = _as_model(ensemble, own, f"stitch-ensemble k={k} of {own.description} and {other.description}",
                      {"kind": "stitch_ensemble", "ensemble": ensemble.description.to_dict()})
    metrics = {f"val/{name}/{metric}": value for name, scores in summary.get("validation", {}).items()
               for metric, value in scores.items()}
    info = ExportInfo(approach=Approach.STITCH.value, trained_on=f"stitches trained on {len(cases)} unlabeled images of the "
                                                    f"stitching institution ({task.method})",
                      eval_metrics=metrics, notes=(f"position k={k} of {num_matches} matches; {summary['selection']}",))
    export_bundle(model, out / "bundle", info)
    summary["bundle"] = str(out / "bundle")
    write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the table ``stitch-ops stitch`` prints."""
    lines = [f"matches: {summary['matches']}; positions scored: {summary['positions_scored']}; chosen k = "
             f"{summary['k']} ({summary['relative_position']:.2f} of the matches: {summary['match'][0]} / "
             f"{summary['match'][1]})", f"selection: {summary['selection']}"]
    if "validation" in summary:
        lines += [f"validation on {summary['validation_cases']} labeled image(s):",
                  f"  {'model':<16} {'Dice':>8} {'HD95':>8}"]
        lines += [f"  {name:<16} {s['dice']:>8.4f} {s['hd95']:>8.2f}" for name, s in summary["validation"].items()]
    else:
        lines.append("no validation (pass --labels to score positions and compare with own, other and the "
                     "plain ensemble)")
    lines.append(f"stitch-ensemble bundle: {summary['bundle']} (+ .zip)")
    return "\n".join(lines)
