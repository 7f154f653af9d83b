"""The task commands: ``stitch-ops stitch`` and ``stitch-ops predict``.

For people who share models (DESIGN.md, "Two kinds of command"): they take models as a
user has them (this project's bundles, nnU-Net results folders, nnU-Net export zips) and
folders of images, and need no pipeline checkout or ``params.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stitch_ops.approaches import StitchMethod
from stitch_ops.cli_common import (
    MODEL_HELP,
    check_images_path,
    check_model_path,
    one_line_usage_errors,
    report_errors,
    setup_logging,
)
from stitch_ops.config import DEFAULT_PROFILE


def _fold(value: str) -> int | str:
    return value if value == "all" else int(value)


def _checked(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type`` that converts a value and refuses it, naming what was expected, when
    it does not convert or ``accept`` says no."""
    def parse(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
        if not accept(number):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


_positive_int = _checked(int, lambda n: n >= 1, "a whole number >= 1")
_positive_float = _checked(float, lambda n: n > 0, "a number > 0")
_share = _checked(float, lambda n: 0 < n < 1, "a share between 0 and 1 (exclusive)")


def _with_task_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options both task commands share (device, trust, overwrite, progress, logging, tracebacks)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files of the same name in --out (other files there are always kept)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--trust", action="store_true",
                        help="allow plans naming classes outside nnU-Net's architectures and torch's "
                             "layers (their code runs): only for a model from a source you trust")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) and library messages "
                                                                      "on stderr; default: warnings only")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return one_line_usage_errors(parser)


def profile_schedule(profile: str) -> dict[str, Any]:
    """The stitch schedule of a profile (``stitch_ops/profiles/<profile>.yaml``): ``epochs``,
    ``iterations_per_epoch``, ``batch_size``, ``lr``, ``max_positions``, each where the profile sets it."""
    import yaml

    section = yaml.safe_load((Path(__file__).parent / "profiles" / f"{profile}.yaml").read_text()).get("stitching", {})
    return {"max_positions": section.get("max_positions"), **section.get("training", {})}


SCHEDULE_OPTIONS = {"epochs": 10, "iterations_per_epoch": 100, "batch_size": 4, "lr": 1e-3, "max_positions": None}
"""The schedule options of ``stitch-ops stitch`` with the values used where a profile sets none."""


def stitch_schedules() -> tuple[dict[str, Any], dict[str, Any]]:
    """The default schedule (the default profile's) and the ``--quick`` trial's (the smoke profile's);
    ``epochs`` may map each method to its epochs (:func:`for_method`)."""
    default = {**SCHEDULE_OPTIONS, **{k: v for k, v in profile_schedule(DEFAULT_PROFILE).items() if k in SCHEDULE_OPTIONS}}
    trial = {**default, **{k: v for k, v in profile_schedule("smoke").items() if k in SCHEDULE_OPTIONS}}
    return default, trial


def for_method(value: Any, method: str) -> Any:
    """A schedule value for ``method``: the value, or its entry when it maps methods to values
    (``stitching.training.epochs``; :func:`stitch_ops.stitching.train.epochs_of`, without
    importing torch)."""
    return value[method] if isinstance(value, dict) else value


def _shown(value: Any) -> str:
    if value is None:
        return "every position"
    if isinstance(value, dict):
        return ", ".join(f"{v} {k}" for k, v in value.items())
    return str(value)


