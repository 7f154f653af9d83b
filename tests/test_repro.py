"""`stitch-ops repro`: which stages run side by side, and what a failed side-by-side process
leaves to the final `dvc repro` (on two-stage DVC projects). The whole smoke pipeline runs
through it in tests/pipeline/test_dvc_pipeline.py (and a plain `dvc repro` afterwards does
nothing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from stitch_ops.repro import FINAL, Group, phases, pipeline_upstream, stage_pair
from tests.helpers import REPO, pipeline_env

PAIRS = ("polyp", "pelvis")


def test_a_stage_belongs_to_the_pair_it_is_named_for():
    assert stage_pair("train@polyp-a-0", PAIRS) == "polyp"
    assert stage_pair("prepare@pelvis", PAIRS) == "pelvis"
    assert stage_pair("report_index", PAIRS) == FINAL
    assert stage_pair("train@other-a-0", PAIRS) == FINAL  # a pair params.yaml does not run


def test_phases_run_pairs_apart_until_a_stage_reads_both():
    upstream = {
        "train@polyp-a-0": set(),
        "score@polyp-a-0": {"train@polyp-a-0"},
        "train@pelvis-a-0": set(),
        # pools both pairs' scores: only once both pairs' first phase is done
        "pool@polyp": {"score@polyp-a-0", "train@polyp-a-0", "train@pelvis-a-0"},
        "report@polyp": {"pool@polyp", "score@polyp-a-0", "train@polyp-a-0", "train@pelvis-a-0"},
        "report_index": {"report@polyp", "pool@polyp", "score@polyp-a-0", "train@polyp-a-0", "train@pelvis-a-0"},
    }
    assert phases(upstream, PAIRS) == [  # each group in dependency order
        [Group("pelvis", ("train@pelvis-a-0",)), Group("polyp", ("train@polyp-a-0", "score@polyp-a-0"))],
        [Group("polyp", ("pool@polyp", "report@polyp"))],
    ]  # report_index is left to the final `dvc repro`


def test_no_two_processes_of_a_phase_need_the_same_stage():
    """On the real dvc.yaml: every stage a group needs ran in an earlier phase or comes
    earlier in the group itself, so two side-by-side `dvc repro` never run one stage twice."""
    upstream = pipeline_upstream(REPO)
    done: set[str] = set()
    for groups in phases(upstream, PAIRS):
        for group in groups:
            for position, stage in enumerate(group.stages):  # run one by one, in this order
                assert upstream[stage] <= done | set(group.stages[:position]), stage
        done |= {stage for group in groups for stage in group.stages}
    assert set(upstream) - done == {"report_index"}
    assert any(stage.startswith("stitch_strategies@") for stage in done)  # phase 2 takes the cross-pair stages


def test_repro_says_what_is_wrong(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "stitch_ops.cli", "repro", "--root", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"no dvc.yaml in {tmp_path}" in result.stderr
    result = subprocess.run([sys.executable, "-m", "stitch_ops.cli", "repro", "--jobs", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--jobs must be at least 1" in result.stderr


def _two_pair_project(root: Path, polyp_step: str) -> Path:
    """A DVC project of two stages, one per pair, beside this repository's params.yaml."""
    shutil.copy(REPO / "params.yaml", root / "params.yaml")  # pairs: polyp, pelvis
    stages = {"step": {"foreach": list(PAIRS), "do": {"cmd": "python step.py ${item}", "outs": ["${item}.txt"]}}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "step.py").write_text(polyp_step)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True, env=pipeline_env())
    return root


def _repro(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitch_ops.cli", "repro", "--jobs", "2"], cwd=root,
                          capture_output=True, text=True, env=pipeline_env(), timeout=300)


def test_a_stage_that_failed_beside_another_runs_again_one_at_a_time(tmp_path: Path):
    """polyp's step fails on its first try only (as a stage could if it lost a race to the
    other pair's process): the final `dvc repro` runs it again and the run succeeds."""
    root = _two_pair_project(tmp_path, textwrap.dedent("""
        import pathlib, sys
        pair = sys.argv[1]
        if pair == "polyp" and not pathlib.Path("tried").exists():
            pathlib.Path("tried").touch()
            sys.exit("polyp: lost a race")
        pathlib.Path(f"{pair}.txt").write_text(pair)
    """))
    result = _repro(root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[polyp] polyp: lost a race" in result.stdout  # the failed try is shown with its pair
    assert "polyp's dvc repro (exit 255) failed; the stages left run one at a time now" in result.stdout
    assert (root / "polyp.txt").read_text() == "polyp" and (root / "pelvis.txt").read_text() == "pelvis"
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=True,
                            env=pipeline_env())
    assert json.loads(status.stdout) == {}  # both recorded in dvc.lock


def test_a_stage_that_always_fails_fails_the_run_with_its_error(tmp_path: Path):
    root = _two_pair_project(tmp_path, "import sys\nsys.exit(f'{sys.argv[1]}: the input is broken')\n")
    result = _repro(root)
    assert result.returncode == 2
    assert "dvc repro exited 255" in result.stderr and "run `stitch-ops repro` again" in result.stderr
    assert "[polyp] polyp: the input is broken" in result.stdout  # side by side, with its pair
    assert "polyp: the input is broken" in result.stderr  # again, from the final (plain) dvc repro
