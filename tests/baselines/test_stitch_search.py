"""``stitching.search: optuna`` on the tiny pair's real nnU-Nets and a real local Ray: the
search's (k, lr) lies in the search space, its trials saw c's validation cases only, every
trial is a nested MLflow run, and the best rate trains the final stitches; ``grid`` stays as
it was (no search record, the training rate, the evenly spread positions)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tests.baselines.tiny_pair import PAIR, TinyPair, make_params

from stitch_ops.config import ConfigError, load_section

TRAINING = {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2, "init_batches": 1, "probe_batches": 1}
SEARCH = {"search": "optuna", "trials": 3, "search_lr_min": 1e-4, "search_lr_max": 1e-2,
          "search_training": {"iterations_per_epoch": 1}}


def stitching(**overrides):
    return {"c_parties": ["a"], "methods": ["direct_matching"], "selection": "current_fold", "max_positions": 2,
            "finetuned_c_parties": [], "training": TRAINING, **overrides}


@pytest.fixture(scope="module")
def root(tiny_pair: TinyPair, basis_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stitch_search") / "repo"
    shutil.copytree(tiny_pair.root, root)
    return root


def run_stages(root: Path, section: dict) -> tuple[Path, object]:
    """``stitch_train`` and ``stitch_select`` of a←[a]→b, direct matching, fold 0, in ``root``."""
    from stitch_ops.stitching import stages

    params = make_params(stitching=section)
    (root / "params.yaml").write_text(yaml.safe_dump(dict(params.raw)))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        network = stages.train(params, PAIR, "a", "direct_matching", 0, progress=False)
        stages.select(params, PAIR, "a", "direct_matching", 0, progress=False)
    return root / network.parent, params


def nested_runs(root: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[f"stitch_ops/{PAIR}"], output_format="pandas")


@pytest.mark.slow
def test_optuna_search_feeds_the_stitch_stages_and_grid_stays_as_it_was(root: Path):
    from stitch_ops.data.splits import read_fold
    from stitch_ops.paths import PairPaths

    network_dir, _ = run_stages(root, stitching(**SEARCH))
    record = json.loads((network_dir / "search.json").read_text())
    assert 0 <= record["best_k"] < record["matches"]
    assert SEARCH["search_lr_min"] <= record["best_lr"] <= SEARCH["search_lr_max"]
    assert len(record["trials"]) == SEARCH["trials"]
    best = max(record["trials"], key=lambda t: t["val_dice"])
    assert (record["best_k"], record["best_lr"]) == (best["k"], best["lr"])

    raw = PairPaths(PAIR, root).raw_dataset("a")
    validation = sorted(read_fold(raw, 0).val)
    test_cases = set(json.loads((raw / "test_cases.json").read_text()))
    for trial in record["trials"]:
        assert 0 <= trial["k"] < record["matches"]
        assert SEARCH["search_lr_min"] <= trial["lr"] <= SEARCH["search_lr_max"]
        assert sorted(trial["cases"]) == validation and not test_cases & set(trial["cases"])

    runs = nested_runs(root)
    parent = runs[runs["tags.kind"] == "stitch_search"]
    assert len(parent) == 1
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert len(children) == SEARCH["trials"] and set(children["tags.kind"]) == {"stitch_search_trial"}
    assert sorted(children["params.k"].astype(int)) == sorted(t["k"] for t in record["trials"])
    assert float(parent["metrics.best_lr"].iloc[0]) == pytest.approx(record["best_lr"])

    metrics = root / "metrics" / PAIR / "stitch" / "via_a_direct_matching" / "fold_0"
    assert json.loads((metrics / "budget.json").read_text())["lr"] == pytest.approx(record["best_lr"])
    positions = pd.read_csv(root / "scores" / PAIR / "stitch" / "via_a_direct_matching" / "fold_0" / "positions.csv")
    assert record["best_k"] in set(positions["k"])

    # grid: the same stages as before the search existed; the earlier search's record is gone
    from stitch_ops.stitching.scoring import evaluated_positions

    network_dir, _ = run_stages(root, stitching())
    assert not (network_dir / "search.json").exists()
    assert json.loads((metrics / "budget.json").read_text())["lr"] == pytest.approx(1e-3)  # training.lr's default
    positions = pd.read_csv(root / "scores" / PAIR / "stitch" / "via_a_direct_matching" / "fold_0" / "positions.csv")
    assert list(positions["k"]) == evaluated_positions(record["matches"], 2)


def test_search_settings_are_checked_when_built():
    from stitch_ops.stitching.settings import StitchingParams

    section = load_section({"stitching": stitching(**SEARCH)}, "stitching", StitchingParams)
    config = section.search_config("direct_matching", 0, 3e-3)
    assert (config.lr, config.epochs, config.iterations_per_epoch) == (3e-3, 1, 1)
    assert load_section({"stitching": stitching()}, "stitching", StitchingParams).search == "grid"
    with pytest.raises(ConfigError, match="'stitching.search' must be one of"):
        load_section({"stitching": stitching(search="bayes")}, "stitching", StitchingParams)
    with pytest.raises(ConfigError, match="below 'stitching.search_lr_max'"):
        load_section({"stitching": stitching(search_lr_min=1e-2, search_lr_max=1e-3)}, "stitching", StitchingParams)
    with pytest.raises(ConfigError, match="must not set lr"):
        load_section({"stitching": stitching(search_training={"lr": 1e-3})}, "stitching", StitchingParams)
    with pytest.raises(ConfigError, match="'stitching.trials' must be a positive integer"):
        load_section({"stitching": stitching(trials=0)}, "stitching", StitchingParams)


def test_a_saved_search_is_reused_only_by_a_training_that_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from stitch_ops.nnunet.model import ModelError
    from stitch_ops.stitching.search import searched, settings

    monkeypatch.chdir(tmp_path)
    params = make_params(stitching=stitching(**SEARCH))
    network = tmp_path / "network"
    network.mkdir()
    saved = {"best_k": 3, "best_lr": 2e-3, "settings": settings(params, "direct_matching")}
    (network / "search.json").write_text(json.dumps(saved))
    (network / "checkpoint.pt").write_bytes(b"")  # a killed training: it resumes at the saved rate
    assert searched(params, PAIR, "a", "direct_matching", 0, network / "search.json", progress=False) == saved
    # other settings, or no checkpoint (the stage reruns because its inputs changed): a new search,
    # which here fails at once for want of basis models
    other = make_params(stitching=stitching(**{**SEARCH, "trials": 4}))
    with pytest.raises(ModelError, match="no model folder"):
        searched(other, PAIR, "a", "direct_matching", 0, network / "search.json", progress=False)
    (network / "checkpoint.pt").unlink()
    with pytest.raises(ModelError, match="no model folder"):
        searched(params, PAIR, "a", "direct_matching", 0, network / "search.json", progress=False)
