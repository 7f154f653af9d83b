"""The code a stage's command runs, derived from its imports: what each stage's code digest records.

A stage that missed a module it imports would not rerun when that module changes, and ``dvc
repro`` would silently keep stale results; one that counted modules it never imports would rerun
(retrain) for edits that cannot change its results. The imports are derived statically (``ast``:
every ``import`` in a module, including those inside functions, and the package ``__init__``
files Python runs on the way), from the entry module of the stage's command (``python -m
stitch_ops.X`` or ``stitch-ops X``). Package data files that a module names (a JSON schema
beside it) count too. :mod:`stitch_ops.stages.code_digests` records the result per stage, and
each stage of ``dvc.yaml`` depends on its record.
"""

from __future__ import annotations

import ast
import functools
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = "stitch_ops"
REPO = Path(__file__).resolve().parents[2]
"""The checkout holding the package (the root that ``dvc.yaml``'s paths are relative to)."""
DECLARATIONS = frozenset({f"{PACKAGE}.stages.spec", f"{PACKAGE}.stages.declare", f"{PACKAGE}.stages.plugin"})
"""Modules that only describe stages for ``dvc.yaml``: an approach plug-in's entry module imports
them to declare its stages beside its command, but what they hold reaches a stage only as the
text of its ``dvc.yaml`` entry, which DVC compares by itself. They are not code deps, and what
they import is not followed. A stage's work must not call into them: nothing below the
application layer may import them (``tests/test_layers.py``), and the application modules that
call them run commands that are not stages (``stitch-ops dvc-yaml``, ``baselines --help``,
``bundle definitions``)."""


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
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@functools.cache
def direct_imports(module: str, root: Path = REPO, declarations: bool = True) -> frozenset[str]:
    """The ``stitch_ops`` modules that ``module``'s source imports (absolute or relative), with
    the packages Python runs on the way; with ``declarations=False``, less the stage declarations
    (:data:`DECLARATIONS`) and the packages it imports only on their way."""
    path = module_file(module, root)
    if path is None:
        raise FileNotFoundError(f"no source file for module {module} under {root}")
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(_parse(root / path)):
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
            if not declarations and name in DECLARATIONS:
                continue
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.update(m for m in _with_parents(name) if module_file(m, root) is not None)
    return frozenset(found)


def import_closure(entry_points: Iterable[str], root: Path = REPO) -> set[str]:
    """Every ``stitch_ops`` module that running ``entry_points`` imports, transitively, less the
    stage declarations (:data:`DECLARATIONS`) and what only they import."""
    todo = [m for entry in entry_points for m in _with_parents(entry)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or module_file(module, root) is None:
            continue
        seen.add(module)
        todo.extend(direct_imports(module, root, declarations=False) - seen)
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
        if path is None:
            raise FileNotFoundError(f"no source file for module {module} under {root}")
        if not any(path == dep or dep in path.parents for dep in dep_paths):
            missing.append(path.as_posix())
    return sorted(missing)


def data_files(module: str, root: Path = REPO) -> set[Path]:
    """Files beside ``module``'s source that are not Python and that it names in a string
    (``Path(__file__).with_name("metadata_schema.json")``): what it reads at run time."""
    path = module_file(module, root)
    if path is None:
        raise FileNotFoundError(f"no source file for module {module} under {root}")
    beside = {p.name: p.relative_to(root) for p in (root / path).parent.iterdir()
              if p.is_file() and p.suffix not in (".py", ".pyc")}
    names = {node.value for node in ast.walk(_parse(root / path))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return {beside[name] for name in names & beside.keys()}


def code_files(cmd: str, root: Path = REPO) -> list[str]:
    """The files of the code that ``cmd`` runs, relative to ``root``: the source of every module
    it imports and the data files they read (what :mod:`stitch_ops.stages.code_digests` records
    for its stage)."""
    files: set[Path] = set()
    for module in import_closure(entry_points(cmd, root), root):
        files.add(module_file(module, root))  # type: ignore[arg-type]  # the closure holds only modules with a file
        files |= data_files(module, root)
    return sorted(path.as_posix() for path in files)
