"""Equal training budgets: from the resolved params of every profile, no approach that trains an
nnU-Net gets fewer optimizer steps per party than a basis model; ``budget.json`` records."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from stitch_ops.baselines.config import FederatedParams, FinetuneParams, MergedParams
from stitch_ops.budget import Budget, TrainingClock, read_budget, write_budget
from stitch_ops.config import ConfigError, apply_profile, parse_params, profile_names
from stitch_ops.stages.plugin import planned_budgets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=profile_names())
def profile_params(request: pytest.FixtureRequest, tmp_path: Path):
    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text())
    return apply_profile(request.param, target)


def test_every_approach_gets_at_least_the_basis_budget(profile_params):
    budgets = planned_budgets(profile_params)
    basis = budgets["local"]
    assert basis.iterations == profile_params.nnunet.epochs * profile_params.nnunet.iterations_per_epoch
    assert set(budgets) == {"local", "finetune", "federated", "merged"}
    starved = {name: b.iterations for name, b in budgets.items() if b.iterations < basis.iterations}
    assert not starved, f"profile {profile_params.profile}: fewer steps than a basis model ({basis.iterations})"
    # the paper's defaults: fine-tuning for the basis epochs, one federated round per basis epoch
    assert budgets["finetune"].epochs == basis.epochs
    assert budgets["federated"].epochs == basis.epochs
    assert budgets["federated"].iterations_per_epoch == basis.iterations_per_epoch


def _with(raw: dict, **sections: dict):
    return parse_params({**raw, **{k: {**raw.get(k, {}), **v} for k, v in sections.items()}})


def test_null_schedule_keys_follow_the_basis_schedule():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _with(raw, nnunet={"epochs": 7, "iterations_per_epoch": 3},
                   finetune={"epochs": None, "iterations_per_epoch": None, "warmup_epochs": 2},
                   federated={"rounds": None, "iterations_per_epoch": None},
                   merged={"epochs": None, "iterations_per_epoch": None})
    assert (FinetuneParams.from_params(params).epochs, FinetuneParams.from_params(params).iterations_per_epoch) == (7, 3)
    assert (FederatedParams.from_params(params).rounds, FederatedParams.from_params(params).iterations_per_epoch) == (7, 3)
    assert (MergedParams.from_params(params).epochs, MergedParams.from_params(params).iterations_per_epoch) == (7, 3)
    # an explicit value wins; the check still sees a shortened approach
    shorter = _with(raw, merged={"epochs": 1, "iterations_per_epoch": 1})
    assert planned_budgets(shorter)["merged"].iterations == 1 < planned_budgets(shorter)["local"].iterations


def test_warmup_longer_than_the_resolved_finetuning_is_refused():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _with(raw, nnunet={"epochs": 2}, finetune={"epochs": None, "warmup_epochs": 2})
    with pytest.raises(ConfigError, match=r"warmup_epochs.*\[0, epochs=2\)"):
        FinetuneParams.from_params(params)


def test_budget_json_has_the_contract_keys(tmp_path: Path):
    budget = Budget.of_schedule(6, 25, 4, 12.3456, parties=2)
    path = write_budget(tmp_path / "metrics" / "budget.json", budget)
    record = json.loads(path.read_text())
    assert {k: record[k] for k in ("epochs", "iterations", "samples_seen", "wall_time_s")} == {
        "epochs": 6, "iterations": 150, "samples_seen": 600, "wall_time_s": 12.346}
    assert record["batch_size"] == 4 and record["parties"] == 2
    assert read_budget(path) == Budget(6, 150, 600, 12.346, {"iterations_per_epoch": 25, "batch_size": 4,
                                                              "parties": 2})
    assert not list(path.parent.glob("*.partial*"))


def test_training_clock_sums_attempts_even_failed_ones(tmp_path: Path):
    clock = TrainingClock(tmp_path)
    assert clock.seconds == 0.0
    with pytest.raises(RuntimeError, match="killed"):
        with clock:
            time.sleep(0.01)
            raise RuntimeError("killed")
    first = clock.seconds
    assert first >= 0.01
    with TrainingClock(tmp_path):  # a resumed attempt adds to the first one's time
        time.sleep(0.01)
    assert TrainingClock(tmp_path).seconds >= first + 0.01
