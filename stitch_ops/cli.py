"""The ``stitch-ops`` command: one subcommand per stage of the data's journey.

``stitch-ops <stage> ...`` is the same as ``python -m stitch_ops.<stage> ...`` (which the
DVC stages call), so ``stitch-ops <stage> --help`` shows the stage's own options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from stitch_ops import __version__
from stitch_ops.config import ConfigError, DEFAULT_PARAMS, apply_profile, profile_names

STAGES = {
    "data": "generate the synthetic two-party data, convert real datasets, split into folds",
    "nnunet": "plan/preprocess, train and predict nnU-Net models",
    "stitching": "train stitches between two basis models, score and select the position k",
    "evaluation": "Dice/HD95 per case on both parties' test sets, logged to MLflow",
    "baselines": "fine-tuning, ensembles, federated learning (Ray), merged data, learning-rate sweep",
    "bundle": "export trained MONAI bundles; verify a bundle received from another party",
    "tracking": "the MLflow UI on the project's store, opened on the runs table",
}


def _profile(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="stitch-ops profile",
                                     description="Write a profile's values into params.yaml "
                                                 "(comments kept); then run `dvc repro`.")
    parser.add_argument("name", choices=profile_names(), help="smoke: CI, minutes; quick: the default "
                        "demo (<= 20 min on 2 cores); paper: 5 folds, nnU-Net's schedule, for a GPU")
    parser.add_argument("--params", default=DEFAULT_PARAMS, type=lambda p: __import__("pathlib").Path(p))
    args = parser.parse_args(argv)
    try:
        params = apply_profile(args.name, args.params)
    except ConfigError as err:
        parser.error(str(err))
    print(f"{args.params}: profile {params.profile} (folds {list(params.folds)}, "
          f"{params.nnunet.epochs} epochs x {params.nnunet.iterations_per_epoch} iterations)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stitch-ops",
        description="Combine segmentation models trained on data that cannot be shared, by stitching "
                    "two nnU-Nets into an ensemble, and compare it with fine-tuning, ensembles, "
                    "federated learning and pooled data. The whole pipeline: `dvc repro`.")
    parser.add_argument("--version", action="version", version=f"stitch_ops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage, summary in STAGES.items():
        commands.add_parser(stage, help=summary, add_help=False)
    commands.add_parser("profile", help="switch params.yaml to the smoke, quick or paper profile",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "profile":
        return _profile(rest)
    return importlib.import_module(f"stitch_ops.{args.command}.__main__").main(rest)


if __name__ == "__main__":
    sys.exit(main())
