"""The stage registry and the ``dvc.yaml`` it writes (``stitch-ops dvc-yaml``).

The committed ``dvc.yaml`` must be what the registry writes (else CI fails, naming the stale
stages), and each stage's code record (``code_digests/<stage>.json``) must be what its command
runs, no more: a restyled figure must not retrain anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stitch_ops.approaches import Approach
from stitch_ops.stages import code_digests, plugin, registry, render
from stitch_ops.stages.deps import code_files, uncovered
from tests.helpers import copy_pipeline, run

REPO = Path(__file__).resolve().parents[1]
FIGURES = "stitch_ops/evaluation/figures.py"
DRAWING_STAGES = {"rq1", "report", "report_index"}
"""The stages that draw figures (``rq1.png``, the report's): the only ones a figure's style may rerun."""


def training_stages() -> set[str]:
    """Stages that train: those with a persisted model (a killed run resumes it), and the sweep's trials."""
    persisted = {stage.name for stage in registry.stages() if any(out.flags.get("persist") for out in stage.outs)}
    return persisted | {"sweep"}


def test_committed_dvc_yaml_is_what_the_registry_writes():
    stale = render.differing_stages((REPO / "dvc.yaml").read_text(), render.render())
    assert not stale, f"dvc.yaml is stale ({', '.join(stale)}): run `stitch-ops dvc-yaml` and commit it"


def test_check_names_the_stale_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pipeline = tmp_path / "dvc.yaml"
    pipeline.write_text(render.render().replace("--only-configured", ""))
    assert render.main(["--check", "--file", str(pipeline)]) == 1
    assert "differing: sweep." in capsys.readouterr().err
    assert render.main(["--file", str(pipeline)]) == 0
    assert render.main(["--check", "--file", str(pipeline)]) == 0
    assert pipeline.read_text() == render.render()


def test_training_stages_are_the_expected_ones():
    """Guards the checks below: a registry change that hid a training stage would pass them vacuously."""
    assert training_stages() == {"train", "stitch_train", "stitch_train_finetuned", "stitch_ablation", "finetune",
                                 "federated", "merged", "sweep"}


def test_stitch_training_does_not_run_selection_rq1_or_figures():
    """Issue 25: the five stitching subcommands shared one entry module, so training the stitches
    depended on the RQ1 plot; each has its own now."""
    for parents in (registry.BASIS, registry.FINETUNED):
        deps = code_files(registry.stitch_train(parents).cmd)
        assert "stitch_ops/stitching/stages.py" in deps
        for module in (FIGURES, "stitch_ops/stitching/rq1.py", "stitch_ops/stitching/strategies.py",
                       "stitch_ops/stitching/__main__.py"):
            assert uncovered([module.removesuffix(".py").replace("/", ".")], deps) == [module]


def test_only_the_drawing_stages_depend_on_the_figures():
    dependent = {stage.name for stage in registry.stages() if stage.name != code_digests.STAGE
                 and FIGURES in code_digests.record(stage.cmd)["files"]}
    assert dependent == DRAWING_STAGES
    assert not dependent & training_stages()


def _lock_deps_as_if_run(root: Path) -> None:
    """Add to ``dvc.lock`` every stage but the code stage as if it had run on the records now in
    ``root`` (deps hashed, outputs left out: ``dvc status`` then reports each stage's changed deps
    beside its missing outputs)."""
    from dvc.repo import Repo
    from dvc.stage.serialize import to_single_stage_lockfile

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if stage.name != code_digests.STAGE:
                stage.save_deps(allow_missing=True)
                entry = json.loads(json.dumps(to_single_stage_lockfile(stage)))  # plain dicts for the YAML writer
                entry.pop("outs", None)
                lock["stages"][stage.name] = entry
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def _stages_with_changed_code(root: Path) -> set[str]:
    status = json.loads(run(["dvc", "status", "--json"], root).stdout or "{}")
    return {name.partition("@")[0] for name, changes in status.items() for change in changes
            if isinstance(change, dict) and any(dep.startswith((code_digests.PACKAGE, code_digests.FOLDER.name))
                                                for dep in change.get("changed deps", {}))}


def test_dvc_status_after_a_figure_restyle_lists_no_training_stage(tmp_path: Path):
    """The real ``dvc status`` and code stage in a scratch copy: record the code every stage ran,
    restyle a figure. ``dvc status`` names the code stage alone until it reruns, then the drawing stages."""
    root = copy_pipeline(tmp_path / "checkout")
    record_code = ["dvc", "repro", "--single-item", code_digests.STAGE]
    run(record_code, root)
    _lock_deps_as_if_run(root)
    assert _stages_with_changed_code(root) == set()
    with (root / FIGURES).open("a") as figures:
        figures.write("\n# a restyled figure\n")
    assert _stages_with_changed_code(root) == {code_digests.STAGE}
    run(record_code, root)
    assert _stages_with_changed_code(root) == DRAWING_STAGES


def test_registry_import_is_cheap():
    """``stitch-ops dvc-yaml`` and the tests read the registry, and with it every approach plug-in's
    stages and commands, without torch, nnU-Net, MLflow or Ray."""
    code = ("import sys, stitch_ops.stages.registry, stitch_ops.stages.render, stitch_ops.stages.plugin as p; "
            "stitch_ops.stages.registry.stages(); p.commands(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'nnunetv2', 'mlflow', 'ray', 'monai'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_finetuned_twins_differ_only_by_their_parents():
    """One declaration, two stages: the ``*_finetuned`` stage adds the fine-tuned models, the
    ``--finetuned`` flag, the ``_finetuned`` slug and its own c parties, and nothing else."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    twins = [name for name in pipeline if name.endswith("_finetuned") and name != "ensemble_finetuned"]
    assert sorted(twins) == sorted(f"{name}_finetuned" for name in ("stitch_train", "stitch_select", "bundle_stitch",
                                                                      "stitch_reference", "stitch_strategies"))
    for twin in twins:
        basis, finetuned = pipeline[twin.removesuffix("_finetuned")], pipeline[twin]
        as_basis = json.loads(json.dumps(finetuned).replace("_finetuned", "").replace(" --finetuned", "")
                              .replace("finetuned_c_parties", "c_parties"))
        as_basis["deps"] = [dep for dep in as_basis["deps"] if dep != "models/${item.pair}/finetune"]
        assert as_basis == basis, twin


def test_approach_plugins_are_found_by_name_in_the_approach_tables_order():
    """Each baseline approach is one module of ``stitch_ops.stages`` with a ``PLUGIN``: it alone
    feeds the ``dvc.yaml`` stages, the ``stitch-ops baselines`` subcommands and the planned budgets.
    Written so that adding an approach plug-in needs no edit here."""
    found = [p.approach for p in plugin.plugins()]
    assert found == sorted(found, key=list(Approach).index)
    assert {"finetune", "ensemble", "federated", "merged"} <= set(found)
    declared = [stage.name for p in plugin.plugins() for stage in p.stages()]
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert [name for name in pipeline if name in declared] == declared  # written in the plug-ins' order
    assert {"transfer_plans", "finetune", "sweep", "ensemble", "ensemble_finetuned", "joint_plans", "federated",
            "merged"} <= set(declared)
    commands = [command.name for command in plugin.commands()]
    assert {"transfer-plans", "finetune", "sweep", "ensemble", "joint-plans", "federated", "merged"} <= set(commands)
    result = run([sys.executable, "-m", "stitch_ops.baselines", "--help"], cwd=REPO)
    assert all(name in result.stdout for name in commands)
    assert {"finetune", "federated", "merged"} <= {p.approach for p in plugin.plugins() if p.schedule is not None}


def test_every_approach_of_the_table_is_scored_by_a_declared_stage():
    """An approach in ``approaches.py`` whose plug-in is missing (or declares no scoring stage) fails here."""
    scored = {Path(out.text).parts[2] for stage in registry.stages() for out in stage.outs
              if Path(out.text).parts[0] == "metrics" and Path(out.text).name == "cases.csv"}
    assert scored == {approach.value for approach in Approach}
