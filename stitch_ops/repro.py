"""``stitch-ops repro``: the whole pipeline, as ``dvc repro``, with the pairs' stages run side by side.

One ``dvc repro`` runs one stage at a time, and most stages keep one core busy: nnU-Net
predicts on ``nnUNet_def_n_proc`` (1) threads, and every stage pays Python, torch and MONAI
start-up for a few seconds of work. On 2 cores that leaves about half the machine idle.

The pairs are independent until the stages that read both (stitch selection strategy 3 pools
the positions of both pairs; the index report), so each pair's stages run in a ``dvc repro``
process of their own (DVC holds its repository lock only between commands, and
``--wait-for-lock`` makes each process wait for the other's bookkeeping instead of failing),
in phases, each process running exactly its stages in dependency order: first every stage
that needs only its own pair, then the pair-named stages that also read the other pair's
finished outputs, and a final plain ``dvc repro`` for the rest, which also checks that
everything is up to date. ``--jobs 1`` is exactly ``dvc repro``.

If a side-by-side process fails, the later phases are skipped and the final ``dvc repro``
runs every stage left, one at a time: a stage that failed only because another ran beside
it (one of four smoke runs lost a stage that passes alone, cause not found) then finishes,
and one that fails for a real reason fails again there, with its error last on the screen.

The stages keep torch's own thread count, so each computes exactly what it computes under
a plain ``dvc repro`` (results depend on the thread count in their last digits; the same seed
gives the same ``summary.json`` either way, and a run resumed with ``dvc repro`` matches).
Where two stages' threads meet on too few cores, OpenMP's waiting threads sleep instead of
spinning (``OMP_WAIT_POLICY=PASSIVE``), which changes no result.

Nothing here decides what runs: DVC does, stage by stage, as always; an interrupted run
resumes with the same command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stitch_ops.cli_common import one_line_usage_errors, report_errors
from stitch_ops.errors import UserError

FINAL = ""
"""The group name of stages that belong to no single pair (run by the final ``dvc repro``)."""
DEFAULT_JOBS = 2
"""Processes side by side by default: one per pair of the default profile."""


class SideBySideFailed(Exception):
    """A side-by-side ``dvc repro`` process exited with an error (its last lines were shown)."""


@dataclass(frozen=True)
class Group:
    """The stages one ``dvc repro`` process runs in one phase."""

    pair: str
    stages: tuple[str, ...]


def stage_pair(name: str, pairs: Sequence[str]) -> str:
    """The pair a stage is named for (``train@polyp-a-0`` → ``polyp``), or :data:`FINAL`."""
    item = name.partition("@")[2].split("-")[0]
    return item if item in pairs else FINAL


def phases(upstream: dict[str, set[str]], pairs: Sequence[str]) -> list[list[Group]]:
    """The side-by-side groups of each phase, from each stage's transitive upstream stages.

    A stage joins its pair's group in the first phase after which every upstream stage of
    another pair (or of none) has run; the stages no phase takes are left to the final
    ``dvc repro``. The upstream sets are transitive, so a group holds the upstream stages of
    its own pair that it needs: the processes of one phase never need the same stage, and a
    phase only reads the other pairs' outputs that earlier phases finished.
    """
    done: set[str] = set()
    result: list[list[Group]] = []
    while True:
        ready: dict[str, list[str]] = {}
        for stage, needs in upstream.items():
            pair = stage_pair(stage, pairs)
            if stage in done or pair == FINAL:
                continue
            if all(need in done or stage_pair(need, pairs) == pair for need in needs):
                ready.setdefault(pair, []).append(stage)
        # in dependency order: a stage's upstream set holds each of its upstream stages' sets
        groups = [Group(pair, tuple(sorted(stages, key=lambda stage: (len(upstream[stage]), stage))))
                  for pair, stages in sorted(ready.items())]
        if not groups:
            return result
        result.append(groups)
        done.update(stage for group in groups for stage in group.stages)


def pipeline_upstream(root: Path) -> dict[str, set[str]]:
    """Every stage of the DVC project at ``root`` with the names of all stages it depends on."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages whose outputs it reads
        return {stage.addressing: {need.addressing for need in nx.descendants(graph, stage)}
                for stage in graph.nodes}


