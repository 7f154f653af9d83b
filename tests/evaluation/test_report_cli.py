"""`stitch-ops report` as a user runs it: the files, the MLflow run, the page in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import check_page
from tests.evaluation.report_tree import EXPECTED, write_tree

REPO = Path(__file__).resolve().parents[2]


def stitch_ops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitch_ops.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout with a hand-made polyp metrics tree, reported by the CLI (pelvis has no results)."""
    root = tmp_path_factory.mktemp("reported")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_tree(root, pair="polyp")
    result = stitch_ops("report", "--pair", "polyp", "--no-progress", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    result = stitch_ops("report", "--index", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_cli_writes_the_report_files_and_one_mlflow_run(reported: Path):
    reports = reported / "reports"
    for name in ("polyp.html", "polyp.md", "index.html", "metrics/polyp.json", "polyp/figures/biobjective_mean.png",
                 "polyp/tables/wilcoxon_holm.csv"):
        assert (reports / name).is_file(), name
    verdicts = json.loads((reports / "metrics" / "polyp.json").read_text())["findings"]["verdicts"]
    assert verdicts == {str(k): v for k, v in EXPECTED.items()}

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{reported / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stitch_ops/polyp")
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'report'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert 0 < metrics["wilcoxon/a/stitch_via_a_double_batched/dice_p_holm"] <= 1
    assert metrics["findings/5"] == 1.0 and metrics["findings/3"] == 0.0
    assert runs[0].data.tags["dvc.stage"] == "report@polyp"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"polyp.html", "polyp.md", "figures", "tables"} <= artifacts


def test_every_figure_renders_in_headless_chromium_without_errors(reported: Path):
    for page in ("polyp.html", "index.html"):
        check = check_page(reported / "reports" / page)
        assert check.errors == [], (page, check.errors)
        if page == "polyp.html":  # the seven of the experiment and the ablation's
            assert len(check.images) == 8
            assert any(alt.startswith("Ablation: gap closed vs distance") for alt, _ in check.images)
        assert all(width > 0 for _, width in check.images), check.images


def test_the_browser_check_can_fail(tmp_path: Path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img alt=gone src='missing.png'>"
                    "<script>console.error('boom')</script></body></html>")
    check = check_page(page)
    assert check.images == [("gone", 0)]
    assert any("boom" in e for e in check.errors) and any("missing.png" in e for e in check.errors)


def test_unknown_pair_is_one_line_exit_2(reported: Path):
    result = stitch_ops("report", "--pair", "knee", cwd=reported)
    assert result.returncode == 2
    assert "unknown pair(s) ['knee']" in result.stderr and "Traceback" not in result.stderr


def test_a_rerun_replaces_only_the_reports_own_files(reported: Path):
    reports = reported / "reports"
    mine = [reports / "notes.txt", reports / "polyp" / "notes.txt"]
    for path in mine:
        path.write_text("mine")
    result = stitch_ops("report", "--pair", "polyp", "--no-progress", "--no-mlflow", cwd=reported)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(path.read_text() == "mine" for path in mine)
    assert (reports / "polyp" / "tables" / "wilcoxon_holm.csv").is_file()
    result = stitch_ops("report", "--pair", "polyp", "--out", "reports/polyp.html", cwd=reported)
    assert result.returncode == 2 and "--out reports/polyp.html is an existing file" in result.stderr
