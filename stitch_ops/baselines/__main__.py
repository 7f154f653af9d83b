"""``python -m stitch_ops.baselines``: the baseline approaches' stages of ``dvc.yaml``: fine-tuning
(with the other party's plans, and its learning-rate sweep), ensembles, federated learning (with
the joint plans) and the pooled-data model; the subcommands below say what each does.

Every command that makes a model also predicts both parties' test sets and scores them
(``metrics/``, the model's MLflow run), as ``python -m stitch_ops.evaluation`` would.

Each subcommand is defined, and run by its DVC stage, in its own module
``stitch_ops.stages.<stage>`` (so a stage's code deps are what it runs); the subcommands are
those of the approach plug-ins (:mod:`stitch_ops.stages.plugin`), in the approach table's order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stitch_ops.stages.command import package_parser, run_package
from stitch_ops.stages.plugin import commands

COMMANDS = tuple(commands())


def build_parser() -> argparse.ArgumentParser:
    return package_parser("stitch-ops baselines", __doc__, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_package(build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
