"""Writing stage outputs whole or not at all, and reading them back with clear errors.

DESIGN.md, "Outputs appear whole or not at all": a stage writes every folder and file it
produces next to its target (``<target>.partial-<pid>``) and swaps the complete result in
at the end, so a killed or failed stage never leaves something that a rerun, the next
stage or DVC would take for complete, and an earlier complete output stays in place until
the new one replaces it. A leftover ``<target>.partial*`` of a killed run is removed the
next time the same target is written.

Example::

    with output_dir(paths.predictions(approach, trained_on, fold) / "test_a") as tmp:
        write_segmentations(tmp)            # tmp is empty; the target is untouched so far
    # here the target holds exactly what was written to tmp

    write_json(metrics / "summary.json", summary)   # the same for a single file
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from stitch_ops.errors import InputFileError

logger = logging.getLogger(__name__)

PARTIAL = ".partial"


class CorruptFileError(InputFileError):
    """A file a stage reads exists but cannot be parsed (e.g. a truncated JSON)."""


def partial_path(target: Path) -> Path:
    """Where this process writes ``target`` before it is swapped in: ``<target>.partial-<pid>``."""
    return target.with_name(f"{target.name}{PARTIAL}-{os.getpid()}")


def _writer_pid(leftover: Path, target: Path) -> int | None:
    suffix = leftover.name[len(target.name) + len(PARTIAL):].lstrip("-").split(".")[0]
    return int(suffix) if suffix.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(target: Path) -> list[Path]:
    """Remove ``<target>.partial*`` left by killed runs (not those of a live writer); returns them."""
    removed = []
    for leftover in Path(target).parent.glob(f"{Path(target).name}{PARTIAL}*"):
        pid = _writer_pid(leftover, Path(target))
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        logger.info("removing %s, left by an interrupted run", leftover)
        _remove(leftover)
        removed.append(leftover)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or file system does not offer it; the caller then
    falls back to two renames (a window of microseconds with no target)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` (a folder or file, or nothing) with the complete ``new``, then
    delete the old one. ``new`` and ``target`` must be of the same kind."""
    if target.exists() and target.is_dir() != new.is_dir():
        kind = "a folder" if new.is_dir() else "a file"
        _remove(new)
        raise FileExistsError(f"{target} exists but is not {kind}; remove it or choose another output path")
    if not target.exists():
        os.replace(new, target)
    elif _exchange(new, target):
        _remove(new)  # after the exchange ``new`` names the old output
    elif new.is_dir():
        old = target.with_name(f"{new.name}.old")
        os.replace(target, old)
        os.replace(new, target)
        _remove(old)
    else:
        os.replace(new, target)  # atomic for files


