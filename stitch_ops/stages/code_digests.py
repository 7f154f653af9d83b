"""The DVC stage ``code_digests``: a record of the code each other stage runs.

``python -m stitch_ops.stages.code_digests``, also ``stitch-ops code-digests``.

Every stage must rerun when code it runs changes, and only then; :mod:`stitch_ops.stages.deps`
finds that code from the stage command's imports. Listed as each stage's own deps, those files
were most of ``dvc.lock``: 3 455 of its 4 263 entries at the end of a ``smoke`` run (529 kB),
and DVC parses and rewrites the whole lock in pure Python after every stage (4-5 s of CPU a
stage by the end of a run, while the stage beside it waits for DVC's lock).

So this one stage depends on the whole package and writes ``code_digests/<stage>.json`` for
every other stage of ``dvc.yaml``: the MD5 of each file that stage's command runs. Each stage
depends on its own record instead. An edit rewrites the records of the stages whose code it
touches, and only those stages rerun: every other record comes out byte for byte the same, so
DVC finds those stages unchanged. Until this stage has run again, ``dvc status`` names only it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from stitch_ops.cli_common import one_line_usage_errors, report_errors
from stitch_ops.errors import UserError
from stitch_ops.outputs import output_dir
from stitch_ops.stages import deps

STAGE = "code_digests"
"""The stage's name in ``dvc.yaml``; every other stage runs after it."""
FOLDER = Path("code_digests")
"""Its output, relative to the repository root."""
PACKAGE = "stitch_ops"
"""Its one dep: the package folder (DVC hashes it, and skips this stage while no file in it changed)."""


def record_path(stage: str) -> str:
    """The record of ``stage``'s code, as ``dvc.yaml`` lists it among the stage's deps."""
    return (FOLDER / f"{stage}.json").as_posix()


def record(cmd: str, root: Path = deps.REPO) -> dict:
    """What ``cmd`` runs, for its stage's record: its entry modules and the MD5 of each file of
    their imports (:func:`stitch_ops.stages.deps.code_files`)."""
    files = {}
    for path in deps.code_files(cmd, root):
        with (root / path).open("rb") as file:
            files[path] = hashlib.file_digest(file, "md5").hexdigest()
    return {"entry_points": deps.entry_points(cmd, root), "files": files}


def write_records(root: Path = deps.REPO) -> int:
    """Write ``root/code_digests/`` whole: one record per stage of the registry but this one.
    Returns how many."""
    from stitch_ops.stages import registry

    stages = [stage for stage in registry.stages() if stage.name != STAGE]
    with output_dir(root / FOLDER) as folder:
        for stage in stages:
            text = json.dumps(record(stage.cmd, root), indent=2) + "\n"
            (folder / Path(record_path(stage.name)).name).write_text(text)
    return len(stages)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops code-digests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return parser


def _write_here() -> None:
    here = Path.cwd().resolve()
    if here != deps.REPO:
        raise UserError(f"run from the checkout whose stitch_ops package this is ({deps.REPO}), not {here}: the "
                        f"records describe that package's code, for the dvc.yaml beside it")
    count = write_records(here)
    print(f"{FOLDER}/: the code of {count} stages")


def main(argv: Sequence[str] | None = None) -> int:
    args = one_line_usage_errors(build_parser()).parse_args(argv)
    return report_errors("stitch-ops code-digests", _write_here, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
