"""``stitch-ops repro``: the whole pipeline, as ``dvc repro``, with independent stages run side by side.

One ``dvc repro`` runs one stage at a time, and most stages keep one core busy: nnU-Net
predicts on ``nnUNet_def_n_proc`` (1) threads, and every stage pays Python, torch and MONAI
start-up for a few seconds of work. On 2 cores that leaves about half the machine idle.

So the stages run from a ready queue, up to ``jobs`` at a time, each in a
``dvc --wait-for-lock repro --single-item <stage>`` process of its own, as soon as every stage
it depends on has finished (DVC holds its repository lock only between commands, and
``--wait-for-lock`` makes each process wait for the other's bookkeeping instead of failing).
Which stages run is asked of ``dvc status`` first: the stages it finds changed, and every
stage downstream of one; a rerun with nothing changed starts no stage process. After an edit
of the package, the stage that records each stage's code (``code_digests``) runs first, alone,
and ``dvc status`` is asked again: only the stages whose code changed are left. Of the ready
stages, the one with the longest chain of stages waiting on it goes first, so the long pair's
chain is never left for the end while a core idles (``quick`` from a fresh clone: 92.8 min with
both cores busy to the end, against 112.2 min with one ``dvc repro`` per pair, when the pelvis
pair's stages ran 23 minutes alone; ``bench/README.md``). A final plain ``dvc repro`` runs
whatever is left and checks that everything is up to date. ``--jobs 1`` is exactly ``dvc repro``.

If a stage fails, the stages that need it are not started, the others go on, and the final
``dvc repro`` runs every stage left one at a time: a stage that failed only because another
ran beside it (one of four smoke runs lost a stage that passes alone, cause not found) then
finishes, and one that fails for a real reason fails again there, with its error last on the
screen.

The stages keep torch's own thread count, so each computes exactly what it computes under
a plain ``dvc repro`` (results depend on the thread count in their last digits; the same seed
gives the same ``summary.json`` either way, and a run resumed with ``dvc repro`` matches).
Where two stages' threads meet on too few cores, OpenMP's waiting threads sleep instead of
spinning (``OMP_WAIT_POLICY=PASSIVE``), which changes no result.

The side-by-side stages start warm: a server started here imports torch, nnU-Net and MLflow
once, and each stage command forks its work from it instead of importing them again
(:mod:`stitch_ops.warm_start`; ``--no-warm-start`` turns this off). The stage, its code, its
environment and its results are the same; DVC still starts the stage's own ``cmd``.

Nothing here decides how a stage runs or whether it is up to date: DVC does, stage by stage,
as always; an interrupted run resumes with the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

from stitch_ops.cli_common import one_line_usage_errors, report_errors
from stitch_ops.errors import UserError
from stitch_ops.stages.code_digests import STAGE as CODE_STAGE
from stitch_ops.warm_start import SOCKET_VARIABLE, server_command

DEFAULT_JOBS = 2
"""Stages side by side by default: one per core of the 2-core machines this is sized for."""
_print_lock = threading.Lock()
GIT_HINTS_START, GIT_HINTS_END = "To track the changes with git", "Use `dvc push`"
"""The first and last line of the hints DVC prints after every ``dvc repro`` that ran a stage:
said once at the end of the side-by-side run, not after each of its stages."""


def pipeline_upstream(root: Path) -> dict[str, set[str]]:
    """Every stage of the DVC project at ``root`` with the names of all stages it depends on."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages whose outputs it reads
        return {stage.addressing: {need.addressing for need in nx.descendants(graph, stage)}
                for stage in graph.nodes}


def downstream(stages: set[str], upstream: Mapping[str, set[str]]) -> set[str]:
    """The stages that depend on any of ``stages`` (``upstream`` is transitive)."""
    return {stage for stage, needs in upstream.items() if needs & stages}


