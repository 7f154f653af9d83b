"""The `stitch-ops` command as a user meets it: help everywhere, clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def stitch_ops(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitch_ops.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_stage():
    result = stitch_ops("--help")
    assert result.returncode == 0
    for stage in ("data", "nnunet", "stitching", "evaluation", "baselines", "bundle", "report", "profile"):
        assert stage in result.stdout


@pytest.mark.parametrize("command", [
    ["data", "--help"], ["data", "prepare", "--help"], ["data", "split", "--help"],
    ["data", "convert", "--help"], ["nnunet", "--help"], ["nnunet", "plan", "--help"],
    ["nnunet", "train", "--help"], ["nnunet", "predict", "--help"], ["evaluation", "--help"],
    ["bundle", "export", "--help"], ["bundle", "verify", "--help"], ["profile", "--help"],
    ["stitching", "train", "--help"], ["stitching", "select", "--help"], ["baselines", "--help"], ["report", "--help"],
])
def test_every_subcommand_explains_itself(command):
    result = stitch_ops(*command)
    assert result.returncode == 0, result.stderr
    assert "usage: stitch-ops" in result.stdout
    assert "--" in result.stdout  # documents at least one option


def test_unknown_pair_is_a_one_line_error():
    result = stitch_ops("data", "prepare", "--pair", "knee")
    assert result.returncode == 2
    assert "pair 'knee' is not in params 'data'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_params_file_is_a_clear_error(tmp_path: Path):
    result = stitch_ops("nnunet", "train", "--pair", "polyp", "--party", "a", "--fold", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "no params file" in result.stderr
