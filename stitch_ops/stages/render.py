"""``stitch-ops dvc-yaml``: write ``dvc.yaml`` from the stage registry, or ``--check`` that it is current.

``dvc.yaml`` is committed (``dvc repro`` needs no extra step) and generated: the stages, their
axes, data deps, params and outputs come from :mod:`stitch_ops.stages.registry`; each stage's
code dep is its record ``code_digests/<stage>.json``, which the first stage writes from the
command's imports (:mod:`stitch_ops.stages.code_digests`), so editing a module's imports needs
no new ``dvc.yaml``. After editing the registry, run ``stitch-ops dvc-yaml``; the test suite
fails while the committed file differs from what it writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from stitch_ops.cli_common import one_line_usage_errors
from stitch_ops.stages import code_digests, deps, registry
from stitch_ops.stages.spec import Flag, Item, Stage

INDENT = "  "
PAIR_ITEM = "${item.pair}"


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def _value(value: Flag) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return f"[{', '.join(value)}]"


def _note(item: Item) -> str:
    return f"  # {item.note}" if item.note else ""


def _entry(item: Item, indent: str) -> list[str]:
    """``- text`` (with its options below it) as an element of a list."""
    lines = _comment(item.above, indent)
    lines.append(f"{indent}- {item.text}{':' if item.flags else ''}{_note(item)}")
    lines += [f"{indent}{INDENT * 2}{key}: {_value(value)}" for key, value in item.flags.items()]
    return lines


def is_foreach(stage: Stage) -> bool:
    """A stage over every pair alone is written as ``foreach: ${pairs}``, as before the registry."""
    return list(stage.axes) == ["pair"] and stage.axes["pair"] == registry.PAIRS


def _body(stage: Stage, indent: str) -> list[str]:
    """The stage's command and lists (its code record last among its deps), at ``indent``."""
    lines = [f"{indent}cmd: {stage.cmd}"]
    code = [] if stage.name == code_digests.STAGE else [Item(code_digests.record_path(stage.name))]
    lists = {"deps": [*stage.deps, *code], "params": stage.params, "outs": stage.outs,
             "plots": stage.plots, "metrics": stage.metrics}
    for key, items in lists.items():
        if items:
            lines.append(f"{indent}{key}:")
            lines += [line for item in items for line in _entry(item, indent + INDENT)]
    return lines


def stage_text(stage: Stage) -> str:
    """One stage of ``dvc.yaml``: its comment, its axes (``matrix``/``foreach``) and its body."""
    lines = _comment(stage.comment, INDENT) + [f"{INDENT}{stage.name}:"]
    inner = INDENT * 2
    if is_foreach(stage):
        lines += [f"{inner}foreach: {registry.PAIRS.text}", f"{inner}do:"]
        lines += [line.replace(PAIR_ITEM, "${item}") for line in _body(stage, inner + INDENT)]
    else:
        if stage.axes:
            lines.append(f"{inner}matrix:")
            lines += [f"{inner}{INDENT}{axis}: {values.text}{_note(values)}" for axis, values in stage.axes.items()]
        lines += _body(stage, inner)
    return "\n".join(lines) + "\n"


def render(stages: Sequence[Stage] | None = None) -> str:
    """The whole ``dvc.yaml``: the header (top-level plots) and every stage."""
    stages = registry.stages() if stages is None else stages
    return registry.HEADER + "\nstages:\n" + "\n".join(stage_text(stage) for stage in stages)


def differing_stages(committed: str, rendered: str) -> list[str]:
    """The stages (and top-level keys) whose definitions differ between two ``dvc.yaml`` texts;
    ``["comments or layout"]`` where only the text differs."""
    old, new = yaml.safe_load(committed) or {}, yaml.safe_load(rendered) or {}
    old_stages, new_stages = old.pop("stages", {}) or {}, new.pop("stages", {}) or {}
    names = [name for name in {**old_stages, **new_stages} if old_stages.get(name) != new_stages.get(name)]
    names += [f"top-level {key!r}" for key in {**old, **new} if old.get(key) != new.get(key)]
    if not names and committed != rendered:
        names.append("comments or layout")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops dvc-yaml", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming the stages that differ if the file is not what "
                             "the registry writes (what the tests check)")
    parser.add_argument("--file", type=Path, default=deps.REPO / "dvc.yaml",
                        help="the pipeline file, beside the stitch_ops package its stages run (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = one_line_usage_errors(build_parser()).parse_args(argv)
    rendered = render()
    committed = args.file.read_text() if args.file.is_file() else ""
    if args.check:
        stale = differing_stages(committed, rendered)
        if stale:
            print(f"stitch-ops dvc-yaml: {args.file} is not what stitch_ops/stages/registry.py writes; differing: "
                  f"{', '.join(stale)}. Run `stitch-ops dvc-yaml` and commit the file.", file=sys.stderr)
            return 1
        print(f"{args.file} is current")
        return 0
    if committed != rendered:
        args.file.write_text(rendered)
    print(f"{args.file}: {len(registry.stages())} stages, {rendered.count(chr(10))} lines"
          + ("" if committed != rendered else " (unchanged)"))
    return 0
