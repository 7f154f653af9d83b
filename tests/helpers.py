"""Shared helpers for tests that run the real pipeline in a scratch copy of the repository."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", "bundles", "stitch_ops")
# what stitch_ops.nnunet.env.configure sets for the whole process
NNUNET_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA",
                    "nnUNet_def_n_proc", "nnUNet_compile")
# what mlflow.set_tracking_uri exports: left set, every later subprocess of the test process (a
# CLI call, a DVC stage) would record its runs in that store instead of its own checkout's
PROCESS_VARIABLES = (*NNUNET_VARIABLES, "MLFLOW_TRACKING_URI")


@contextmanager
def kept_global_state() -> Iterator[None]:
    """Restore the environment variables libraries set for the whole process (nnU-Net's,
    MLflow's tracking URI) and the global random generators (Python, NumPy, torch) on exit: for
    tests and session fixtures that call code which sets them. Under ``make test`` a worker
    runs many test files one after another, so what one test sets must not reach the next."""
    import numpy as np
    import torch

    environment = {key: os.environ.get(key) for key in PROCESS_VARIABLES}
    generators = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.set_rng_state(generators[2])


def pipeline_env() -> dict[str, str]:
    """The environment a user's `make run` gives: this interpreter first on PATH, CPU defaults."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", nnUNet_def_n_proc="1", nnUNet_compile="f")
    env.pop("MLFLOW_TRACKING_URI", None)
    # a user's shell has no nnU-Net folders set: the stages set them for themselves
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA"):
        env.pop(key, None)
    return env


def copy_pipeline(target: Path) -> Path:
    """A scratch checkout holding what `dvc repro` needs, initialised as a DVC project with
    the repository's DVC settings (``.dvc/config``: the cache links instead of copying)."""
    from configobj import ConfigObj

    target.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    run(["dvc", "init", "--no-scm", "-q"], target)
    config = ConfigObj(str(target / ".dvc" / "config"))
    config.merge(ConfigObj(str(REPO / ".dvc" / "config")))
    config.write()
    return target


def run(command: list[str], cwd: Path, timeout: int = 3600) -> subprocess.CompletedProcess:
    """Run a command like a user would; fail the test with its output if it fails."""
    result = subprocess.run(command, cwd=cwd, env=pipeline_env(), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n"
                             f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def optimizer_state_files(folder: Path) -> list[Path]:
    """Every ``.pth``/``.pt`` file under ``folder`` that holds an optimizer's state (an nnU-Net
    checkpoint, a FedAvg party's local state, a stitch training checkpoint), sorted."""
    import torch

    found = []
    for path in sorted(folder.rglob("*.pt*")):
        if path.is_file() and path.suffix in (".pth", ".pt"):
            # files the test's own run wrote (nnU-Net's hold numpy scalars, hence weights_only=False)
            saved = torch.load(path, map_location="cpu", weights_only=False)
            if isinstance(saved, dict) and any("optimizer" in str(key) for key in saved):
                found.append(path)
    return found
