"""`make run` from a fresh clone, timed stage by stage, with CPU utilisation and disk use.

Clones the repository (its committed HEAD) into a temporary folder, runs `make install`
there (timed; `--venv` reuses an existing environment instead and skips it), then what
`make run` runs: `dvc init` if the clone has no `.dvc`, `stitch-ops profile NAME` when
`--profile` is given, and `stitch-ops repro --jobs N` (default: as `make run`, two stages side
by side; 1: one plain `dvc repro`). Every line it prints is time-stamped as it arrives. A stage
run side by side takes what `stitch-ops repro` reports for its `dvc repro` process (its
``[k/n] <stage> done in S s`` line): DVC's own work for the stage included (checking it,
hashing and caching its outputs); one run by a plain `dvc repro` (``--jobs 1``, or what a
failure left to the final one) runs from its ``Running stage '...'`` line to the next one (or
the end). Stages that run side by side overlap: their shares then add up to more than the
wall time.

Printed: one row per stage (wall seconds, share of the total), the same summed per stage
family (``train``, ``stitch_select``, ...), the total with the install, the CPU utilisation
(CPU time of every process the run started and waited for / wall time / cores), and the
disk use of each top-level folder of the clone after the run (hard-linked files counted
once, in the first folder listed: the DVC cache row is what the cache adds). Results go to
``bench/results/pipeline.json``.

    python bench/pipeline.py [--profile smoke|quick|paper] [--jobs N] [--venv .venv] [--keep] [--workdir /tmp]

On a shared machine the wall times include waiting for a core; the CPU utilisation says
how much of the machine the run used.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import print_table, save_results  # noqa: E402

# `stitch-ops repro` prefixes the lines of a stage's own `dvc repro` process with "[stage] "
STAGE_LINE = re.compile(r"^(?:\[([^\]]+)\] )?Running stage '([^']+)'")
SIDE_BY_SIDE_END = re.compile(r"^stitch-ops repro: \[\d+/\d+\] (\S+) (?:done|failed \(exit -?\d+\)) in ([\d.]+) s")
# top-level entries reported after the run, workspace first so that the DVC cache row
# counts only what the cache adds (hard links are counted once, where first seen)
DISK_ORDER = ("data", "models", "predictions", "scores", "metrics", "exports", "sweeps", "reports", "plots",
              "mlruns", "mlflow.db", ".dvc/cache")
SKIPPED = (".git", ".venv")  # the clone's history and its environment: not the run's output


@dataclass(frozen=True)
class StageTime:
    stage: str
    seconds: float


def run_environment(venv: Path) -> dict[str, str]:
    """The environment `make run` gives its commands: the venv first on PATH, CPU defaults,
    no MLflow store or nnU-Net folders from the caller's shell."""
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", nnUNet_def_n_proc="1", nnUNet_compile="f", PYTHONUNBUFFERED="1")
    for key in ("MLFLOW_TRACKING_URI", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA",
                "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(key, None)
    return env


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run ``command`` to the end (its output appended to ``log``); returns its wall seconds."""
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"bench/pipeline.py: {' '.join(command)} exited {result.returncode}; see {log}")
    return time.monotonic() - start


def repro_by_stage(command: list[str], cwd: Path, env: dict[str, str],
                   log: Path) -> tuple[list[StageTime], float]:
    """``command`` (`stitch-ops repro`), each output line time-stamped on arrival; returns the
    wall times of the stages that ran (see the module docstring) and the whole command's."""
    start = time.monotonic()
    stages: list[StageTime] = []
    side_by_side: set[str] = set()  # stages whose own `dvc repro` ran them (not just found them unchanged)
    plain: tuple[str, float] | None = None  # the stage a plain `dvc repro` runs, since when

    def finish_plain(now: float) -> None:
        nonlocal plain
        if plain:
            stages.append(StageTime(plain[0], now - plain[1]))
            plain = None

    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            now = time.monotonic()
            out.write(f"[{now - start:9.1f}s] {line}")
            text = line.strip()
            started, ended = STAGE_LINE.match(text), SIDE_BY_SIDE_END.match(text)
            if started and started.group(1):
                side_by_side.add(started.group(2))
            elif started:
                finish_plain(now)
                plain = (started.group(2), now)
            if started:
                print(f"  {now - start:7.0f} s  {started.group(2)}", flush=True)
            if ended and ended.group(1) in side_by_side:
                stages.append(StageTime(ended.group(1), float(ended.group(2))))
        code = process.wait()
    end = time.monotonic()
    if code != 0:
        raise SystemExit(f"bench/pipeline.py: {' '.join(command)} exited {code}; see {log}")
    finish_plain(end)
    return stages, end - start


def disk_use(root: Path) -> dict[str, int]:
    """Bytes on disk (allocated blocks, as ``du``) of each entry of ``DISK_ORDER`` in ``root``
    and of everything else but ``.git``/``.venv`` (sources, ``.dvc/tmp``, ...), hard-linked
    files counted once, in the first entry that holds them."""
    seen: set[tuple[int, int]] = set()

    def size(paths: list[Path]) -> int:
        total = 0
        for top in paths:
            for path in [top, *top.rglob("*")] if top.is_dir() and not top.is_symlink() else [top]:
                info = path.lstat()
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
        return total

    use = {name: size([root / name]) for name in DISK_ORDER if (root / name).exists()}
    rest = [p for p in root.iterdir() if p.name not in (*SKIPPED, ".dvc") and p.name not in use]
    rest += [p for p in (root / ".dvc").iterdir() if p.name != "cache"] if (root / ".dvc").is_dir() else []
    use["everything else (sources, .dvc/tmp, ...)"] = size(rest)
    return use


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report(stages: list[StageTime], clone: Path, *, commit: str, profile: str, install_s: float | None,
           setup_s: float, repro_s: float, cpu_s: float) -> Path:
    """Print the tables (by stage, by stage family, disk use) and the totals; write
    ``bench/results/pipeline.json``; returns its path."""
    total_s = (install_s or 0.0) + setup_s + repro_s
    cores = len(os.sched_getaffinity(0))

    rows = [(s.stage, f"{s.seconds:.1f}", f"{100 * s.seconds / total_s:.1f} %") for s in stages]
    families: dict[str, float] = {}
    for s in stages:
        families[s.stage.split("@")[0]] = families.get(s.stage.split("@")[0], 0.0) + s.seconds
    overhead = [("install (make install)", install_s if install_s is not None else 0.0),
                ("dvc init + profile", setup_s),
                ("repro outside the stages' lines (0 or less when stages ran side by side)",
                 repro_s - sum(s.seconds for s in stages))]
    print_table(f"`make run` from a fresh clone, {profile} profile, by stage", rows, ("stage", "wall s", "share"))
    family_rows = [(name, f"{seconds:.1f}", f"{100 * seconds / total_s:.1f} %")
                   for name, seconds in sorted(families.items(), key=lambda item: -item[1])]
    family_rows += [(name, f"{seconds:.1f}" if install_s is not None or "install" not in name else "skipped",
                     f"{100 * seconds / total_s:.1f} %") for name, seconds in overhead]
    print_table("by stage family", family_rows, ("stage family", "wall s", "share"))
    utilisation = cpu_s / (repro_s + setup_s + (install_s or 0.0)) / cores
    print(f"\ntotal {total_s:.0f} s = {total_s / 60:.1f} min"
          f" ({'install included' if install_s is not None else 'install skipped: --venv'}); "
          f"CPU {cpu_s:.0f} s over {cores} cores: utilisation {100 * utilisation:.0f} %")

    disk = disk_use(clone)
    print_table("disk use after the run (hard links counted once, in the first folder)",
                [(name, f"{size / 1e6:.1f}") for name, size in disk.items()] +
                [("total (without .git, .venv)", f"{sum(disk.values()) / 1e6:.1f}")], ("folder", "MB"))
    path = save_results("pipeline", {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit, "profile": profile,
        "cores": cores, "install_s": install_s, "setup_s": setup_s, "repro_s": repro_s, "total_s": total_s,
        "cpu_s": cpu_s, "cpu_utilisation": utilisation, "stages": [asdict(s) for s in stages],
        "stage_families": families, "disk_bytes": disk, "disk_total_bytes": sum(disk.values())})
    print(f"\nwrote {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default=None,
                        help="profile to run (default: the one params.yaml of the clone sets, as `make run`)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="`stitch-ops repro --jobs` (default: none given, what `make run` runs: the pairs side by "
                             "side; 1: one plain `dvc repro`)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository to clone (default: this checkout)")
    parser.add_argument("--venv", type=Path, default=None,
                        help="use this existing environment instead of `make install` in the clone (not timed)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to clone (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (default: delete it afterwards)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="stitch_ops_bench_", dir=args.workdir))
    clone = workdir / "stitch_ops"
    log = workdir / "pipeline.log"
    subprocess.run(["git", "clone", "--quiet", str(args.repo.resolve()), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    print(f"clone of {args.repo} at {commit[:12]} in {clone}; log: {log}", flush=True)
    cpu_before = children_cpu_seconds()
    if args.venv is None:
        venv = clone / ".venv"
        print("make install ...", flush=True)
        install_s: float | None = timed(["make", "install"], clone, run_environment(venv), log)
    else:
        venv, install_s = args.venv.resolve(), None
    env = run_environment(venv)
    setup_s = 0.0
    if not (clone / ".dvc").is_dir():
        setup_s += timed(["dvc", "init", "--quiet"], clone, env, log)
    if args.profile is not None:
        # `make run` calls the installed `stitch-ops`; `-m` in the clone runs the same code with --venv too
        setup_s += timed(["python", "-m", "stitch_ops.cli", "profile", args.profile], clone, env, log)
    profile = next((line.split(":", 1)[1].strip() for line in (clone / "params.yaml").read_text().splitlines()
                    if line.startswith("profile:")), "?")
    # `make run` calls the installed `stitch-ops repro`; `-m` in the clone runs the clone's code with --venv too
    command = ["python", "-m", "stitch_ops.cli", "repro", *(["--jobs", str(args.jobs)] if args.jobs else [])]
    print(f"{' '.join(command)} of the {profile} profile ...", flush=True)
    stages, repro_s = repro_by_stage(command, clone, env, log)
    cpu_s = children_cpu_seconds() - cpu_before
    report(stages, clone, commit=commit, profile=profile, install_s=install_s, setup_s=setup_s, repro_s=repro_s,
           cpu_s=cpu_s)
    if args.keep:
        print(f"kept the clone: {clone}")
    else:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
