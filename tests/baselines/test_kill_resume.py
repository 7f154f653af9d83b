"""Kill and resume: every long stage is killed (SIGKILL, the whole process group) part-way,
as soon as its first checkpoint or staging output appears, and run again with the same
command. The rerun must resume (training) or restart (selection, export) cleanly, and its
result must equal, tensor for tensor and file for file, an uninterrupted run's.

The stages run as real subprocesses (``python -m stitch_ops.<stage>``, as ``dvc.yaml``
calls them) in a copy of the tiny pair's working tree, on the smoke profile shrunk to the
fewest epochs that still checkpoint before the end (2 epochs, 1-2 iterations). The run that is
killed is a process of its own, as a plain ``dvc repro`` starts it; the uninterrupted and the
resumed runs are forked from a warm-start server, as ``stitch-ops repro`` (``make run``) starts
them (:mod:`stitch_ops.warm_start`), which spares each about 10 s of imports.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tests.baselines.tiny_pair import PAIR, TinyPair
from tests.helpers import REPO, optimizer_state_files, pipeline_env

from stitch_ops.config import apply_profile
from stitch_ops.paths import PairPaths
from stitch_ops.repro import warm_start_server

pytestmark = pytest.mark.slow

FOLD = "0"
STAGE_TIMEOUT_S = 900


def _tiny_params(path: Path) -> None:
    """The repository's params.yaml on the smoke profile, cut down to the tiny pair and the
    shortest schedules that still write a checkpoint before their last epoch."""
    shutil.copy(REPO / "params.yaml", path)
    apply_profile("smoke", path)
    params = yaml.safe_load(path.read_text())
    params["pairs"] = [PAIR]
    params["data"] = {PAIR: {**params["data"][PAIR], "cases": {"a": 12, "b": 14}, "image_size": 64}}
    # narrow networks (4, 8, 16, 32, 32 features per stage): nnU-Net's 32 ... 512 costs seconds per epoch
    params["nnunet"].update(epochs=2, iterations_per_epoch=1, val_iterations_per_epoch=1, batch_size=2,
                            device="cpu", base_features=4, max_features=32)
    params["stitching"].update(max_positions=2)
    params["stitching"]["training"].update(epochs=2, iterations_per_epoch=2, batch_size=2, probe_batches=1)
    params["finetune"].update(epochs=2, warmup_epochs=1, iterations_per_epoch=1)
    params["federated"].update(rounds=2, iterations_per_epoch=1)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def workspace(tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline checkout of its own: the tiny pair's data (copied: the session fixture
    stays untouched), params.yaml (narrow networks) and the bundle definitions."""
    root = tmp_path_factory.mktemp("kill_resume")
    shutil.copytree(tiny_pair.root / "data", root / "data")
    shutil.copytree(REPO / "bundles", root / "bundles")
    _tiny_params(root / "params.yaml")
    return root


@pytest.fixture(scope="module")
def warm(workspace: Path) -> Iterator[Mapping[str, str]]:
    """The environment of a stage forked from a warm-start server (``stitch-ops repro``'s way)."""
    with warm_start_server(workspace, pipeline_env()) as env:
        yield env


