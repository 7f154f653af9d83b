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


@contextmanager
def mlflow_server(store_uri: str, *, port: int | None = None, host: str = LOCALHOST,
                  timeout_s: float = 180.0, log_file: Path | None = None) -> Iterator[str]:
    """Run ``mlflow server`` on ``store_uri`` (one worker) until the block ends.

    Yields:
        The server's base URL, once its ``/health`` answers.

    Raises:
        RuntimeError: if the server exits or does not answer within ``timeout_s``.
    """
    port = port or free_port(host)
    base_url = f"http://{host}:{port}"
    output = open(log_file, "w") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen([*_mlflow_command(), "server", "--backend-store-uri", store_uri, "--host", host,
                                "--port", str(port), "--workers", "1"], stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with status {process.returncode}"
                                   + (f"; see {log_file}" if log_file else ""))
            try:
                with urllib.request.urlopen(f"{base_url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer on {base_url} within {timeout_s:.0f} s")
            time.sleep(0.5)
        logger.info("MLflow UI at %s (store %s)", base_url, store_uri)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_file is not None:
            output.close()


def experiment_links(store_uri: str, base_url: str) -> dict[str, str]:
    """The project's experiments (``stitch_ops/<pair>``) → their runs-table links."""
    from mlflow import MlflowClient

    from stitch_ops.tracking.runs import EXPERIMENT_PREFIX

    experiments = MlflowClient(tracking_uri=store_uri).search_experiments(
        filter_string=f"name LIKE '{EXPERIMENT_PREFIX}/%'")
    return {e.name: runs_table_url(base_url, e.experiment_id) for e in sorted(experiments, key=lambda e: e.name)}
