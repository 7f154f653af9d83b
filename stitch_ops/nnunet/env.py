"""nnU-Net's environment: its three folders and the defaults for a 2-core CPU machine."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from stitch_ops.config import NNUNET_CPU_DEFAULTS
from stitch_ops.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NnUNetRoots:
    """The three folders nnU-Net reads from ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results``."""

    raw: Path | None = None
    preprocessed: Path | None = None
    results: Path | None = None

    def as_environment(self) -> dict[str, str]:
        named = {"nnUNet_raw": self.raw, "nnUNet_preprocessed": self.preprocessed,
                 "nnUNet_results": self.results}
        return {key: str(path.resolve()) for key, path in named.items() if path is not None}


def configure(roots: NnUNetRoots, *, training: bool = False) -> None:
    """Point nnU-Net at ``roots`` and apply the CPU defaults.

    nnunetv2 (>= 2.6) reads these variables each time it needs a folder, so this may be
    called again in the same process for another stage.

    Args:
        roots: folders for this process; ``None`` entries stay as the environment has them.
        training: also set ``nnUNet_n_proc_DA=0`` (in-process augmentation). Not for
            planning: the planner calls ``torch.set_num_threads(n_proc_DA)``, which fails on 0.
    """
    wanted = roots.as_environment()
    os.environ.update(wanted)
    for key, value in NNUNET_CPU_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if training and not torch.cuda.is_available():
        os.environ.setdefault("nnUNet_n_proc_DA", "0")
    logger.debug("nnU-Net environment: %s", wanted)


@contextmanager
def planning_environment() -> Iterator[None]:
    """Run nnU-Net's planner without ``nnUNet_n_proc_DA``.

    The planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails on the 0 that
    training on a CPU sets (:func:`configure` with ``training=True``, possibly earlier in the
    same process); the variable is restored afterwards.
    """
    saved = os.environ.pop("nnUNet_n_proc_DA", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved


@contextmanager
def nnunet_threads() -> Iterator[None]:
    """At most ``nnUNet_def_n_proc`` torch threads inside (nnU-Net's rule for its predictor; 1
    on the 2-core default, :data:`~stitch_ops.config.NNUNET_CPU_DEFAULTS`), torch's own count
    restored afterwards.

    Prediction and the pipeline's stitch training run this way. Beside another stage (as
    ``stitch-ops repro`` runs two), a second thread on a shared core costs more than it gives:
    the waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE``) and are woken for every operation
    (``bench/stitch_threads.py``: stitch training with one thread takes 0.91 x the time of two
    beside another training, 0.89 x alone). A result depends on the thread count in its last
    digits, so it follows this variable, not the number of cores or how the stage was started.
    """
    from nnunetv2.configuration import default_num_processes

    threads = torch.get_num_threads()
    torch.set_num_threads(min(default_num_processes, threads))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; asking for ``cuda`` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but torch sees no GPU; "
                           "set nnunet.device to 'auto' or 'cpu' in params.yaml")
    return torch.device(device)
