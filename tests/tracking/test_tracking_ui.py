"""The MLflow UI as a user opens it: a real `mlflow server` on 127.0.0.1 and headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from stitch_ops import tracking
from stitch_ops.tracking import live
from stitch_ops.tracking.datasets import DataInput
from stitch_ops.tracking.ui import experiment_links, mlflow_server

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser(*args: str, url: str, profile: Path) -> str:
    """Headless Chromium on ``url``, after the page's scripts had 20 s (virtual time). A profile of
    its own: a browser another test (or worker) started on the default profile would take the call."""
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    assert binary is not None, "this test needs Chromium: apt-get install -y chromium"
    result = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000",
                             *args, url],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_experiment_opens_on_the_runs_table_with_duration_and_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.configure(tmp_path)
    data = tmp_path / "data" / "toy" / "a"
    data.mkdir(parents=True)
    (data / "case_0.png").write_bytes(b"fake")
    with live.model_run(experiment="stitch_ops/toy", identity=live.model_identity("toy", "local", "a", 0),
                        run_name="local:a:fold0", dvc_stage="train@toy-a-0") as run:
        run.log_inputs([DataInput("toy/a/train", data.relative_to(tmp_path), "training")])
        for epoch in range(3):
            run.log_epoch(epoch, {"train_loss": 1.0 / (epoch + 1)})
            time.sleep(0.4)
    live.finish_model_run(experiment="stitch_ops/toy", identity=live.model_identity("toy", "local", "a", 0),
                          tags={}, params={}, metrics={"test_a/dice_mean": 0.7}, run_name="local:a:fold0")

    with mlflow_server(uri, log_file=tmp_path / "server.log") as base_url:
        url = experiment_links(uri, base_url)["stitch_ops/toy"]
        assert url.endswith("/runs?workflowType=machine_learning")
        text = visible_text(browser("--dump-dom", url=url, profile=tmp_path / "chromium"))
        browser(f"--screenshot={tmp_path / 'runs_table.png'}", url=url, profile=tmp_path / "chromium")

    assert "Run Name" in text and "Duration" in text, text[:2000]  # the runs table ...
    assert "local:a:fold0" in text and "toy/a/train" in text  # ... with our run and its dataset
    assert "Token Usage" not in text and "Traces 0" not in text  # not the GenAI overview
    assert re.search(r"\b[1-9]\d*(\.\d+)?s\b", text), "the run lasts its training (>= 1.2 s), not milliseconds"
    assert (tmp_path / "runs_table.png").stat().st_size > 10_000
