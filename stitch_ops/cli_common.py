"""Pieces every stage's command line shares: ``--params``, ``--no-progress``, ``-v``,
``--debug``, logging, and one way to fail on bad input.

Every command reports bad input the same way (DESIGN.md, house rules): one line on
stderr, ``<prog>: error: <what is wrong; how to fix it>``, exit status 2, no traceback
(``--debug`` shows it). Command lines built with :func:`run_command` (or run under
:func:`report_errors`) get that behaviour, argparse's own errors included.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from stitch_ops.config import DEFAULT_PARAMS, Params, load_params
from stitch_ops.errors import EXIT_STATUS, UserError, one_line

# Errors of the operating system about a path are bad input too (a wrong path, a file an
# earlier stage did not make); everything else that escapes a command is a bug.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def common_options() -> argparse.ArgumentParser:
    """Parent parser with the options of every stage command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="parameters file (default: %(default)s)")
    # one progress bar per long stage where a person watches (a terminal), none in logs
    parent.add_argument("--progress", dest="progress", action="store_true", default=sys.stderr.isatty(),
                        help="show progress bars (default: when stderr is a terminal)")
    parent.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars (e.g. in CI logs)")
    parent.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parent.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback (for bug reports)")
    return parent


def setup_logging(verbose: bool, default_level: int = logging.INFO) -> None:
    """Log to stderr: DEBUG with ``verbose``, else ``default_level`` (the stage commands: INFO,
    for the pipeline's logs; the task commands: WARNING, so a person sees results, not logs)."""
    logging.basicConfig(level=logging.DEBUG if verbose else default_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose and default_level > logging.INFO:
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)  # libraries' notes to their developers
        warnings.filterwarnings("ignore", category=FutureWarning)
    for noisy in ("alembic", "mlflow", "urllib3", "numexpr", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def error_message(err: BaseException) -> str:
    """The one line a user sees for ``err``."""
    if isinstance(err, OSError) and err.filename is not None:
        return (f"{err.strerror or type(err).__name__}: {err.filename}; check the path, or run the "
                f"stage that makes it first (`dvc repro`)")
    return one_line(err)


def fail(prog: str, message: str) -> int:
    """Print ``<prog>: error: <message>`` as one line on stderr; the exit status of bad input."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_STATUS


def report_errors(prog: str, action: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``action``; bad input (:class:`~stitch_ops.errors.UserError`, a missing file)
    becomes one line on stderr and exit status 2, or its traceback with ``debug``."""
    try:
        return int(action() or 0)
    except (UserError, *PATH_ERRORS) as err:
        if debug:
            raise
        return fail(prog, error_message(err))


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.exit(EXIT_STATUS, f"{parser.prog}: error: {one_line(message)} (see `{parser.prog} --help`)\n")


def one_line_usage_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` and all its subcommands report a bad command line (unknown choice,
    missing option) in one line, naming the valid choices, instead of usage + error."""
    parser.error = functools.partial(_one_line_error, parser)  # type: ignore[method-assign]
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                one_line_usage_errors(sub)
    return parser


def _command_prog(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    return f"{parser.prog} {args.command}" if has_subcommands else parser.prog


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                handlers: dict[str, Callable[[argparse.Namespace, Params | None], None]],
                without_params: Sequence[str] = ()) -> int:
    """Parse ``argv``, load the params (except for ``without_params`` commands, which work
    outside a pipeline checkout), run the chosen subcommand; bad input exits 2 with one
    clear line instead of a traceback (see :func:`report_errors`)."""
    args = one_line_usage_errors(parser).parse_args(argv)
    setup_logging(args.verbose)

    def action() -> None:
        params = None if args.command in without_params else load_params(args.params)
        handlers[args.command](args, params)

    return report_errors(_command_prog(parser, args), action, debug=args.debug)


MODEL_HELP = ("a bundle exported by stitch-ops (folder or .zip), an nnU-Net results folder "
              "<Trainer>__<Plans>__<configuration>, or a zip from nnUNetv2_export_model_to_zip")


def check_model_path(path: Path, option: str) -> None:
    """Cheap checks of a model path before anything heavy is imported, with the fix for the
    usual slips (a ``fold_k`` folder instead of its results folder)."""
    if not path.exists():
        raise UserError(f"no model at {path}: expected {MODEL_HELP}")
    if path.is_dir() and not any(path.iterdir()):
        raise UserError(f"{path} is not a model: expected {MODEL_HELP} (it is an empty folder)")
    if path.is_file():
        import zipfile

        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is a file but not a zip archive; expected {MODEL_HELP}")
    if path.is_dir() and re.fullmatch(r"fold_(\d+|all)", path.name) and (path.parent / "plans.json").is_file():
        fold = path.name[len("fold_"):]
        raise UserError(f"{option} {path} is one fold of an nnU-Net results folder: pass the parent folder "
                        f"{path.parent}" + (f" with {option}-fold {fold}" if option in ("--own", "--other")
                                            else f" with --fold {fold}"))


def check_images_path(path: Path, option: str) -> None:
    """An images folder that exists; a dataset root is answered with its ``imagesTr``."""
    if not path.exists():
        raise FileNotFoundError(f"no images folder at {path} ({option})")
    if not path.is_dir():
        raise UserError(f"{option} {path} is a file; pass the folder of images named {{case}}_0000.png|.nii.gz")
    if not any(path.glob("*_0000.*")):
        for sub in ("imagesTr", "imagesTs"):
            if (path / sub).is_dir():
                raise UserError(f"{option} {path} is an nnU-Net dataset, not a folder of images: pass {path / sub}")
