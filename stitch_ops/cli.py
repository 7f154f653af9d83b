"""The ``stitch-ops`` command: task commands (``stitch``, ``predict``) for people who share
models, then one subcommand per stage of the data's journey.

``stitch-ops <stage> ...`` is the same as ``python -m stitch_ops.<stage> ...`` (which the
DVC stages call), so ``stitch-ops <stage> --help`` shows the stage's own options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pathlib import Path
from types import ModuleType

from stitch_ops import __version__
from stitch_ops.cli_common import one_line_usage_errors, report_errors
from stitch_ops.config import DEFAULT_PARAMS, ConfigError, apply_profile, profile_names

TASKS = {
    "stitch": "stitch your model with another party's on your own unlabeled images; export a bundle",
    "predict": "segment a folder of images with any model (bundle, nnU-Net results folder or zip)",
}
STAGES = {
    "data": "generate the synthetic two-party data, convert real datasets, split into folds",
    "nnunet": "plan/preprocess, train and predict nnU-Net models",
    "stitching": "train stitches between two basis models, score and select the position k",
    "evaluation": "Dice/HD95 per case on both parties' test sets, logged to MLflow",
    "baselines": "fine-tuning, ensembles, federated learning (Ray), merged data, learning-rate sweep",
    "bundle": "export trained MONAI bundles; verify a bundle received from another party",
    "tracking": "the MLflow UI on the project's store, opened on the runs table",
    "report": "the HTML/Markdown report per pair (tables, Wilcoxon/Holm, figures, the paper's findings)",
    "ablation": "how the stitches are trained, varied (least-squares start, longer schedules): ours, not the paper's",
    "code-digests": "record the code each stage of dvc.yaml runs (its first stage: a stage reruns when its record changes)",
}
MODULES = {"report": "stitch_ops.evaluation.report", "ablation": "stitch_ops.stitching.ablation",
           "code-digests": "stitch_ops.stages.code_digests"}
"""Commands whose module is not ``stitch_ops.<command>.__main__``."""


def command_module(command: str) -> ModuleType:
    """The module of a stage command: its ``main(argv)`` runs it, its ``build_parser()`` describes it."""
    return importlib.import_module(MODULES.get(command, f"stitch_ops.{command}.__main__"))


def _profile(argv: Sequence[str]) -> int:
    parser = one_line_usage_errors(argparse.ArgumentParser(
        prog="stitch-ops profile", description="Write a profile's values into params.yaml "
                                               "(comments kept); then run `dvc repro`."))
    parser.add_argument("name", choices=profile_names(), help="smoke: CI, minutes; quick: the default "
                        "demo (<= 20 min on 2 cores); paper: 5 folds, nnU-Net's schedule, for a GPU")
    parser.add_argument("--params", default=DEFAULT_PARAMS, type=Path)
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    args = parser.parse_args(argv)

    def action() -> None:
        if not args.params.is_file():
            raise ConfigError(f"no params file at {args.params.resolve()}; run from the repository root "
                              f"or pass --params")
        params = apply_profile(args.name, args.params)
        print(f"{args.params}: profile {params.profile} (folds {list(params.folds)}, "
              f"{params.nnunet.epochs} epochs x {params.nnunet.iterations_per_epoch} iterations)")

    return report_errors(parser.prog, action, debug=args.debug)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stitch-ops",
        description="Combine segmentation models trained on data that cannot be shared, by stitching "
                    "two nnU-Nets into an ensemble, and compare it with fine-tuning, ensembles, "
                    "federated learning and pooled data. The whole pipeline: `stitch-ops repro` (what `make "
                    "run` runs: `dvc repro`, independent stages side by side).")
    parser.add_argument("--version", action="version", version=f"stitch_ops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for task, summary in TASKS.items():  # task commands first: what people who share models run
        commands.add_parser(task, help=summary, add_help=False)
    for stage, summary in STAGES.items():
        commands.add_parser(stage, help=summary, add_help=False)
    commands.add_parser("profile", help="switch params.yaml to the smoke, quick or paper profile",
                        add_help=False)
    commands.add_parser("repro", help="the whole pipeline: dvc repro, independent stages side by side (what `make run` runs)",
                        add_help=False)
    commands.add_parser("dvc-yaml", help="write dvc.yaml from the stage registry (--check: fail if it is stale)",
                        add_help=False)
    args, rest = one_line_usage_errors(parser).parse_known_args(argv)
    if args.command == "profile":
        return _profile(rest)
    if args.command == "repro":
        from stitch_ops import repro

        return repro.main(rest)
    if args.command == "dvc-yaml":
        from stitch_ops.stages import render

        return render.main(rest)
    if args.command in TASKS:
        from stitch_ops import commands

        task_main = getattr(commands, f"{args.command}_main")
        return report_errors(f"stitch-ops {args.command}", lambda: task_main(rest), debug="--debug" in rest)
    # each stage's main reports its own errors; this catches what escapes one that does not
    stage_main = command_module(args.command).main
    return report_errors(f"stitch-ops {args.command}", lambda: stage_main(rest), debug="--debug" in rest)


if __name__ == "__main__":
    sys.exit(main())
