"""Every DVC stage depends on every ``stitch_ops`` module its command runs.

A stage whose ``deps`` miss a module it imports would not rerun when that module
changes, and ``dvc repro`` would silently keep stale results. The imports are derived
statically (``ast``, every ``import`` in a module including those inside functions, and
the package ``__init__`` files Python runs on the way), from the entry point of each
stage's command (``python -m stitch_ops.X`` or ``stitch-ops X``), over the stages as DVC
itself resolves them (``foreach``/``matrix`` expanded). New stages are checked with no
change here.
"""

from __future__ import annotations

import ast
import functools
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "stitch_ops"


def module_file(module: str, root: Path = REPO) -> Path | None:
    """The source file of a ``stitch_ops`` module (relative to ``root``), or None if there is none."""
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _with_parents(module: str) -> Iterator[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' ``__init__``."""
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import in a module, at any depth, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


@functools.cache
def direct_imports(module: str, root: Path = REPO) -> frozenset[str]:
    """The ``stitch_ops`` modules that ``module``'s source imports (absolute or relative)."""
    path = module_file(module, root)
    assert path is not None, f"no source file for {module}"
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse((root / path).read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import name`: name may be a submodule (imported) or an attribute
            names = [base] + [f"{base}.{alias.name}" for alias in node.names
                              if module_file(f"{base}.{alias.name}", root) is not None]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.update(m for m in _with_parents(name) if module_file(m, root) is not None)
    return frozenset(found)


def import_closure(entry_points: Iterable[str], root: Path = REPO) -> set[str]:
    """Every ``stitch_ops`` module that running ``entry_points`` imports, transitively."""
    todo = [m for entry in entry_points for m in _with_parents(entry)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or module_file(module, root) is None:
            continue
        seen.add(module)
        todo.extend(direct_imports(module, root) - seen)
    return seen


def entry_points(cmd: str, root: Path = REPO) -> list[str]:
    """The ``stitch_ops`` modules a stage command runs: ``python -m stitch_ops.X[.Y]`` runs
    ``X[.Y].__main__`` if X[.Y] is a package (else the module), ``stitch-ops X`` runs
    ``stitch_ops.cli`` which dispatches to ``stitch_ops.X.__main__``."""
    tokens = shlex.split(cmd)
    found: list[str] = []
    for index, token in enumerate(tokens):
        target = None
        if token == "-m" and index + 1 < len(tokens) and tokens[index + 1].startswith(PACKAGE):
            target = tokens[index + 1]
        elif Path(token).name == "stitch-ops":
            found.append(f"{PACKAGE}.cli")
            if index + 1 < len(tokens) and not tokens[index + 1].startswith("-"):
                target = f"{PACKAGE}.{tokens[index + 1]}"
        if target is not None:
            main = f"{target}.__main__"
            found.append(main if module_file(main, root) is not None else target)
    return found


def uncovered(modules: Iterable[str], deps: Iterable[str], root: Path = REPO) -> list[str]:
    """Source files of ``modules`` that no dependency covers (a folder covers what is inside it)."""
    dep_paths = [Path(d) for d in deps]
    missing = []
    for module in modules:
        path = module_file(module, root)
        assert path is not None
        if not any(path == dep or dep in path.parents for dep in dep_paths):
            missing.append(path.as_posix())
    return sorted(missing)


@pytest.fixture(scope="module")
def dvc_stages() -> dict[str, list]:
    """Stages as DVC resolves them, grouped by their name in ``dvc.yaml`` (the part before ``@``)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        grouped: dict[str, list] = {}
        for stage in repo.index.stages:
            if getattr(stage, "cmd", None):
                grouped.setdefault(stage.name.partition("@")[0], []).append(
                    (stage.name, stage.cmd, [dep.def_path for dep in stage.deps]))
        return grouped


STAGE_GROUPS = sorted(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("group", STAGE_GROUPS)
def test_stage_depends_on_every_module_it_imports(dvc_stages: dict[str, list], group: str):
    problems: dict[str, list[str]] = {}  # one line per distinct gap, not per expanded stage
    for name, cmd, deps in dvc_stages[group]:
        commands = [cmd] if isinstance(cmd, str) else list(cmd)
        entries = [entry for command in commands for entry in entry_points(command)]
        missing = uncovered(import_closure(entries), deps)
        if missing:
            problems.setdefault(f"runs {entries} but its deps miss {missing}", []).append(name)
    assert not problems, "add these files (or their folder) to the stage's deps in dvc.yaml:\n" + "\n".join(
        f"stage {names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "") + f" {gap}"
        for gap, names in problems.items())


def test_every_stage_runs_a_stitch_ops_entry_point(dvc_stages: dict[str, list]):
    """Guards the check above: a command it cannot parse would pass vacuously."""
    for group, stages in dvc_stages.items():
        for name, cmd, _ in stages:
            commands = [cmd] if isinstance(cmd, str) else list(cmd)
            assert any(entry_points(c) for c in commands), f"{name}: no stitch_ops entry point in {cmd!r}"


def test_closure_follows_imports_inside_functions_and_package_inits():
    """``stitching select`` imports the pipeline inside a function, which reaches ``merge.py``
    (the module issue 10 found missing); ``python -m stitch_ops.stitching`` also runs the
    package ``__init__``."""
    closure = import_closure(entry_points("python -m stitch_ops.stitching select --pair polyp"))
    for module in ("stitch_ops", "stitch_ops.stitching", "stitch_ops.stitching.__main__",
                   "stitch_ops.stitching.stages", "stitch_ops.stitching.merge", "stitch_ops.cli_common"):
        assert module in closure
    assert not any(m.startswith("stitch_ops.bundle") for m in closure)


def test_relative_imports_and_type_checking_blocks(tmp_path: Path):
    package = tmp_path / "stitch_ops"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "helper.py").write_text("")
    (package / "hidden.py").write_text("")
    (package / "sub" / "run.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stitch_ops import hidden\n"
        "def go():\n    from .. import helper\n")
    closure = import_closure(["stitch_ops.sub.run"], tmp_path)
    assert closure == {"stitch_ops", "stitch_ops.sub", "stitch_ops.sub.run", "stitch_ops.helper"}


def test_uncovered_names_the_missing_file_and_accepts_folders():
    modules = {"stitch_ops.stitching.merge", "stitch_ops.paths"}
    assert uncovered(modules, ["stitch_ops/stitching", "data/polyp"]) == ["stitch_ops/paths.py"]
    assert uncovered(modules, ["stitch_ops/stitching/merge.py", "stitch_ops/paths.py"]) == []
    assert uncovered(modules, ["stitch_ops/stitch"]) == ["stitch_ops/paths.py", "stitch_ops/stitching/merge.py"]


def test_stitch_ops_command_dispatches_to_the_stage_main():
    assert entry_points("stitch-ops nnunet train --pair polyp") == ["stitch_ops.cli", "stitch_ops.nnunet.__main__"]
    assert entry_points("python -m stitch_ops.paths") == ["stitch_ops.paths"]
