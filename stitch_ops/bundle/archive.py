"""Zip archives from another party, extracted without trusting their entry names.

A zip entry named ``../../.bashrc`` or ``/etc/cron.d/x`` (zip-slip), or stored as a symbolic
link, could write or expose files outside the folder it is extracted into. Every entry is
checked before anything is written; one bad entry refuses the whole archive.

Sizes are checked first too (:mod:`stitch_ops.limits`): the number of entries, each entry's
size and compression ratio, and their total, from the archive's directory; then each entry is
copied in chunks and stopped the moment it holds more than its header declared, so a lying
header cannot inflate past the limits either.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from stitch_ops.errors import InputFileError, UserError
from stitch_ops.limits import RATIO_FLOOR_BYTES, TooLargeError, limits

__all__ = ["UnsafeArchiveError", "check_links", "safe_extract"]

CHUNK_BYTES = 1024 * 1024


class UnsafeArchiveError(UserError):
    """An archive or folder would place or expose files outside its own folder."""


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` after checking every entry.

    Raises:
        UnsafeArchiveError: an entry is a symbolic link, absolute, or escapes ``target``.
        TooLargeError: too many entries, an entry too large or too compressed, or too much in all.
        InputFileError: ``archive`` is not a zip file.
    """
    archive, target = Path(archive), Path(target)
    if not zipfile.is_zipfile(archive):
        raise InputFileError(f"{archive} is not a zip archive")
    root = target.resolve()
    cap = limits()
    with zipfile.ZipFile(archive) as handle:
        entries = handle.infolist()
        if len(entries) > cap.max_entries:
            raise cap.refuse(f"{archive}: the number of entries", len(entries), "max_entries")
        total = 0
        for info in entries:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(f"{archive}: entry '{info.filename}' is a symbolic link; refused "
                                         f"(it could point outside the extracted folder)")
            escapes = name.is_absolute() or ".." in name.parts or ":" in str(name)
            if escapes or not (root / name).resolve().is_relative_to(root):
                raise UnsafeArchiveError(f"{archive}: entry '{info.filename}' would be written outside the "
                                         f"target folder (zip-slip); refused")
            if info.file_size > cap.max_file_bytes:
                raise cap.refuse(f"{archive}: entry '{info.filename}' unpacked", info.file_size, "max_file_bytes")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > RATIO_FLOOR_BYTES and ratio > cap.max_ratio:
                raise cap.refuse(f"{archive}: entry '{info.filename}' (a zip bomb?) has a compression ratio that",
                                 round(ratio), "max_ratio")
            total += info.file_size
            if total > cap.max_total_bytes:
                raise cap.refuse(f"{archive} unpacked", total, "max_total_bytes")
        target.mkdir(parents=True, exist_ok=True)
        for info in entries:
            try:
                _extract(handle, info, root, archive)
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                if isinstance(err, UserError):
                    raise
                raise InputFileError(f"{archive}: entry '{info.filename}' cannot be extracted ({err}); ask the "
                                     f"sender for a fresh copy") from None
    return target


def _extract(handle: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, archive: Path) -> None:
    """Copy one checked entry in chunks, never more bytes than its header declared."""
    path = root / info.filename.replace("\\", "/")
    if info.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with handle.open(info) as source, open(path, "wb") as sink:
        while chunk := source.read(CHUNK_BYTES):
            written += len(chunk)
            if written > info.file_size:
                raise TooLargeError(f"{archive}: entry '{info.filename}' holds more than the "
                                    f"{info.file_size} bytes its header declares; refused (a forged archive)")
            sink.write(chunk)


def check_links(folder: Path) -> None:
    """Refuse a folder holding a symbolic link that points outside it.

    Raises:
        UnsafeArchiveError: naming the link and where it points.
    """
    root = Path(folder).resolve()
    for path in Path(folder).rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise UnsafeArchiveError(f"{path} is a symbolic link to {path.resolve()}, outside {folder}; refused")