def stitch_parser() -> argparse.ArgumentParser:
    default, trial = stitch_schedules()

    def shown(key: str) -> str:
        return f"default: {_shown(default[key])}; with --quick: {_shown(trial[key])}"

    parser = argparse.ArgumentParser(
        prog="stitch-ops stitch",
        description="Stitch your own nnU-Net with another party's model, training the stitches on your own "
                    "images; with --labels, choose the stitch position on a held-out share of your labelled "
                    "images and compare own, other, the plain ensemble and the stitch-ensemble there; export the "
                    "stitch-ensemble as a MONAI bundle. The schedule defaults are the quick profile's; --quick is "
                    "a short trial run (the smoke profile's schedule) to check inputs and the whole path, whose "
                    "numbers mean little. Results go to stdout, warnings to stderr (-v: progress too).")
    parser.add_argument("--own", type=Path, required=True, help=f"your model: {MODEL_HELP}")
    parser.add_argument("--other", type=Path, required=True, help="the model you received (same forms)")
    parser.add_argument("--images", type=Path, required=True,
                        help="your images, nnU-Net naming {case}_0000.png|.nii.gz")
    parser.add_argument("--labels", type=Path,
                        help="labels {case}.png|.nii.gz for some of the images: a seeded share of those (--holdout) "
                             "is held out of stitch training, positions are scored on it (strategy 1) and the "
                             "models compared; without, the rule-of-thumb position (selection strategy 3) is used")
    parser.add_argument("--holdout", type=_share, default=0.5,
                        help="share of the labelled images held out for selection and comparison (default: "
                             "%(default)s)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (resumable; files in it that stitch-ops did not write are kept)")
    parser.add_argument("--quick", action="store_true",
                        help="a short trial run: the smoke profile's schedule (options given explicitly still win)")
    parser.add_argument("--method", choices=[m.value for m in StitchMethod], default=StitchMethod.DOUBLE_BATCHED.value,
                        help="how the stitches are trained (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, help=f"stitch training epochs ({shown('epochs')})")
    parser.add_argument("--iterations-per-epoch", type=_positive_int,
                        help=f"optimiser steps per epoch ({shown('iterations_per_epoch')})")
    parser.add_argument("--batch-size", type=_positive_int, help=f"images per batch ({shown('batch_size')})")
    parser.add_argument("--lr", type=_positive_float, help=f"AdamW learning rate, cosine to 0 ({shown('lr')})")
    parser.add_argument("--max-positions", type=_positive_int,
                        help="positions scored with --labels, evenly spread; 1: the rule-of-thumb position "
                             f"({shown('max_positions')})")
    parser.add_argument("--rule-of-thumb", type=Path, metavar="SELECTION_JSON",
                        help="strategy 3's position (matches after the last skip concatenation), used without "
                             "--labels and by --max-positions 1: from a pipeline run's "
                             "metrics/<pair>/stitch/<slug>/fold_0/selection.json (default: the one this package "
                             "ships, measured on the quick profile)")
    parser.add_argument("--own-fold", type=_fold, help="the fold of a multi-fold own model")
    parser.add_argument("--other-fold", type=_fold, help="the fold of a multi-fold other model")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the held-out share and the stitch training (default: %(default)s)")
    parser.add_argument("--threads", type=_positive_int,
                        help=f"torch threads (default: the cores this process may use, {_cores()})")
    parser.add_argument("--name", help="the bundle's name (default: generated)")
    parser.add_argument("--authors", help="the bundle's authors (default: 'the exporting institution')")
    parser.add_argument("--description", help="the bundle's description (default: generated from both parents)")
    return _with_task_options(parser)


def _cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup (container) CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Library output (nnU-Net prints to stdout) sent to stderr with -v, else dropped: stdout
    holds only the command's result."""
    with contextlib.ExitStack() as stack:
        sink = sys.stderr if verbose else stack.enter_context(open(os.devnull, "w"))
        stack.enter_context(contextlib.redirect_stdout(sink))
        yield


def stitch_main(argv: Sequence[str] | None = None) -> int:
    # OpenMP reads this once, when torch loads it: waiting threads sleep instead of spinning
    # where other processes share the cores (as `stitch-ops repro` runs the pipeline's stages)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = stitch_parser().parse_args(argv)
    setup_logging(args.verbose, default_level=logging.WARNING)
    default, trial = stitch_schedules()
    schedule = {key: getattr(args, key) if getattr(args, key) is not None
                else for_method((trial if args.quick else default)[key], args.method) for key in SCHEDULE_OPTIONS}

    def action() -> None:
        from stitch_ops.outputs import check_out_folder

        for option, path in (("--own", args.own), ("--other", args.other)):
            check_model_path(path, option)
        check_images_path(args.images, "--images")
        if args.labels is not None and not args.labels.is_dir():
            raise FileNotFoundError(f"no labels folder at {args.labels} (--labels)")
        if args.rule_of_thumb is not None and not args.rule_of_thumb.is_file():
            raise FileNotFoundError(f"no selection.json at {args.rule_of_thumb} (--rule-of-thumb)")
        check_out_folder(args.out, {"--images": args.images, "--labels": args.labels, "--own": args.own,
                                    "--other": args.other})
        from stitch_ops.stitch_task import StitchTask, format_summary, run

        task = StitchTask(own=args.own, other=args.other, images=args.images, out=args.out, labels=args.labels,
                          method=args.method, **schedule, rule_of_thumb=args.rule_of_thumb, own_fold=args.own_fold, other_fold=args.other_fold,
                          seed=args.seed, holdout=args.holdout, device=args.device, trust=args.trust,
                          threads=args.threads or _cores(), overwrite=args.overwrite, name=args.name,
                          authors=args.authors, description=args.description)
        with _quiet(args.verbose):
            summary = run(task, progress=args.progress)
        print(format_summary(summary))

    return report_errors("stitch-ops stitch", action, debug=args.debug)


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops predict",
                                     description="Segment a folder of images with any model, through "
                                                 "nnU-Net's predictor (sliding window, the model's plans). The "
                                                 "segmentations are written beside any files --out holds.")
    parser.add_argument("--model", type=Path, required=True, help=f"{MODEL_HELP}, or a stitch-ensemble bundle")
    parser.add_argument("--input", type=Path, required=True, help="images named {case}_0000.png|.nii.gz")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the segmentations {case}.png|.nii.gz (not inside --input)")
    parser.add_argument("--fold", type=_fold, help="one fold (default: every fold present, averaged as nnU-Net does)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write {case}.npz probabilities (+ {case}.pkl, nnU-Net's properties)")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (slower)")
    return _with_task_options(parser)


