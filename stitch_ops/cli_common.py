"""Pieces every stage's command line shares: ``--params``, ``--no-progress``, ``-v``, logging."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stitch_ops.config import DEFAULT_PARAMS, ConfigError, Params, load_params


def common_options() -> argparse.ArgumentParser:
    """Parent parser with the options of every stage command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="parameters file (default: %(default)s)")
    parent.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars (e.g. in CI logs)")
    parent.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parent


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "urllib3", "numexpr", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                handlers: dict[str, Callable[[argparse.Namespace, Params | None], None]],
                without_params: Sequence[str] = ()) -> int:
    """Parse ``argv``, load the params (except for ``without_params`` commands, which work
    outside a pipeline checkout), run the chosen subcommand; user errors exit 2 with one
    clear line instead of a traceback."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        params = None if args.command in without_params else load_params(args.params)
        handlers[args.command](args, params)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if args.verbose:
            raise
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