def _stream(process: subprocess.Popen, prefix: str, last: deque[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()
        last.append(f"{prefix}{line}")


def run_side_by_side(groups: Sequence[Group], root: Path, env: dict[str, str]) -> None:
    """One ``dvc --wait-for-lock repro --single-item <stages>`` per group at once, each line
    of output prefixed with ``[pair]``; waits for all of them (a failing group does not stop
    the others: their finished stages are kept).

    Raises:
        SideBySideFailed: if any process failed.

    ``--single-item`` runs exactly the group's stages, in the order given (dependency order),
    each if it changed: without it each process would also re-check the upstream stages of
    the other pair, and DVC locks the outputs of a stage it checks, which the other process
    may be reading at that moment.
    """
    group_env = {**env, "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE")}
    processes = []
    for group in groups:
        process = subprocess.Popen(["dvc", "--wait-for-lock", "repro", "--single-item", *group.stages],
                                   cwd=root, env=group_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        last: deque[str] = deque(maxlen=40)
        reader = threading.Thread(target=_stream, args=(process, f"[{group.pair}] ", last), daemon=True)
        reader.start()
        processes.append((group, process, reader, last))
    failed = []
    for group, process, reader, last in processes:
        process.wait()
        reader.join()
        if process.returncode != 0:
            failed.append(f"{group.pair}'s dvc repro (exit {process.returncode})")
            # the other process's lines may have buried the error: repeat the end of this one
            sys.stdout.write(f"--- the last lines of {group.pair}'s dvc repro ---\n{''.join(last)}")
    if failed:
        raise SideBySideFailed(", ".join(failed) + " failed")


def repro(root: Path = Path("."), jobs: int = DEFAULT_JOBS) -> None:
    """Run the pipeline at ``root`` to the end: the pairs side by side in up to ``jobs``
    processes, then a plain ``dvc repro`` (``jobs=1``: only that), which also runs whatever
    a failed side-by-side process left."""
    root = root.resolve()
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"no dvc.yaml in {root}: run from the repository root (or pass --root)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if jobs > 1:
        try:
            run_phases(root, jobs, env)
        except SideBySideFailed as failure:
            print(f"stitch-ops repro: {failure}; the stages left run one at a time now (dvc repro)", flush=True)
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env)
    if result.returncode != 0:
        raise UserError(f"dvc repro exited {result.returncode} (see above); fix the cause and run "
                        f"`stitch-ops repro` again (finished stages are kept)")


def run_phases(root: Path, jobs: int, env: dict[str, str]) -> None:
    """Every phase of :func:`phases`, its groups ``jobs`` at a time (:func:`run_side_by_side`)."""
    from stitch_ops.config import load_params

    pairs = load_params(root / "params.yaml").pairs
    _create_tracking_store(root)  # before two processes would race to create its tables
    for number, groups in enumerate(phases(pipeline_upstream(root), pairs), start=1):
        for start in range(0, len(groups), jobs):
            batch = groups[start:start + jobs]
            print(f"stitch-ops repro: phase {number}: "
                  + ", ".join(f"{g.pair} ({len(g.stages)} stages)" for g in batch), flush=True)
            run_side_by_side(batch, root, env)


def _create_tracking_store(root: Path) -> None:
    """Create the MLflow store's tables now, from one process (what the first stage to log
    would do), so that two stages starting at once do not both try."""
    from mlflow import MlflowClient

    from stitch_ops import tracking

    tracking.configure(root)
    MlflowClient().search_experiments(max_results=1)


def build_parser() -> argparse.ArgumentParser:
    parser = one_line_usage_errors(argparse.ArgumentParser(
        prog="stitch-ops repro",
        description="Run the whole pipeline like `dvc repro`, the two pairs' stages side by side in "
                    "separate `dvc repro` processes up to the stages that read both pairs, then a final "
                    "`dvc repro`, which also runs whatever a failed side-by-side process left. Resumes where it "
                    "stopped. This is what `make run` runs."))
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help=f"dvc repro processes side by side (default {DEFAULT_JOBS}: one per pair; 1 = one "
                             "plain `dvc repro`, one stage at a time)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        build_parser().error("--jobs must be at least 1")
    return report_errors("stitch-ops repro", lambda: repro(args.root, args.jobs), debug=args.debug)