def run_stage(cwd: Path, *args: str, kill_when: Callable[[], bool] | None = None,
              env: Mapping[str, str] | None = None) -> str:
    """``python -m stitch_ops.<args>`` in ``cwd`` (in ``env``, default: a user's shell's); returns
    its output. With ``kill_when``: SIGKILL the command and everything it started as soon as
    ``kill_when()`` holds; the command must not finish first."""
    log = cwd / "stage.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=dict(env or pipeline_env()), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        try:
            while process.poll() is None:
                if kill_when is not None and kill_when():
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return log.read_text()
                if time.monotonic() > deadline:
                    raise AssertionError(f"{' '.join(args)} ran past {STAGE_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
                time.sleep(0.005)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {process.returncode}:\n{log.read_text()[-6000:]}")
    if kill_when is not None:
        raise AssertionError(f"{' '.join(args)} finished before it could be killed part-way; "
                             f"its kill marker never appeared:\n{log.read_text()[-3000:]}")
    return log.read_text()


def appears(root: Path, pattern: str) -> Callable[[], bool]:
    """A kill marker: some file or folder matching ``pattern`` under ``root``."""
    return lambda: next(iter(root.glob(pattern)), None) is not None


def kill_and_resume(cwd: Path, warm: Mapping[str, str], outputs: list[Path], marker: Callable[[], bool], *args: str,
                    absent_after_kill: tuple[Path, ...] = ()) -> tuple[Path, str]:
    """Run the stage uninterrupted (in ``warm``) and keep its outputs as the reference; delete
    them, run the stage again in a process of its own and kill it at ``marker``
    (``absent_after_kill`` must not exist then: no half output), then run it to the end (in ``warm``).

    Returns:
        the folder holding the reference (outputs at their paths relative to ``cwd``) and the
        output of the last run.
    """
    run_stage(cwd, *args, env=warm)
    reference = cwd / "reference" / "_".join(a.lstrip("-") for a in args[:2])
    for output in outputs:  # folders or single files
        kept = reference / output.relative_to(cwd)
        if output.is_dir():
            shutil.copytree(output, kept)
            shutil.rmtree(output)
        else:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(output, kept)
    run_stage(cwd, *args, kill_when=marker)
    left = [str(p) for p in absent_after_kill if p.exists()]
    assert not left, f"the killed {' '.join(args[:2])} left outputs a rerun or DVC could trust: {left}"
    return reference, run_stage(cwd, *args, env=warm)


def files(folder: Path) -> list[Path]:
    return [p.relative_to(folder) for p in sorted(folder.rglob("*")) if p.is_file()]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved state dict (or of nested dicts holding them), by key path."""
    found: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            found[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)

    walk("", torch.load(path, map_location="cpu", weights_only=True))
    return found


WALL_TIME = "wall_time_s"  # how long a run took is not a result: a killed run takes longer


def without_wall_time(value):
    if isinstance(value, dict):
        return {k: without_wall_time(v) for k, v in value.items() if k != WALL_TIME}
    if isinstance(value, list):
        return [without_wall_time(v) for v in value]
    return value


def assert_same_file(expected: Path, actual: Path) -> None:
    """Weight files: every tensor equal; ``.npz``: every array equal (the zip members carry
    their write time); JSON: equal but for wall times; anything else byte for byte."""
    if expected.suffix == ".json":
        want, got = (without_wall_time(json.loads(path.read_text())) for path in (expected, actual))
        assert got == want, f"{actual} differs from the uninterrupted run's"
    elif expected.suffix in (".pth", ".pt"):
        want, got = tensors(expected), tensors(actual)
        assert want, f"{expected} holds no tensors"
        assert want.keys() == got.keys(), actual
        different = [k for k in want if not torch.equal(want[k], got[k])]
        assert not different, f"{actual}: {len(different)} tensors differ from the uninterrupted run's: {different[:5]}"
    elif expected.suffix == ".npz":
        with np.load(expected) as want, np.load(actual) as got:
            assert sorted(want.files) == sorted(got.files), actual
            for key in want.files:
                np.testing.assert_array_equal(got[key], want[key], err_msg=str(actual))
    else:
        assert filecmp.cmp(expected, actual, shallow=False), f"{actual} differs from the uninterrupted run's"


def assert_same_outputs(reference: Path, cwd: Path, outputs: list[Path]) -> None:
    for output in outputs:
        expected = reference / output.relative_to(cwd)
        if expected.is_file():
            assert_same_file(expected, output)
            continue
        assert files(expected), f"the uninterrupted run wrote nothing to {output}"
        assert files(output) == files(expected), output
        for name in files(expected):
            assert_same_file(expected / name, output / name)


@pytest.fixture(scope="module")
def paths(workspace: Path) -> PairPaths:
    return PairPaths(PAIR, workspace)


def test_basis_training_resumes_to_the_same_weights(workspace: Path, warm: Mapping[str, str], paths: PairPaths):
    model = paths.model_dir("local", "a", 0)
    args = ("stitch_ops.nnunet", "train", "--pair", PAIR, "--party", "a", "--fold", FOLD, "--no-progress")
    reference, log = kill_and_resume(workspace, warm, [model], appears(model, "**/checkpoint_latest.pth"), *args)
    assert "checkpoint_latest.pth" in log  # resumed, not started over
    assert_same_outputs(reference, workspace, [model / "export"])
    assert optimizer_state_files(model) == []  # finished: the checkpoints are dropped, the export stays
    # party b's basis model, for the stages below
    run_stage(workspace, "stitch_ops.nnunet", "train", "--pair", PAIR, "--party", "b", "--fold", FOLD, "--no-progress",
              env=warm)


STITCH = ("--pair", PAIR, "--c", "a", "--method", "double_batched", "--fold", FOLD, "--no-progress")


def test_stitch_training_resumes_to_the_same_stitches(workspace: Path, warm: Mapping[str, str], paths: PairPaths):
    network = paths.model_dir("stitch", "via_a_double_batched", 0) / "network"
    reference, log = kill_and_resume(workspace, warm, [network], appears(network, "checkpoint.pt"),
                                     "stitch_ops.stages.stitch_train", *STITCH)
    assert "resumed from" in log
    assert_same_outputs(reference, workspace, [network])
    assert optimizer_state_files(network) == []  # finished: the checkpoint is dropped, the network stays


def test_stitch_selection_restarts_to_the_same_choice_and_predictions(workspace: Path, warm: Mapping[str, str],
                                                                      paths: PairPaths):
    slug = "via_a_double_batched"
    model = paths.model_dir("stitch", slug, 0)
    outputs = [model / "export", paths.scores("stitch", slug, 0) / "positions.csv",
               paths.predictions("stitch", slug, 0)]
    # killed once the first position's validation predictions are being written
    reference, _ = kill_and_resume(workspace, warm, outputs, appears(model, "positions.partial*/k*"),
                                   "stitch_ops.stages.stitch_select", *STITCH,
                                   absent_after_kill=(model / "export", outputs[1]))
    assert_same_outputs(reference, workspace, outputs)
    assert not list(model.glob("positions.partial*"))


def test_finetuning_resumes_to_the_same_weights_and_predictions(workspace: Path, warm: Mapping[str, str],
                                                                paths: PairPaths):
    run_stage(workspace, "stitch_ops.stages.transfer_plans", "--pair", PAIR, "--party", "a", "--no-progress", env=warm)
    model = paths.model_dir("finetune", "b_to_a", 0)
    outputs = [model, paths.predictions("finetune", "b_to_a", 0)]
    reference, log = kill_and_resume(workspace, warm, outputs, appears(model, "**/checkpoint_latest.pth"),
                                     "stitch_ops.stages.finetune", "--pair", PAIR, "--trained-on", "b_to_a",
                                     "--fold", FOLD, "--no-progress")
    assert "checkpoint_latest.pth" in log
    assert_same_outputs(reference, workspace, [model / "export", outputs[1]])
    assert optimizer_state_files(model) == []


def test_federated_training_resumes_after_the_last_round_to_the_same_model(workspace: Path, warm: Mapping[str, str],
                                                                           paths: PairPaths):
    from stitch_ops.baselines.plans import JOINT

    run_stage(workspace, "stitch_ops.stages.joint_plans", "--pair", PAIR, "--no-progress", env=warm)
    # the joint planner's batch differs from params' 2, as quick's 4 differs from the planner's 10 (polyp) or 68 (pelvis)
    for plans_file in paths.preprocessed_root("a", plans_from=JOINT).rglob("nnUNetPlans.json"):
        plans = json.loads(plans_file.read_text())
        plans["configurations"]["2d"]["batch_size"] = 5
        plans_file.write_text(json.dumps(plans, indent=2))
    model = paths.model_dir("federated", "a_fed_b", 0)
    outputs = [model, paths.predictions("federated", "a_fed_b", 0)]
    reference, log = kill_and_resume(workspace, warm, outputs, appears(model, "global/latest.pth"),
                                     "stitch_ops.stages.federated", "--pair", PAIR, "--fold", FOLD,
                                     "--no-progress")
    assert "resuming federated training after round 1" in log
    assert "optimiser starts afresh" not in log  # each party's local state came back too
    assert_same_outputs(reference, workspace, [model / "export", outputs[1]])
    # finished: the global checkpoint and the parties' local states are dropped, the curve stays
    assert optimizer_state_files(model) == [] and not (model / "global" / "latest.pth").exists()
    assert (model / "global" / "rounds.json").is_file()
    # the export and budget.json state the batch the parties trained with (the profile's 2, not the planner's)
    budget = json.loads((paths.metrics("federated", "a_fed_b", 0) / "budget.json").read_text())
    plans = json.loads((model / "export" / "plans.json").read_text())
    assert budget["batch_size"] == plans["configurations"]["2d"]["batch_size"] == 2


def test_export_restarts_and_never_leaves_half_a_bundle(workspace: Path, warm: Mapping[str, str], paths: PairPaths):
    bundle = workspace / "exports" / PAIR / "local_a_fold0"
    archive = bundle.with_name(bundle.name + ".zip")

    def staging() -> bool:  # a folder in exports/ that is not (yet) the finished bundle
        return bundle.parent.is_dir() and any(p.is_dir() and p.name != bundle.name for p in bundle.parent.iterdir())

    args = ("stitch_ops.bundle", "export", "--pair", PAIR, "--approach", "local", "--trained-on", "a", "--fold", FOLD)
    run_stage(workspace, *args, env=warm)
    reference = workspace / "reference" / "bundle_export"
    shutil.copytree(bundle.parent, reference)
    shutil.rmtree(bundle.parent)
    run_stage(workspace, *args, kill_when=staging)
    assert not bundle.exists() and not archive.exists(), "the killed export left a bundle a user could trust"
    run_stage(workspace, *args, env=warm)
    assert sorted(p.name for p in bundle.parent.iterdir()) == [bundle.name, archive.name]  # no staging left
    assert_same_outputs(reference, bundle.parent, [bundle])
    with zipfile.ZipFile(reference / archive.name) as want, zipfile.ZipFile(archive) as got:
        assert want.namelist() == got.namelist()
        for name in want.namelist():  # contents, not the members' write times
            assert want.read(name) == got.read(name), name
