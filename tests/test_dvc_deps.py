"""Every DVC stage depends on a record of every ``stitch_ops`` module its command runs.

A stage whose code record missed a module it imports would not rerun when that module
changes, and ``dvc repro`` would silently keep stale results. The imports are derived
statically (``ast``, every ``import`` in a module including those inside functions, and
the package ``__init__`` files Python runs on the way), from the entry point of each
stage's command (``python -m stitch_ops.X`` or ``stitch-ops X``), over the stages as DVC
itself resolves them (``foreach``/``matrix`` expanded), by :mod:`stitch_ops.stages.deps`: the
walker that the ``code_digests`` stage also uses for its records; this checks the committed
``dvc.yaml`` against them. New stages are checked with no change here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from stitch_ops.stages import code_digests, registry
from stitch_ops.stages.deps import code_files, entry_points, import_closure, uncovered

REPO = Path(__file__).resolve().parents[1]


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


STAGE_GROUPS = sorted(set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]) - {code_digests.STAGE})


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    """What the ``code_digests`` stage records for each stage of the registry."""
    return {stage.name: code_digests.record(stage.cmd) for stage in registry.stages()
            if stage.name != code_digests.STAGE}


@pytest.mark.parametrize("group", STAGE_GROUPS)
def test_stage_depends_on_a_record_of_every_module_it_imports(dvc_stages: dict[str, list], records: dict[str, dict],
                                                               group: str):
    record_path = code_digests.record_path(group)
    problems: dict[str, list[str]] = {}  # one line per distinct gap, not per expanded stage
    for name, cmd, deps in dvc_stages[group]:
        if record_path not in deps:
            problems.setdefault(f"does not depend on {record_path}", []).append(name)
        commands = [cmd] if isinstance(cmd, str) else list(cmd)
        entries = [entry for command in commands for entry in entry_points(command)]
        missing = uncovered(import_closure(entries), records[group]["files"])
        if missing:
            problems.setdefault(f"runs {entries} but its record misses {missing}", []).append(name)
    assert not problems, "dvc.yaml is not what the registry writes, or a record is wrong:\n" + "\n".join(
        f"stage {names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "") + f" {gap}"
        for gap, names in problems.items())


def test_the_code_stage_depends_on_the_whole_package_and_runs_first(dvc_stages: dict[str, list]):
    """Its one dep, the package folder, covers every record it writes; every other stage reads a record."""
    [(name, cmd, deps)] = dvc_stages[code_digests.STAGE]
    assert deps == [code_digests.PACKAGE]
    assert not uncovered(import_closure(entry_points(cmd)), deps)
    assert set(dvc_stages) == {code_digests.STAGE, *STAGE_GROUPS}


def test_records_name_each_file_with_its_md5(tmp_path: Path):
    package = tmp_path / "stitch_ops"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "run.py").write_text("print('hello')\n")
    assert code_digests.record("python -m stitch_ops.run --pair polyp", tmp_path) == {
        "entry_points": ["stitch_ops.run"],
        "files": {"stitch_ops/__init__.py": "d41d8cd98f00b204e9800998ecf8427e",  # md5 of nothing
                  "stitch_ops/run.py": hashlib.md5(b"print('hello')\n").hexdigest()}}


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


def test_code_files_are_the_imported_modules_and_the_data_files_they_name(tmp_path: Path):
    """What a stage's record lists: every file the command imports (a package's ``__init__``
    too, and nothing it does not import) and a package data file where a module names it."""
    package = tmp_path / "stitch_ops"
    for folder in ("whole", "part"):
        (package / folder).mkdir(parents=True)
    for name, source in {"__init__.py": "", "run.py": "import stitch_ops.whole\nfrom stitch_ops.part import used\n",
                         "whole/__init__.py": "from . import a\n", "whole/a.py": "",
                         "part/__init__.py": "", "part/used.py": 'SCHEMA = "schema.json"\n', "part/unused.py": "",
                         "part/schema.json": "{}", "part/other.json": "{}"}.items():
        (package / name).write_text(source)
    assert code_files("python -m stitch_ops.run", tmp_path) == [
        "stitch_ops/__init__.py", "stitch_ops/part/__init__.py", "stitch_ops/part/schema.json",
        "stitch_ops/part/used.py", "stitch_ops/run.py", "stitch_ops/whole/__init__.py", "stitch_ops/whole/a.py"]


def test_the_stage_names_the_code_records_are_those_dvc_gives(dvc_stages: dict[str, list]):
    """The MLflow tag ``dvc_stage`` (``paths.dvc_stage``) names a stage DVC resolves from ``dvc.yaml``."""
    from stitch_ops.paths import dvc_stage
    from stitch_ops.stitching.artifacts import stage_name

    names = {name for stages in dvc_stages.values() for name, _, _ in stages}
    recorded = [dvc_stage("train", "polyp", "a", 0), dvc_stage("evaluate", "polyp", "b", 0),
                dvc_stage(stage_name("stitch_select", True), "polyp", "a", "double_batched", 0),
                dvc_stage(stage_name("stitch_reference", False), "polyp", "b", 0),
                dvc_stage("ensemble_finetuned", "polyp", "a", 0), dvc_stage("federated", "polyp", 0),
                dvc_stage("report", "polyp")]
    assert [name for name in recorded if name not in names] == []


def test_stage_declarations_are_not_recorded_code_and_what_only_they_import_is_not_followed(tmp_path: Path):
    """An approach plug-in declares its stages beside its command (``stitch_ops.stages.declare``):
    that reaches the stage as ``dvc.yaml`` text, so editing the vocabulary reruns nothing."""
    package = tmp_path / "stitch_ops"
    (package / "stages").mkdir(parents=True)
    for name in ("__init__.py", "stages/__init__.py", "paths.py", "work.py"):
        (package / name).write_text("")
    (package / "stages" / "declare.py").write_text("from stitch_ops import paths\n")
    (package / "stages" / "toy.py").write_text("from stitch_ops.stages import declare\nfrom stitch_ops import work\n")
    closure = import_closure(["stitch_ops.stages.toy"], tmp_path)
    assert closure == {"stitch_ops", "stitch_ops.stages", "stitch_ops.stages.toy", "stitch_ops.work"}
    finetune = code_files("python -m stitch_ops.stages.finetune --pair polyp")
    assert not {"stitch_ops/stages/declare.py", "stitch_ops/stages/spec.py", "stitch_ops/stages/plugin.py"} & set(finetune)
    assert "stitch_ops/baselines/stages.py" in finetune  # what its run imports still is
