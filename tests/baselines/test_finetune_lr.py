"""Which base learning rate fine-tuning uses: fixed, the sweep's best (``base_lr: sweep``)
or the paper's rule (``lr_rule: smallest_progressing_power_of_ten``), and the bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tests.baselines.tiny_pair import PAIR, make_params

from stitch_ops.baselines.config import FinetuneParams
from stitch_ops.baselines.lr import (LrSource, ResolvedLr, not_swept_record, powers_of_ten, resolve_base_lr,
                                     smallest_progressing)
from stitch_ops.config import ConfigError, load_section
from stitch_ops.errors import UserError
from stitch_ops.paths import PairPaths

RULE = "smallest_progressing_power_of_ten"
SWEEP = {"pairs": [PAIR], "routes": ["a_to_b"], "lr_min": 1e-4, "lr_max": 1e-2}


def best_json(root: Path, route: str = "a_to_b", **record) -> Path:
    """A hand-written sweep result of ``route``, fold 0."""
    path = PairPaths(PAIR, root).sweep("finetune", route, 0) / "best.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pair": PAIR, "trained_on": route, "fold": 0, "swept": True, **record}))
    return path


def test_base_lr_is_a_number_or_sweep_and_lr_rule_is_known():
    assert load_section({"finetune": {"base_lr": "1e-3"}}, "finetune", FinetuneParams).base_lr == 0.001
    assert FinetuneParams(base_lr="sweep", lr_rule=RULE).base_lr == "sweep"
    assert FinetuneParams().base_lr == 0.001 and FinetuneParams().lr_rule is None  # the defaults stay
    with pytest.raises(ConfigError, match=r"'finetune.base_lr' must be a number in \(0, 1\) or 'sweep', got 'swep'"):
        FinetuneParams(base_lr="swep")
    with pytest.raises(ConfigError, match="must be a learning rate in"):
        FinetuneParams(base_lr=0.0)
    with pytest.raises(ConfigError, match="'finetune.lr_rule' must be null or one of"):
        FinetuneParams(lr_rule="largest")


def test_powers_of_ten_in_the_sweep_range():
    assert powers_of_ten(1e-4, 1e-2) == pytest.approx((1e-4, 1e-3, 1e-2))
    assert powers_of_ten(2e-4, 0.05) == pytest.approx((1e-3, 1e-2))
    with pytest.raises(ConfigError, match=r"needs a power of ten in \[sweep.lr_min, sweep.lr_max\]"):
        powers_of_ten(2e-4, 5e-4)


@pytest.mark.parametrize(("improvements", "expected"), [
    # 1e-4 does not move, 1e-3 is the smallest that improves, larger ones improve more: 1e-3
    ([(1e-2, 0.05), (1e-3, 0.01), (1e-4, 0.0), (1e-5, -0.02)], 1e-3),
    # the order of the trials does not matter; a rate that made it worse is not progress
    ([(1e-3, -0.01), (1e-2, 0.2), (1e-4, 0.003)], 1e-4),
    ([(1e-4, math.nan), (1e-3, 0.02)], 1e-3),  # a trial without a score never counts
    ([(1e-4, 0.0), (1e-3, -0.1)], None),  # nothing progresses
])
def test_smallest_progressing_power_of_ten(improvements, expected):
    chosen = smallest_progressing(improvements)
    assert chosen == (pytest.approx(expected) if expected is not None else None)


def test_fixed_base_lr_needs_no_sweep(tmp_path: Path):
    params = make_params(finetune={"base_lr": 0.002}, sweep=SWEEP)
    assert resolve_base_lr(PairPaths(PAIR, tmp_path), "b", 0, params) == ResolvedLr(0.002, LrSource.FIXED)


def test_base_lr_sweep_reads_the_routes_best_json(tmp_path: Path):
    paths = PairPaths(PAIR, tmp_path)
    best_json(tmp_path, best_base_lr=0.0031, selected_by="best_validation_dice")
    resolved = resolve_base_lr(paths, "b", 0, make_params(finetune={"base_lr": "sweep"}, sweep=SWEEP))
    assert resolved == ResolvedLr(0.0031, LrSource.SWEEP)
    # picked by the rule: the source says so, and the params must ask for the rule
    best_json(tmp_path / "rule", best_base_lr=0.001, selected_by=RULE)
    with_rule = make_params(finetune={"base_lr": "sweep", "lr_rule": RULE}, sweep=SWEEP)
    assert resolve_base_lr(PairPaths(PAIR, tmp_path / "rule"), "b", 0, with_rule) == ResolvedLr(0.001, LrSource.RULE)
    with pytest.raises(UserError, match=r"selected by 'best_validation_dice' but finetune.lr_rule asks for "
                                        r"'smallest_progressing_power_of_ten'; rerun `dvc repro sweep@polyp-a_to_b-0`"):
        resolve_base_lr(paths, "b", 0, with_rule)


def test_base_lr_sweep_without_a_sweep_says_which_route_to_add(tmp_path: Path):
    paths = PairPaths(PAIR, tmp_path)
    params = make_params(finetune={"base_lr": "sweep"}, sweep=SWEEP)
    with pytest.raises(UserError, match=r"does not cover polyp b_to_a: add 'b_to_a' to sweep.routes \(or set "
                                        r"finetune.base_lr to a number\)"):
        resolve_base_lr(paths, "a", 0, params)  # b→a: b's model fine-tuned on a's data
    elsewhere = make_params(finetune={"base_lr": "sweep"}, sweep={**SWEEP, "pairs": []})
    with pytest.raises(UserError, match="add 'polyp' to sweep.pairs"):
        resolve_base_lr(paths, "b", 0, elsewhere)
    with pytest.raises(UserError, match=r"no sweep result .*best.json; run `dvc repro sweep@polyp-a_to_b-0` first"):
        resolve_base_lr(paths, "b", 0, params)  # covered, but not run yet
    path = PairPaths(PAIR, tmp_path).sweep("finetune", "a_to_b", 0) / "best.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(not_swept_record(PAIR, "a_to_b", 0)))  # written before the route was added
    with pytest.raises(UserError, match="was not swept, but sweep.pairs/sweep.routes now cover it; rerun"):
        resolve_base_lr(paths, "b", 0, params)


def test_the_sweep_stage_writes_a_not_swept_record_for_a_route_it_does_not_cover(tmp_path: Path):
    """DVC's finetune stage always depends on its route's best.json: the sweep stage writes
    one for every route, without starting Ray for a route outside sweep.pairs x sweep.routes."""
    from stitch_ops.baselines.sweep import run_sweep

    params = make_params(finetune={"base_lr": 0.001}, sweep=SWEEP)
    record = run_sweep(PAIR, "a", 0, params, root=tmp_path, progress=False, only_configured=True)
    path = PairPaths(PAIR, tmp_path).sweep("finetune", "b_to_a", 0) / "best.json"
    assert json.loads(path.read_text()) == record == not_swept_record(PAIR, "b_to_a", 0)
    assert record["swept"] is False and "best_base_lr" not in record
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.json"]  # no trials folder, no Ray records


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rule_sweeps_powers_of_ten_and_finetuning_uses_its_choice(tiny_pair, basis_models, tmp_path: Path):
    """Real Ray Tune trials on the tiny pair's real nnU-Nets: the rule tries every power of
    ten in [1e-3, 1e-2], picks by its definition from the recorded validation Dice, and the
    fine-tuning stage with ``base_lr: sweep`` trains with that rate and says it came from the rule."""
    import shutil

    import yaml

    from stitch_ops.baselines import stages
    from stitch_ops.baselines.plans import prepare_transferred
    from stitch_ops.baselines.sweep import run_sweep
    from tests.helpers import kept_global_state

    root = tmp_path / "repo"
    shutil.copytree(tiny_pair.root, root)
    params = make_params(finetune={"base_lr": "sweep", "lr_rule": RULE, "warmup_epochs": 0, "epochs": 1,
                                   "iterations_per_epoch": 1},
                         sweep={**SWEEP, "lr_min": 1e-3, "lr_max": 1e-2, "epochs": 1, "iterations_per_epoch": 1,
                                "max_concurrent": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(dict(params.raw)))
    with pytest.MonkeyPatch.context() as patch, kept_global_state():
        patch.chdir(root)
        prepare_transferred(PAIR, "b", "2d", root=Path("."), progress=False)
        not_covered = run_sweep(PAIR, "a", 0, params, params_file=Path("params.yaml"), progress=False,
                                only_configured=True)
        record = run_sweep(PAIR, "b", 0, params, params_file=Path("params.yaml"), progress=False,
                           only_configured=True)
        stages.finetune(PAIR, "b", 0, params, root=Path("."), progress=False)
    assert not_covered == not_swept_record(PAIR, "b_to_a", 0)
    written = json.loads((PairPaths(PAIR, root).sweep("finetune", "a_to_b", 0) / "best.json").read_text())
    assert written == json.loads(json.dumps(record))
    assert record["selected_by"] == RULE and record["swept"] is True
    assert [t["base_lr"] for t in record["trials"]] == pytest.approx([1e-3, 1e-2])  # the grid, not Optuna
    gains = [(t["base_lr"], t["val_dice"] - record["start_val_dice"]) for t in record["trials"]]
    chosen = smallest_progressing(gains)
    assert record["rule_satisfied"] is (chosen is not None)
    if chosen is not None:
        assert record["best_base_lr"] == pytest.approx(chosen)
    else:  # nothing progressed: the best validation Dice, and the record says so
        assert record["best_val_dice"] == max(t["val_dice"] for t in record["trials"])
    budget = json.loads((PairPaths(PAIR, root).metrics("finetune", "a_to_b", 0) / "budget.json").read_text())
    assert budget["base_lr"] == pytest.approx(record["best_base_lr"]) and budget["base_lr_source"] == "rule"
    model = json.loads((PairPaths(PAIR, root).model_dir("finetune", "a_to_b", 0) / "export" / "model.json").read_text())
    assert model["base_lr"] == pytest.approx(record["best_base_lr"])  # the rate it really trained with
