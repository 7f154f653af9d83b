"""``python -m stitch_ops.stitching {train,select,reference,strategies,rq1}``: the stitching stages
of ``dvc.yaml``, as one command for people. Each subcommand is defined, and run by its DVC stage,
in its own module ``stitch_ops.stages.<stage>`` (so a stage's code deps are what it runs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stitch_ops.stages import rq1, stitch_reference, stitch_select, stitch_strategies, stitch_train
from stitch_ops.stages.command import package_parser, run_package

COMMANDS = (stitch_train.COMMAND, stitch_select.COMMAND, stitch_reference.COMMAND, stitch_strategies.COMMAND,
            rq1.COMMAND)


def build_parser() -> argparse.ArgumentParser:
    return package_parser("stitch-ops stitching", __doc__, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_package(build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