@contextmanager
def output_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; when the block ends without error it
    replaces ``target`` whole, on error it is removed and ``target`` stays as it was.

    Example:
        >>> with output_dir(Path("out/fold_0")) as tmp:  # doctest: +SKIP
        ...     (tmp / "model.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = partial_path(target)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    swap_in(staging, target)


@contextmanager
def output_file(target: Path | str, *, required: bool = True) -> Iterator[Path]:
    """Yield a path beside ``target`` to write one file to; it replaces ``target`` when the
    block ends without error (``os.replace``, atomic), and is removed on error.

    ``required=False``: a block that wrote nothing leaves ``target`` as it was (for writers
    that may decide not to write, like nnU-Net's checkpointing on a non-zero rank)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = partial_path(target)
    try:
        yield staging
        if not staging.is_file():
            if not required:
                return
            raise FileNotFoundError(f"nothing was written to {staging} for {target}")
    except BaseException:
        _remove(staging)
        raise
    swap_in(staging, target)


def write_json(path: Path | str, content: Any, *, indent: int = 2, sort_keys: bool = False,
               ensure_ascii: bool = True) -> Path:
    """Write ``content`` as JSON (newline-terminated) to ``path``, whole or not at all."""
    text = json.dumps(content, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n"
    return write_text(path, text)


def write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, whole or not at all."""
    with output_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_json(path: Path | str, *, hint: str = "run the stage that makes it first (`dvc repro`)") -> Any:
    """Load a JSON file; a missing or unreadable one is an error that names it and ``hint``.

    Raises:
        InputFileError: there is no such file.
        CorruptFileError: it is not valid JSON (e.g. truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path} is missing; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); {hint}") from err


def write_png(path: Path | str, array: np.ndarray) -> Path:
    """Write a 2-D (``H W``) or RGB (``H W 3``) uint8 array as a PNG.

    Images are written by the thousand into a folder that :func:`output_dir` stages, so
    this writes in place; wrap a single PNG output in :func:`output_file`."""
    from PIL import Image

    Image.fromarray(np.asarray(array)).save(path, format="PNG")
    return Path(path)


def hard_link(source: Path | str, link: Path | str) -> bool:
    """Hard-link ``link`` to ``source``; False where the filesystem cannot (another device).

    Only for files nothing changes in place: every writer here swaps in a new file
    (:func:`output_file`), and DVC's cache files are read-only."""
    try:
        os.link(source, link)
    except OSError:
        return False
    return True


def copy_dir(source: Path | str, target: Path | str) -> Path:
    """Publish a copy of the folder ``source`` at ``target``, whole or not at all."""
    with output_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return Path(target)


@contextmanager
def scratch_dir(name: Path | str) -> Iterator[Path]:
    """A work folder at ``<name>.partial-<pid>``, deleted when the block ends (and, after a
    kill, at the next start): for intermediate files that are no stage's output."""
    name = Path(name)
    remove_leftovers(name)
    path = partial_path(name)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        _remove(path)


def write_table(path: Path | str, table: Any) -> Path:
    """Write a pandas ``DataFrame`` as CSV (no index column), whole or not at all."""
    with output_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


# ---------------------------------------------------------------- a user's own folders
#
# The task commands (``predict``, ``stitch``, ``bundle export``, ``data convert``) write into
# folders a person chose, which may hold that person's files. Those are never replaced whole
# (what :func:`output_dir` does to a stage's output, which DVC owns): the new files are written
# beside the existing ones, a file of the same name is refused unless the user says
# ``--overwrite``, and each new file still appears whole or not at all.


class OutputExistsError(InputFileError):
    """A command would overwrite a file it was not asked to, or write into its own input."""


def check_out_folder(out: Path | str, inputs: dict[str, Path | str | None] | None = None,
                     option: str = "--out") -> Path:
    """Refuse an output folder that is an existing file, or that is (or lies inside) one of
    ``inputs`` (``{option: path}``): a command must never write into what it reads.
    Cheap: call it before any heavy import or work. Returns ``out``.

    Raises:
        OutputExistsError: naming the option and the fix.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{option} {out} is an existing file; {option} names a folder: choose a new or "
                                f"existing folder")
    resolved = out.resolve()
    for name, source in (inputs or {}).items():
        if source is None:
            continue
        source = Path(source).resolve()
        if source.is_dir() and (resolved == source or source in resolved.parents):
            where = "is" if resolved == source else "lies inside"
            raise OutputExistsError(f"{option} {out} {where} {name} {source}: write the results to a folder "
                                    f"outside the input")
    return out


def existing_names(out: Path | str, names: list[str] | tuple[str, ...] | set[str]) -> list[str]:
    """The entries of ``names`` (relative paths) that already exist in ``out``, sorted."""
    return sorted(name for name in names if (Path(out) / name).exists())


def refuse_existing(out: Path | str, names: list[str] | tuple[str, ...] | set[str], overwrite: bool,
                    option: str = "--out") -> None:
    """Refuse to write ``names`` into ``out`` where a file of the same name exists, unless ``overwrite``.

    Raises:
        OutputExistsError: listing (some of) the clashing names and the two ways out.
    """
    clashes = [] if overwrite else existing_names(out, names)
    if clashes:
        shown = ", ".join(clashes[:5]) + (f" and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise OutputExistsError(f"{option} {out} already holds {len(clashes)} file(s) this command would write "
                                f"({shown}); choose another {option}, or pass --overwrite to replace them "
                                f"(other files in it are kept)")


def _files_under(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@contextmanager
def files_beside(target: Path | str, *, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a path (not yet created, named like ``target``) in a scratch folder beside
    ``target`` for a writer to create its output at; when the block ends without error, every
    file written there is moved into ``target`` (created if needed), beside the files
    ``target`` already holds, which are kept. A file of the same name is refused (before any
    file moves) unless ``overwrite``. On error, nothing in ``target`` changes.

    Every file appears whole (``os.replace``); nothing in ``target`` is ever deleted.

    Raises:
        OutputExistsError: ``target`` is a file, or holds a file of a written name.
    """
    target = Path(target)
    check_out_folder(target, option=option)
    target.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(target) as scratch:
        staging = scratch / target.name
        yield staging
        written = _files_under(staging) if staging.is_dir() else []
        refuse_existing(target, [p.as_posix() for p in written], overwrite, option)
        for relative in written:
            destination = target / relative
            if destination.is_dir() and not destination.is_symlink():
                raise OutputExistsError(f"{option} {target} holds a folder {relative}, where this command writes a "
                                        f"file; move it away or choose another {option}")
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, destination)