def waiting_chains(upstream: Mapping[str, set[str]]) -> dict[str, int]:
    """For each stage, the number of stages on the longest chain that starts with it.

    ``upstream`` is transitive, so every stage downstream of another has a strictly larger
    upstream set: visiting the stages from the largest set down sees each stage's downstream
    stages before the stage itself.
    """
    chains: dict[str, int] = {}
    for stage in sorted(upstream, key=lambda name: len(upstream[name]), reverse=True):
        chains[stage] = 1 + max((chains[later] for later in downstream({stage}, upstream)), default=0)
    return chains


def ready_stages(todo: set[str], finished: set[str], upstream: Mapping[str, set[str]],
                 chains: Mapping[str, int]) -> list[str]:
    """The stages of ``todo`` whose upstream stages have all finished, longest waiting chain first."""
    ready = [stage for stage in todo if upstream[stage] <= finished]
    return sorted(ready, key=lambda stage: (-chains[stage], stage))


def changed_stages(root: Path, env: Mapping[str, str], upstream: Mapping[str, set[str]]) -> set[str]:
    """The stages ``dvc status`` finds changed, and every stage downstream of one: what ``dvc
    repro`` would run (a downstream stage whose inputs come out the same is skipped by DVC)."""
    result = subprocess.run(["dvc", "status", "--json"], cwd=root, env=dict(env), capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"dvc status exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    changed = set(json.loads(result.stdout or "{}")) & set(upstream)
    return changed | downstream(changed, upstream)


def changed_after_recording_code(root: Path, env: Mapping[str, str], upstream: Mapping[str, set[str]]) -> set[str]:
    """Run the ``code_digests`` stage alone, then ask ``dvc status`` again: every stage reads its
    record of the code it runs, so before the records are rewritten every stage is downstream of
    a change, and after it only those whose code (or other input) changed are."""
    status, seconds = run_stage(CODE_STAGE, root, env)
    if status != 0:
        raise UserError(f"stage {CODE_STAGE} failed (exit {status}, see above): no stage can run before it")
    _echo(f"stitch-ops repro: [1/1] {CODE_STAGE} done in {seconds:.1f} s\n")
    return changed_stages(root, env, upstream)


def _echo(text: str) -> None:
    with _print_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


def run_stage(stage: str, root: Path, env: Mapping[str, str]) -> tuple[int, float]:
    """``dvc --wait-for-lock repro --single-item <stage>``, each line of its output shown with
    the prefix ``[stage]``; on a failure its last lines are shown again (the other stages'
    lines may have buried the error). Returns the exit status and the wall seconds.

    ``--single-item`` runs exactly this stage, if it changed: without it the process would also
    re-check the upstream stages, and DVC locks the outputs of a stage it checks, which a stage
    beside it may be reading at that moment.
    """
    start = time.monotonic()
    process = subprocess.Popen(["dvc", "--wait-for-lock", "repro", "--single-item", stage], cwd=root,
                               env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    assert process.stdout is not None
    last: deque[str] = deque(maxlen=40)
    in_hints = False
    for line in process.stdout:
        last.append(f"[{stage}] {line}")
        in_hints = in_hints or line.startswith(GIT_HINTS_START)
        if not (in_hints or line.isspace()):
            _echo(last[-1])
        in_hints = in_hints and not line.startswith(GIT_HINTS_END)
    process.wait()
    if process.returncode != 0:
        _echo(f"--- the last lines of stage {stage} ---\n{''.join(last)}")
    return process.returncode, time.monotonic() - start


def run_side_by_side(todo: set[str], upstream: Mapping[str, set[str]], root: Path, env: Mapping[str, str],
                     jobs: int) -> dict[str, int]:
    """Run the stages of ``todo``, up to ``jobs`` at a time, each once every stage it depends on
    has finished (:func:`run_stage`), with a line for each that ends (``[3/125] train@polyp-a-0
    done in 84.2 s``; a stage DVC found unchanged ends in a second or two). A stage that needs
    a failed one is not started; the others go on. Returns the failed stages with their exit
    status."""
    chains = waiting_chains(upstream)
    finished = set(upstream) - todo
    failed: dict[str, int] = {}
    running: dict[Future[tuple[int, float]], str] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while True:
            waiting = todo - finished - set(failed) - set(running.values())
            for stage in ready_stages(waiting, finished, upstream, chains)[:jobs - len(running)]:
                running[pool.submit(run_stage, stage, root, env)] = stage
            if not running:
                return failed
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage, (status, seconds) = running.pop(future), future.result()
                if status == 0:
                    finished.add(stage)
                else:
                    failed[stage] = status
                ended = len(todo & finished) + len(failed)
                outcome = "done" if status == 0 else f"failed (exit {status})"
                _echo(f"stitch-ops repro: [{ended}/{len(todo)}] {stage} {outcome} in {seconds:.1f} s\n")


@contextmanager
def warm_start_server(root: Path, env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """A warm-start server (:mod:`stitch_ops.warm_start`) for the stages run with the
    environment this yields; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="stitch-ops-") as folder:
        path = Path(folder) / "warm-start.socket"
        server = subprocess.Popen(server_command(path), cwd=root, env=dict(env))
        try:
            yield {**env, SOCKET_VARIABLE: str(path)}
        finally:
            server.terminate()
            server.wait()


def repro(root: Path = Path("."), jobs: int = DEFAULT_JOBS, warm_start: bool = True) -> None:
    """Run the pipeline at ``root`` to the end: its changed stages side by side, up to ``jobs``
    at a time, then a plain ``dvc repro`` (``jobs=1``: only that), which also runs whatever a
    failed stage left. The side-by-side stages are forked from a warm-start server unless
    ``warm_start`` is false."""
    root = root.resolve()
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"no dvc.yaml in {root}: run from the repository root (or pass --root)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if jobs > 1:
        _create_tracking_store(root)  # before two stages would race to create its tables
        upstream = pipeline_upstream(root)
        todo = changed_stages(root, env, upstream)
        if CODE_STAGE in todo:
            todo = changed_after_recording_code(root, env, upstream)
        print(f"stitch-ops repro: {len(todo)} of {len(upstream)} stages to run (dvc status), "
              f"up to {jobs} side by side", flush=True)
        side_by_side_env = {**env, "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE")}
        if warm_start and todo:
            with warm_start_server(root, side_by_side_env) as warm_env:
                failed = run_side_by_side(todo, upstream, root, warm_env, jobs)
        else:
            failed = run_side_by_side(todo, upstream, root, side_by_side_env, jobs)
        if len(failed) < len(todo):
            print("stitch-ops repro: dvc.lock records the stages that ran (to track the changes with git: "
                  "`git add dvc.lock` and the .gitignore files DVC changed)", flush=True)
        if failed:
            print("stitch-ops repro: " + ", ".join(f"stage {stage} failed (exit {status})"
                                                    for stage, status in sorted(failed.items()))
                  + "; the stages left run one at a time now (dvc repro)", flush=True)
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env)
    if result.returncode != 0:
        raise UserError(f"dvc repro exited {result.returncode} (see above); fix the cause and run "
                        f"`stitch-ops repro` again (finished stages are kept)")


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
        description="Run the whole pipeline like `dvc repro`, independent stages side by side: each stage "
                    "`dvc status` finds changed (and each downstream of one) starts, in a `dvc repro` of its "
                    "own, as soon as the stages it needs are done; then a final `dvc repro`, which also runs "
                    "whatever a failed stage left. Resumes where it stopped. This is what `make run` runs."))
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help=f"stages side by side (default {DEFAULT_JOBS}: one per core of a 2-core machine; "
                             "1 = one plain `dvc repro`, one stage at a time)")
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                        help="start every side-by-side stage as a new Python process, as a plain `dvc repro` "
                             "does (default: fork them from one process that has imported torch, nnU-Net and "
                             "MLflow once, which saves each stage 8-12 s of CPU time; same results)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        build_parser().error("--jobs must be at least 1")
    return report_errors("stitch-ops repro", lambda: repro(args.root, args.jobs, args.warm_start), debug=args.debug)