def predicted_names(cases: Sequence[str], file_ending: str, save_probabilities: bool) -> list[str]:
    """The files nnU-Net's export writes for ``cases``."""
    extra = (".npz", ".pkl") if save_probabilities else ()
    return [f"{case}{ending}" for case in cases for ending in (file_ending, *extra)]


def predict(model: Path, images: Path, out: Path, *, fold: int | str | None = None, save_probabilities: bool = False,
            mirroring: bool = False, device: str = "auto", trust: bool = False, progress: bool = True,
            overwrite: bool = False) -> list[Path]:
    """Segment every case of ``images`` with ``model`` (any source) into ``out``, beside the
    files ``out`` holds (same-named ones refused unless ``overwrite``); each file appears
    whole. Returns the files written.

    Raises:
        OutputExistsError: ``out`` is a file, is or lies inside ``images``, or holds a file of a
            name this would write (without ``overwrite``); checked before any prediction.
    """
    from stitch_ops.outputs import check_out_folder, files_beside, refuse_existing

    check_model_path(model, "--model")
    check_images_path(images, "--input")
    check_out_folder(out, {"--input": images, "--model": model})
    from stitch_ops.bundle.sources import open_model
    from stitch_ops.nnunet.predict import list_cases, predict_folder

    opened = open_model(model, fold, trusted=trust)
    cases = list_cases(images, opened.dataset_json["file_ending"])
    names = predicted_names(list(cases), opened.dataset_json["file_ending"], save_probabilities)
    refuse_existing(out, names, overwrite)
    with files_beside(out, overwrite=overwrite) as staging:
        predict_folder(opened, images, staging, save_probabilities=save_probabilities, device=device,
                       mirroring=mirroring and opened.mirroring_axes is not None, progress=progress)
    return [out / name for name in names if (out / name).is_file()]


def predict_main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = predict_parser().parse_args(argv)
    setup_logging(args.verbose, default_level=logging.WARNING)

    def action() -> None:
        with _quiet(args.verbose):
            written = predict(args.model, args.input, args.out, fold=args.fold,
                              save_probabilities=args.save_probabilities, mirroring=args.mirroring,
                              device=args.device, trust=args.trust, progress=args.progress, overwrite=args.overwrite)
        print(f"{args.out}: {len(written)} file(s) written")

    return report_errors("stitch-ops predict", action, debug=args.debug)
