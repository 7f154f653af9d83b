"""``manifest.sha256``: the SHA-256 of every file of a bundle, in ``sha256sum`` format.

What it is: a checksum list. It shows that a bundle arrived as it was exported (no byte
changed in transit, no file added or lost), and :func:`check_manifest` runs wherever a
bundle's model is opened (:func:`stitch_ops.bundle.sources.open_model`), not only in
``stitch-ops bundle verify``. What it is not: a signature. Anyone who edits a bundle can
write a new manifest for it; only the checks on the content (weights as data, allowed
architectures and config targets, sizes) protect against a sender who means harm.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from stitch_ops.errors import UserError
from stitch_ops.limits import limits

__all__ = ["MANIFEST", "ManifestError", "check_manifest", "sha256", "write_manifest"]

MANIFEST = "manifest.sha256"
CHUNK_BYTES = 1024 * 1024
_LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")


class ManifestError(UserError):
    """A bundle's files do not match its manifest, or the manifest itself is malformed."""


def sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """``manifest.sha256`` (``sha256sum`` format) over every other file of ``folder``."""
    folder = Path(folder)
    entries = [f"{sha256(path)}  {path.relative_to(folder).as_posix()}"
               for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)]
    (folder / MANIFEST).write_text("\n".join(entries) + "\n")
    return folder / MANIFEST


def _listed(path: Path) -> dict[str, str]:
    """The manifest's ``name -> digest``, every name a plain relative path inside ``path``."""
    manifest = path / MANIFEST
    cap = limits()
    if manifest.stat().st_size > cap.max_json_bytes:
        raise cap.refuse(str(manifest), manifest.stat().st_size, "max_json_bytes")
    listed: dict[str, str] = {}
    root = path.resolve()
    for number, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        found = _LINE.match(line)
        if found is None:
            raise ManifestError(f"{manifest}, line {number}: expected '<64 hex digits>  <relative path>', got "
                                f"{line[:80]!r}; ask the sender for a fresh copy")
        digest, name = found.groups()
        parts = PurePosixPath(name).parts
        inside = (not name.startswith("/") and "\\" not in name and ":" not in name and ".." not in parts
                  and "." not in parts and (root / name).resolve().is_relative_to(root))
        if not inside or name == MANIFEST:
            raise ManifestError(f"{manifest}, line {number}: {name!r} is not a file inside the bundle; refused "
                                f"(a manifest lists the bundle's own files by relative path)")
        if name in listed:
            raise ManifestError(f"{manifest} lists {name} twice; ask the sender for a fresh copy")
        listed[name] = digest
    return listed


def check_manifest(path: Path) -> int:
    """Compare every file of the bundle ``path`` with its manifest; the number of files checked.

    Raises:
        ManifestError: a file changed, missing or not listed, or a line naming a path outside.
        TooLargeError: a file, or all of them, over the size limits (before hashing).
    """
    path = Path(path)
    listed = _listed(path)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST}
    for name in sorted(present - set(listed)):
        raise ManifestError(f"{path}: {name} is not in {MANIFEST}: it was added after export; remove it or "
                            f"ask the sender for a fresh copy")
    cap, total = limits(), 0
    for name in sorted(listed):
        file = path / name
        if not file.is_file():
            raise ManifestError(f"{path}: {name} is listed in {MANIFEST} but missing; ask the sender for a "
                                f"complete copy")
        size = file.stat().st_size
        total += size
        if size > cap.max_file_bytes:
            raise cap.refuse(str(file), size, "max_file_bytes")
        if total > cap.max_total_bytes:
            raise cap.refuse(f"{path}'s files", total, "max_total_bytes")
    for name, digest in sorted(listed.items()):
        if sha256(path / name) != digest:
            raise ManifestError(f"{path}: {name} does not match its SHA-256 in {MANIFEST}: the file was changed "
                                f"after export; do not use it, ask the sender for a fresh copy")
    return len(listed)
