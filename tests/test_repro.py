"""`stitch-ops repro`: which stages it runs, in which order, side by side, and what a failed
stage leaves to the final `dvc repro` (on small DVC projects). The whole smoke pipeline runs
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

from stitch_ops.repro import downstream, pipeline_upstream, ready_stages, waiting_chains
from stitch_ops.stages.code_digests import STAGE as CODE_STAGE
from tests.helpers import REPO, pipeline_env

PAIRS = ("polyp", "pelvis")
UPSTREAM = {  # transitive, as pipeline_upstream gives it
    "train@polyp-a-0": set(),
    "score@polyp-a-0": {"train@polyp-a-0"},
    "train@pelvis-a-0": set(),
    "score@pelvis-a-0": {"train@pelvis-a-0"},
    "select@pelvis-a-0": {"score@pelvis-a-0", "train@pelvis-a-0"},
    # pools both pairs' scores
    "report@pelvis": {"select@pelvis-a-0", "score@pelvis-a-0", "train@pelvis-a-0", "score@polyp-a-0",
                      "train@polyp-a-0"},
}


def test_the_stage_with_the_longest_chain_waiting_on_it_goes_first():
    chains = waiting_chains(UPSTREAM)
    assert chains == {"train@pelvis-a-0": 4, "score@pelvis-a-0": 3, "select@pelvis-a-0": 2, "report@pelvis": 1,
                      "train@polyp-a-0": 3, "score@polyp-a-0": 2}
    assert ready_stages(set(UPSTREAM), set(), UPSTREAM, chains) == ["train@pelvis-a-0", "train@polyp-a-0"]
    # once pelvis's chain is a stage ahead, the two ready stages tie (2 each): by name
    finished = {"train@pelvis-a-0", "train@polyp-a-0", "score@pelvis-a-0"}
    assert ready_stages(set(UPSTREAM) - finished, finished, UPSTREAM, chains) == ["score@polyp-a-0",
                                                                                  "select@pelvis-a-0"]


def test_a_stage_waits_for_every_stage_it_needs_of_either_pair():
    finished = set(UPSTREAM) - {"score@polyp-a-0", "report@pelvis"}
    assert ready_stages({"score@polyp-a-0", "report@pelvis"}, finished, UPSTREAM,
                        waiting_chains(UPSTREAM)) == ["score@polyp-a-0"]
    assert downstream({"score@polyp-a-0"}, UPSTREAM) == {"report@pelvis"}


def test_on_the_real_pipeline_every_stage_becomes_ready_exactly_once():
    """On the real dvc.yaml: run in ready order, two at a time, every stage starts once, after
    every stage it needs, and the queue empties (no stage waits on one never run)."""
    upstream = pipeline_upstream(REPO)
    chains = waiting_chains(upstream)
    finished: set[str] = set()
    while len(finished) < len(upstream):
        batch = ready_stages(set(upstream) - finished, finished, upstream, chains)[:2]
        assert batch, set(upstream) - finished
        for stage in batch:
            assert upstream[stage] <= finished, stage
        finished |= set(batch)
    assert {"report_index", "stitch_strategies@polyp-a-direct_matching-0"} <= finished


def test_repro_says_what_is_wrong(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "stitch_ops.cli", "repro", "--root", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"no dvc.yaml in {tmp_path}" in result.stderr
    result = subprocess.run([sys.executable, "-m", "stitch_ops.cli", "repro", "--jobs", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--jobs must be at least 1" in result.stderr


def _two_pair_project(root: Path, polyp_step: str) -> Path:
    """A DVC project beside this repository's params.yaml: one step per pair, and a stage that
    pools both steps' outputs."""
    shutil.copy(REPO / "params.yaml", root / "params.yaml")  # pairs: polyp, pelvis
    stages = {"step": {"foreach": list(PAIRS), "do": {"cmd": "python step.py ${item}", "outs": ["${item}.txt"]}},
              "pool": {"cmd": "cat polyp.txt pelvis.txt > pool.txt", "deps": ["polyp.txt", "pelvis.txt"],
                       "outs": ["pool.txt"]}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "step.py").write_text(polyp_step)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True, env=pipeline_env())
    return root


def _repro(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitch_ops.cli", "repro", "--jobs", "2"], cwd=root,
                          capture_output=True, text=True, env=pipeline_env(), timeout=300)


def test_a_stage_that_failed_beside_another_runs_again_one_at_a_time(tmp_path: Path):
    """polyp's step fails on its first try only (as a stage could if it lost a race to the
    stage beside it): the final `dvc repro` runs it again and the run succeeds."""
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
    assert "[step@polyp] polyp: lost a race" in result.stdout  # the failed try is shown with its stage
    assert "stage step@polyp failed (exit 255); the stages left run one at a time now" in result.stdout
    assert (root / "polyp.txt").read_text() == "polyp" and (root / "pelvis.txt").read_text() == "pelvis"
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=True,
                            env=pipeline_env())
    assert json.loads(status.stdout) == {}  # all three recorded in dvc.lock
    assert (root / "pool.txt").read_text() == "polyppelvis"
    again = _repro(root)  # nothing changed: no stage process starts
    assert again.returncode == 0 and "stitch-ops repro: 0 of 3 stages to run" in again.stdout
    assert "[step@" not in again.stdout


def test_a_stage_that_always_fails_fails_the_run_with_its_error(tmp_path: Path):
    root = _two_pair_project(tmp_path, "import sys\nsys.exit(f'{sys.argv[1]}: the input is broken')\n")
    result = _repro(root)
    assert result.returncode == 2
    assert "dvc repro exited 255" in result.stderr and "run `stitch-ops repro` again" in result.stderr
    assert "[step@polyp] polyp: the input is broken" in result.stdout  # side by side, with its stage
    assert "[pool]" not in result.stdout  # it needs the failed steps: never started
    assert "polyp: the input is broken" in result.stderr  # again, from the final (plain) dvc repro


def test_after_an_edit_the_code_stage_runs_first_and_only_the_stages_whose_record_changed_follow(tmp_path: Path):
    """A project shaped like ours: a ``code_digests`` stage records each stage's code (here: copies
    it) and each stage reads its record. After an edit of the pool's code alone, ``dvc status``
    sees only the code stage changed; run first, it leaves the pool alone to run, and the two
    steps (whose records came out the same) start no process at all."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "step.py").write_text("import pathlib, sys\n"
                                              "pathlib.Path(f'{sys.argv[1]}.txt').write_text('x')\n")
    (tmp_path / "src" / "pool.py").write_text("print('pooled')\n")
    stages = {CODE_STAGE: {"cmd": "cp -r src code_digests", "deps": ["src"], "outs": ["code_digests"]},
              "step": {"foreach": list(PAIRS), "do": {"cmd": "python code_digests/step.py ${item}",
                                                       "deps": ["code_digests/step.py"], "outs": ["${item}.txt"]}},
              "pool": {"cmd": "python code_digests/pool.py > pool.txt",
                       "deps": ["polyp.txt", "pelvis.txt", "code_digests/pool.py"], "outs": ["pool.txt"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=pipeline_env())
    first = _repro(tmp_path)
    assert first.returncode == 0 and "stitch-ops repro: 3 of 4 stages to run" in first.stdout, first.stdout[-3000:]
    (tmp_path / "src" / "pool.py").write_text("print('pooled again')\n")
    again = _repro(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"[1/1] {CODE_STAGE} done" in again.stdout and "stitch-ops repro: 1 of 4 stages to run" in again.stdout
    assert "[step@" not in again.stdout and (tmp_path / "pool.txt").read_text() == "pooled again\n"
