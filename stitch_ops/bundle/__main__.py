"""``python -m stitch_ops.bundle {export,verify}``: trained MONAI bundles in and out."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from stitch_ops.approaches import Approach
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import Params

logger = logging.getLogger("stitch_ops.bundle")


def export(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.bundle.export import export_pipeline_model

    target = export_pipeline_model(args.pair, args.approach, args.trained_on, args.fold, params)
    logger.info("trained bundle written to %s", target)


def verify(args: argparse.Namespace, params: Params | None) -> None:
    from stitch_ops.bundle.verify import verify_bundle

    report = verify_bundle(args.bundle, trust=args.trust)
    print(f"{report.path}: MONAI bundle '{report.metadata.get('name', '?')}' version "
          f"{report.metadata['version']}; configs {report.configs}; "
          f"{len(report.models)} model(s) load as plain weights"
          + (f"; trusted code: {report.code}" if report.code else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops bundle", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    exp = commands.add_parser("export", parents=[common],
                              help="write a trained bundle to exports/<pair>/<approach>_<party>_fold<k>")
    exp.add_argument("--pair", required=True)
    exp.add_argument("--approach", default=Approach.LOCAL.value, choices=[a.value for a in Approach])
    exp.add_argument("--trained-on", required=True)
    exp.add_argument("--fold", type=int, required=True, choices=range(5))
    ver = commands.add_parser("verify", parents=[common],
                              help="check a bundle received from someone else before using it")
    ver.add_argument("bundle", type=Path)
    ver.add_argument("--trust", action="store_true",
                     help="accept configs that run code outside stitch_ops/monai")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"export": export, "verify": verify},
                       without_params=("verify",))


if __name__ == "__main__":
    sys.exit(main())
