"""One stage's command line, runnable alone (the DVC stage's entry module) or as a subcommand.

A package's ``__main__`` that dispatches several subcommands imports, for the import walker
(:mod:`stitch_ops.stages.deps`), everything each of them runs, so every stage it serves would
depend on all of it. A :class:`StageCommand` lives in its own module,
``stitch_ops/stages/<stage>.py``: ``python -m stitch_ops.stages.<stage>`` runs only it, and the
package's ``__main__`` offers it as a subcommand under the same name, options and help
(``stitch-ops stitching train``), so there is one definition of each command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stitch_ops.cli_common import run_command
from stitch_ops.config import Params


@dataclass(frozen=True)
class StageCommand:
    """A stage's command line: ``prog`` (``stitch-ops stitching train``, its last word the
    subcommand), the one-line ``help``, the parent parsers that hold its ``options``, and the
    function that ``run``\\ s it on the parsed arguments and the loaded params."""

    prog: str
    help: str
    options: Callable[[], Sequence[argparse.ArgumentParser]]
    run: Callable[[argparse.Namespace, Params], None]

    @property
    def name(self) -> str:
        """The subcommand's name: the last word of ``prog``."""
        return self.prog.rpartition(" ")[2]

    def add_to(self, subcommands: argparse._SubParsersAction) -> None:
        """Offer this command as a subcommand of a package's command line."""
        subcommands.add_parser(self.name, parents=list(self.options()), help=self.help)

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.help, parents=list(self.options()))
        parser.set_defaults(command=self.name)
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run this command alone (``python -m stitch_ops.stages.<stage>``)."""
        return run_command(self.build_parser(), argv, {self.name: self.run})


def package_parser(prog: str, description: str | None, commands: Sequence[StageCommand]) -> argparse.ArgumentParser:
    """A package's command line (``stitch-ops stitching``) with ``commands`` as its subcommands."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.add_to(subcommands)
    return parser


def run_package(parser: argparse.ArgumentParser, commands: Sequence[StageCommand],
                argv: Sequence[str] | None) -> int:
    """Run the subcommand of ``parser`` that ``argv`` names."""
    return run_command(parser, argv, {command.name: command.run for command in commands})
