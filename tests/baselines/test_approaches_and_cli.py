"""Slugs, perspectives and shorthands of the baselines; params sections; the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stitch_ops.baselines import approaches
from stitch_ops.baselines.config import FederatedParams, SweepParams
from stitch_ops.config import ConfigError


def test_model_ids_name_the_paper_approaches():
    assert approaches.finetuned("b").tags() == {"perspective": "b", "shorthand": "a→b"}
    assert approaches.finetuned("b").trained_on == "a_to_b"
    assert approaches.ensemble_finetuned("a").trained_on == "a_and_b_to_a"
    assert approaches.ensemble_finetuned("a").shorthand == "a&b→a"
    assert {m.shorthand for m in (approaches.ensemble(), approaches.federated(), approaches.merged())} == {
        "a&b", "a‖b", "a+b"}
    assert approaches.lookup("federated", "a_fed_b") == approaches.federated()
    assert approaches.lookup("stitch", "a_b_c") is None
    assert approaches.finetuning_party("b_to_a") == "a"
    with pytest.raises(ValueError, match="a_to_b"):
        approaches.finetuning_party("a")


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


def test_stitch_models_of_issue_7_are_in_the_table():
    mirrored = approaches.stitch_ensemble("b", "direct_matching", finetuned=True)
    assert approaches.stitch_ensemble("a", "double_batched", finetuned=True).shorthand == "a←[a]→b→a"
    assert (mirrored.shorthand, mirrored.trained_on, mirrored.perspective) == (
        "b←[b]→a→b", "via_b_direct_matching_finetuned", "b")
    strategy = approaches.lookup("stitch", "via_a_double_batched_rule_of_thumb")
    assert strategy is not None and strategy.tags()["selection"] == "rule_of_thumb"
    assert approaches.lookup("stitch", "via_a_double_batched").tags()["selection"] == "current_fold"
    assert approaches.lookup("stitch", "via_b_direct_matching_finetuned_all_folds").selection == "all_folds"
    reference = approaches.lookup("stitch", "no_stitch_via_a_finetuned")
    assert reference == approaches.no_stitch("a", finetuned=True) and reference.perspective == "a"
    assert "selection" not in reference.tags()
    assert approaches.no_stitch("b").trained_on == "no_stitch_via_b"
    slugs = [(m.approach, m.trained_on) for m in approaches.all_models()]
    assert len(slugs) == len(set(slugs))
    with pytest.raises(ValueError, match="selection must be one of"):
        approaches.stitch_ensemble("a", "double_batched", selection="best_on_test")
