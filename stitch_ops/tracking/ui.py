"""The MLflow UI on the project's store, opened where a model-training user expects it.

MLflow 3's UI has two workflows, *GenAI* (traces, token usage) and *model training* (the
runs table with training curves, datasets and models). Experiments created by
:mod:`stitch_ops.tracking` carry the tag ``mlflow.experimentKind =
custom_model_development``, which is how MLflow marks a model-training experiment; the UI
of MLflow >= 3.5 picks the workflow from a switch at the top of the page instead (query
parameter ``workflowType``, remembered per browser), so the links printed here select it:
``/#/experiments/<id>/runs?workflowType=machine_learning``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL_TRAINING_QUERY = "workflowType=machine_learning"
LOCALHOST = "127.0.0.1"


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """Link that opens an experiment on the runs table of the model-training view."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


class ServerError(RuntimeError):
    """The MLflow server did not start."""


@contextmanager
def mlflow_server(store_uri: str, *, port: int | None = None, host: str = LOCALHOST,
                  timeout_s: float | None = None, log_file: Path | None = None) -> Iterator[str]:
    """Run ``mlflow server`` on ``store_uri`` (one worker) until the block ends.

    The server runs in its own process group, and the whole group is stopped at the end: MLflow's
    own workers (``huey_consumer``, ~190 MB each) go with it.

    Args:
        timeout_s: give up if ``/health`` does not answer within this many seconds; ``None``
            (default): wait as long as the server process lives (on a loaded machine it took
            15 minutes to start), saying every minute that it is still starting.

    Yields:
        The server's base URL, once its ``/health`` answers.

    Raises:
        ServerError: if the server exits before it answers, or does not answer within ``timeout_s``.
    """
    port = port or free_port(host)
    base_url = f"http://{host}:{port}"
    output = open(log_file, "w") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen([*_mlflow_command(), "server", "--backend-store-uri", store_uri, "--host", host,
                                "--port", str(port), "--workers", "1"], stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        _wait_until_healthy(process, base_url, timeout_s, log_file)
        logger.info("MLflow UI at %s (store %s)", base_url, store_uri)
        yield base_url
    finally:
        stop_process_group(process)
        if log_file is not None:
            output.close()


def _wait_until_healthy(process: subprocess.Popen, base_url: str, timeout_s: float | None,
                        log_file: Path | None) -> None:
    started = time.monotonic()
    said = started
    see = f"; see {log_file}" if log_file else ""
    while True:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with status {process.returncode} before answering{see}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        now = time.monotonic()
        if timeout_s is not None and now - started > timeout_s:
            raise ServerError(f"mlflow server did not answer on {base_url} within {timeout_s:.0f} s{see}; "
                              f"on a loaded machine it can take minutes: try again without a time limit")
        if now - said >= 60:
            logger.warning("mlflow server still starting after %.0f s (Ctrl-C to give up)", now - started)
            said = now
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop ``process`` and every process of its group (it must lead one: ``start_new_session``):
    SIGTERM, then SIGKILL for whatever is left after ``grace_s``."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        group = process.pid  # already gone: its group may still hold workers
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(group, signal.SIGKILL)
    if process.poll() is None:
        process.wait()


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def experiment_links(store_uri: str, base_url: str) -> dict[str, str]:
    """The project's experiments (``stitch_ops/<pair>``) → their runs-table links."""
    from mlflow import MlflowClient

    from stitch_ops.tracking.runs import EXPERIMENT_PREFIX

    experiments = MlflowClient(tracking_uri=store_uri).search_experiments(
        filter_string=f"name LIKE '{EXPERIMENT_PREFIX}/%'")
    return {e.name: runs_table_url(base_url, e.experiment_id) for e in sorted(experiments, key=lambda e: e.name)}
