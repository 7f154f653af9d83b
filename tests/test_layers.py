"""The package's layers: every ``stitch_ops`` import points down (or within its own layer).

A module that imports a higher layer ties the lower one to everything above it: the
smallest change up there reruns the stages of the lower one (DVC follows imports,
``tests/test_dvc_deps.py``), and the two can no longer be read or tested apart. The layers,
lowest first, are :data:`LAYERS` (``docs/ARCHITECTURE.md``, "Layers", says why each sits where
it is). Imports inside functions count: they are how the cycles used to hide.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from stitch_ops.stages.deps import REPO, direct_imports

LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer.split()) for layer in (
    "errors limits outputs config approaches paths budget ray_session cli_common warm_start",  # no model, no data
    "data",        # the two parties' datasets and folds
    "tracking",    # MLflow: runs, curves, datasets, logged models (by path, never opened here)
    "nnunet",      # planning, training, prediction of one nnU-Net
    "graph",       # tracing and matching two networks' layers
    "evaluation",  # scoring, selection, the report
    "stitching",   # stitches, their training and scoring, the stitching stages
    "bundle",      # opening any model (open_model), MONAI bundles, the MLflow pyfunc
    "baselines",   # fine-tuning, ensembles, federated, merged, the lr sweep
    "stages stitch_task commands cli repro profiles",  # applications: what a user or DVC runs
))
"""Each name is a top-level module or subpackage of ``stitch_ops``, lowest layer first."""


APPLICATIONS = len(LAYERS) - 1


def layer_of(module: str) -> int:
    """The layer of ``stitch_ops.<name>[...]``: a package's ``__main__`` (an entry point, like the
    CLI) is an application, the package itself the top."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)
    if parts[-1] == "__main__":
        return APPLICATIONS
    return next((i for i, layer in enumerate(LAYERS) if parts[1] in layer), -1)


def package_modules(root: Path = REPO) -> list[str]:
    modules = []
    for path in sorted((root / "stitch_ops").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def upward_imports(root: Path = REPO) -> list[str]:
    """``importer (layer i) -> imported (layer j)`` for every import of a higher layer."""
    return sorted(f"{module} (layer {layer_of(module)}) -> {imported} (layer {layer_of(imported)})"
                  for module in package_modules(root) for imported in direct_imports(module, root)
                  if imported != "stitch_ops" and layer_of(imported) > layer_of(module))


def test_every_module_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in package_modules() if "." in m and layer_of(m) < 0})
    assert not unplaced, f"add {unplaced} to LAYERS in tests/test_layers.py and to docs/ARCHITECTURE.md"


def test_no_module_imports_a_higher_layer():
    upward = upward_imports()
    assert not upward, "these imports point up; move the code they need down, or the importer up:\n" + \
        "\n".join(upward)


@pytest.mark.parametrize("importer, imported", [("stitch_ops.tracking.models", "stitch_ops.bundle.sources"),
                                                ("stitch_ops.stitching.train", "stitch_ops.stitch_task")])
def test_an_upward_import_is_reported(tmp_path: Path, importer: str, imported: str):
    """The check can fail: the same package with one import added that points up."""
    for module in package_modules():
        source = REPO / Path(*module.split("."))
        path = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
        target = tmp_path / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        extra = f"\ndef _late():\n    import {imported}\n" if module == importer else ""
        target.write_text(path.read_text() + extra)
    direct_imports.cache_clear()
    try:
        upward = upward_imports(tmp_path)
    finally:
        direct_imports.cache_clear()
    assert any(line.startswith(f"{importer} ") and f"-> {imported} " in line for line in upward), upward
    assert all(line.startswith(f"{importer} ") for line in upward), upward  # nothing else points up
