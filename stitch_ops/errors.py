"""Errors the user can fix, and turning library errors on user input into them.

A :class:`UserError` means the *input* is wrong — a path, a file, a name, a value in
``params.yaml`` — not the code. Every command (``stitch-ops ...`` and ``python -m
stitch_ops.<stage>``) prints its message as one line and exits with status 2, with no
traceback (``--debug`` shows it); see :func:`stitch_ops.cli_common.report_errors`. So the
message must say what is wrong and how to fix it, e.g.::

    no model folder at models/polyp/local/a/fold_0/export; run `dvc repro train@polyp-a-0` first

Each part of the package raises its own subclass (``ConfigError``, ``DatasetError``,
``ModelError``, ``BundleError``, ...). Errors that libraries raise while reading a file the
user gave us (PIL, nibabel, SimpleITK, ``torch.load``, ``json``) are turned into an
:class:`InputFileError` naming the file, right where it is read: :func:`reading`.

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_STATUS = 2  # what argparse uses for a bad command line


class UserError(ValueError):
    """Bad input the user can fix; the message says what is wrong and how to fix it.

    A ``ValueError`` so that code written before this hierarchy (``except ValueError``)
    still sees it.
    """


class InputFileError(UserError):
    """A file or folder given to a command (or made by an earlier stage) is missing,
    of the wrong kind, or cannot be read."""


class UnknownNameError(UserError):
    """A name (pair, party, approach, fold, profile, ...) that is not one of the known ones."""


def one_line(message: object) -> str:
    """``message`` as one line: line breaks of multi-line library messages become ``; ``."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) or type(message).__name__


def describe(err: BaseException, limit: int = 200) -> str:
    """``Type: message`` of a library error, on one line and at most ``limit`` characters."""
    text = one_line(err)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


@contextmanager
def reading(path: Path | str, what: str, fix: str) -> Iterator[None]:
    """Read ``path`` inside this block; any failure becomes an :class:`InputFileError`
    that names the file, what it should have been and how to fix it.

    Libraries fail on a corrupt file in many ways (``PIL.UnidentifiedImageError``,
    nibabel's ``ImageFileError``, SimpleITK's ``RuntimeError``, ``torch.load``'s
    ``UnpicklingError``/``RuntimeError``/``EOFError``, ``json.JSONDecodeError``), so the
    block catches every ``Exception``: keep it to the read itself.

    Example::

        with reading(path, "PNG mask", "re-export the masks as 8-bit PNG"):
            mask = np.asarray(Image.open(path))

    Args:
        path: the file (or folder) being read.
        what: what it should be, e.g. ``"nnU-Net dataset.json"``.
        fix: how the user can fix it, e.g. ``"rerun `dvc repro split@polyp`"``.
    """
    try:
        yield
    except UserError:
        raise
    except (FileNotFoundError, NotADirectoryError) as err:
        raise InputFileError(f"no {what} at {path}; {fix}") from err
    except IsADirectoryError as err:
        raise InputFileError(f"{path} is a folder, expected a {what}; {fix}") from err
    except Exception as err:  # noqa: BLE001 - see the docstring: the block is one read
        raise InputFileError(f"cannot read {path} as a {what} ({describe(err)}); {fix}") from err
