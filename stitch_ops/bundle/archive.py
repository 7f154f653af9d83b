"""Zip archives from another party, extracted without trusting their entry names.

A zip entry named ``../../.bashrc`` or ``/etc/cron.d/x`` (zip-slip), or stored as a symbolic
link, could write or expose files outside the folder it is extracted into. Every entry is
checked before anything is written; one bad entry refuses the whole archive.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from stitch_ops.errors import InputFileError, UserError

__all__ = ["UnsafeArchiveError", "check_links", "safe_extract"]


class UnsafeArchiveError(UserError):
    """An archive or folder would place or expose files outside its own folder."""


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` after checking every entry.

    Raises:
        UnsafeArchiveError: an entry is a symbolic link, absolute, or escapes ``target``.
        ValueError: ``archive`` is not a zip file.
    """
    archive, target = Path(archive), Path(target)
    if not zipfile.is_zipfile(archive):
        raise InputFileError(f"{archive} is not a zip archive")
    root = target.resolve()
    with zipfile.ZipFile(archive) as handle:
        for info in handle.infolist():
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(f"{archive}: entry '{info.filename}' is a symbolic link; refused "
                                         f"(it could point outside the extracted folder)")
            escapes = name.is_absolute() or ".." in name.parts or ":" in str(name)
            if escapes or not (root / name).resolve().is_relative_to(root):
                raise UnsafeArchiveError(f"{archive}: entry '{info.filename}' would be written outside the "
                                         f"target folder (zip-slip); refused")
        target.mkdir(parents=True, exist_ok=True)
        handle.extractall(target)
    return target


def check_links(folder: Path) -> None:
    """Refuse a folder holding a symbolic link that points outside it.

    Raises:
        UnsafeArchiveError: naming the link and where it points.
    """
    root = Path(folder).resolve()
    for path in Path(folder).rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise UnsafeArchiveError(f"{path} is a symbolic link to {path.resolve()}, outside {folder}; refused")
