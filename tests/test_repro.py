"""`stitch-ops repro`: which stages run side by side. The whole smoke pipeline runs through it
in tests/pipeline/test_dvc_pipeline.py (and a plain `dvc repro` afterwards does nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stitch_ops.repro import FINAL, Group, phases, pipeline_upstream, stage_pair
from tests.helpers import REPO

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
