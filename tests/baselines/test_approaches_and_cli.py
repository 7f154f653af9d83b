"""Params sections of the baselines; the command line (their slugs: tests/test_approaches.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stitch_ops.baselines.config import FederatedParams, SweepParams
from stitch_ops.config import ConfigError


def test_sweep_and_federated_params_are_checked_when_built():
    assert SweepParams(lr_min=1e-4, lr_max=1e-2).decades == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="below"):
        SweepParams(lr_min=1e-2, lr_max=1e-3)
    with pytest.raises(ConfigError, match="routes"):
        SweepParams(routes=("a",))
    with pytest.raises(ConfigError, match="rounds"):
        FederatedParams(rounds=0)


def test_cli_help_lists_every_baseline_command():
    out = subprocess.run([sys.executable, "-m", "stitch_ops.baselines", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("transfer-plans", "joint-plans", "finetune", "ensemble", "federated", "merged", "sweep"):
        assert command in out
    bad = subprocess.run([sys.executable, "-m", "stitch_ops.baselines", "finetune", "--pair", "polyp",
                          "--trained-on", "a", "--fold", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
