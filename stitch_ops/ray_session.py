"""Connecting to Ray: a local Ray on this machine, or an existing cluster through ``address``.

One module for every stage that runs Ray work (federated learning, the fine-tuning sweep,
the stitch search), free of trainer imports, so that a stage's ``dvc.yaml`` deps stay its own.

``address=None`` starts Ray here with the CPUs the caller asks for and stops it afterwards: a
Ray of its own (``ray.init(address="local")``), never one that ``RAY_ADDRESS`` or an earlier
``ray start`` on this machine names, which a bare ``ray.init()`` would join.
``address="head:6379"`` (what ``ray start --head`` prints, or ``"auto"`` on a node of the
cluster) joins the cluster unchanged: nothing about its resources is passed, and afterwards
the driver only disconnects, the cluster keeps running. Paths handed to Ray work must be
absolute and mean the same on every node (one shared filesystem).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)


WORKER_NICENESS = 0
"""How much a local Ray lowers its workers' priority (nice increment): not at all, they run at
the driver's. Ray's default is 15, which keeps its own processes responsive; here the workers
(federated parties, sweep and search trials) *are* the work, and beside any other busy process
(the stage ``stitch-ops repro`` runs beside it, the other test worker) they got a few per cent
of a core: a federated test took 596 s instead of 23 with two busy processes beside it."""


@dataclass(frozen=True)
class RayOptions:
    """How to reach Ray: ``address=None`` starts it locally."""

    address: str | None = None
    cpus_per_party: int = 1
    pin_parties: bool = False


def init_ray(options: RayOptions, n_workers: int) -> bool:
    """``ray.init()`` locally (``n_workers × cpus_per_party`` CPUs) or on ``options.address``
    (an existing cluster: its resources are its own, so none are passed). Returns False when
    this process was already connected to Ray (that connection is used as it is).

    Raises:
        UserError: the cluster at ``options.address`` cannot be reached.
    """
    import ray

    if ray.is_initialized():
        logger.info("using the Ray this process is already connected to (%s)",
                    ray.get_runtime_context().gcs_address)
        return False
    if options.address:
        try:
            check_reachable(options.address)
            ray.init(address=options.address, logging_level=logging.WARNING)
        except ConnectionError as err:
            from stitch_ops.errors import UserError

            raise UserError(f"cannot reach the Ray cluster at {options.address!r} ({str(err).splitlines()[0]}); "
                            "start it with `ray start --head` and give the address it prints (or null to start "
                            "Ray on this machine); a cluster with token authentication also needs "
                            "RAY_AUTH_MODE=token and its token here") from err
        logger.info("joined the Ray cluster at %s: %s", options.address, ray.cluster_resources())
    else:
        ray.init(address="local", num_cpus=n_workers * options.cpus_per_party, include_dashboard=False,
                 object_store_memory=256 * 1024 ** 2, logging_level=logging.WARNING,
                 _system_config={"worker_niceness": WORKER_NICENESS})
    return True


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once when nothing listens at a ``host:port`` address (``ray.init`` retries
    for many minutes before it gives up); other forms (``auto``) are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port}: {err.strerror or err}") from err


@contextmanager
def ray_connection(options: RayOptions, n_workers: int) -> Iterator[None]:
    """Connected to Ray for the block (:func:`init_ray`); afterwards this process
    disconnects again if it connected here. ``ray.shutdown()`` stops only a Ray this
    process started; a cluster joined through ``options.address`` keeps running."""
    import ray

    connected = init_ray(options, n_workers)
    try:
        yield
    finally:
        if connected:
            ray.shutdown()
