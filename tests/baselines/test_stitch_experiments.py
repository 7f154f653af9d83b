"""Issue 7's stitching stages on the tiny pair's real nnU-Nets, in process: a←[a]→b→a, the
no-stitch reference scored like a position, selection strategies 1-3, RQ1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tests.baselines.tiny_pair import PAIR, TinyPair, make_params

from stitch_ops.paths import PairPaths

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]  # the module fixture runs every stitch stage

STITCHING = {"c_parties": ["a"], "methods": ["double_batched", "direct_matching"], "selection": "current_fold",
             "max_positions": 3, "finetuned_c_parties": ["a"],
             "training": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2, "probe_batches": 1}}
RQ1 = {"samples": 2, "counts": 2}


@pytest.fixture(scope="module")
def experiment(tiny_pair: TinyPair, basis_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny pair with b's model fine-tuned on a's data, every stitch stage run."""
    from stitch_ops import approaches
    from stitch_ops.baselines.plans import prepare_transferred
    from stitch_ops.baselines.stages import train_finetuned
    from stitch_ops.stitching import rq1, stages, strategies

    root = tmp_path_factory.mktemp("stitch_experiments") / "repo"
    shutil.copytree(tiny_pair.root, root)
    params = make_params(finetune={"base_lr": 1e-3, "warmup_epochs": 1, "epochs": 2, "iterations_per_epoch": 1},
                         stitching=STITCHING, rq1=RQ1)
    (root / "params.yaml").write_text(yaml.safe_dump(dict(params.raw), allow_unicode=True))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        paths = PairPaths(PAIR)
        prepare_transferred(PAIR, "a", "2d", root=Path("."), progress=False)
        tuned = approaches.finetuned("a")
        train_finetuned(paths, "a", 0, params, base_lr=1e-3, epochs=2, iterations_per_epoch=1,
                        results_root=paths.model_dir(tuned.approach, tuned.trained_on, 0), progress=False)
        runs = [(method, False) for method in STITCHING["methods"]] + [("double_batched", True)]
        for method, finetuned in runs:
            stages.train(params, PAIR, "a", method, 0, progress=False, finetuned=finetuned)
            stages.select(params, PAIR, "a", method, 0, progress=False, finetuned=finetuned)
        for finetuned in (False, True):  # predicts and scores the reference, like the select stage
            strategies.reference(params, PAIR, "a", 0, progress=False, finetuned=finetuned)
        for method, finetuned in runs:
            strategies.strategies(params, PAIR, "a", method, 0, progress=False, finetuned=finetuned)
        rq1.run(params, PAIR, "a", progress=False)
    return root


def runs(root: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[f"stitch_ops/{PAIR}"], output_format="pandas")


def test_finetuned_variant_stitches_own_model_to_the_others_model_finetuned_on_own_data(experiment: Path):
    from stitch_ops.stitching.artifacts import load_trained_network

    network = load_trained_network(PairPaths(PAIR, experiment), "a", "double_batched", 0, finetuned=True)
    tuned = json.loads((experiment / "models" / PAIR / "finetune" / "b_to_a" / "fold_0" / "export" / "plans.json")
                       .read_text())
    own = json.loads((experiment / "models" / PAIR / "local" / "a" / "fold_0" / "export" / "plans.json").read_text())
    assert network.parent_specs[0].plans == own and network.parent_specs[1].plans == tuned
    export = json.loads((experiment / "models" / PAIR / "stitch" / "via_a_double_batched_finetuned" / "fold_0"
                         / "export" / "model.json").read_text())
    assert export["finetuned"] is True and export["c"] == "a"


def test_no_stitch_reference_is_scored_like_a_position_with_the_same_numbers(experiment: Path):
    table = runs(experiment)
    for slug, reference in (("via_a_double_batched", "no_stitch_via_a"),
                            ("via_a_double_batched_finetuned", "no_stitch_via_a_finetuned")):
        nested = table[(table["tags.trained_on"] == slug) & (table["tags.position"] == "no_stitch")]
        summary = json.loads((experiment / "metrics" / PAIR / "stitch" / reference / "fold_0" / "summary.json")
                             .read_text())
        no_stitch = json.loads((experiment / "metrics" / PAIR / "stitch" / slug / "fold_0" / "no_stitch.json")
                               .read_text())
        assert no_stitch == {"dice": summary["val_a/dice_mean"], "hd95": summary["val_a/hd95_mean"]}
        # the select stage's nested run and the reference stage's evaluation agree: same network, same cases
        assert nested["metrics.val_a/dice_mean"].item() == pytest.approx(no_stitch["dice"])
        assert "test_a/dice_mean" in summary and "test_b/dice_mean" in summary


def test_each_strategy_has_a_selection_a_prediction_and_its_scores(experiment: Path):
    from stitch_ops.approaches import stitch_ensemble

    for method, finetuned in (("double_batched", False), ("direct_matching", False), ("double_batched", True)):
        slug = stitch_ensemble("a", method, finetuned).trained_on
        folder = experiment / "metrics" / PAIR / "stitch" / slug / "fold_0"
        selection = json.loads((folder / "selection.json").read_text())
        positions = pd.read_csv(folder / "positions.csv")
        assert len(positions) == 3 and set(selection) == {"current_fold", "all_folds", "rule_of_thumb"}
        for strategy, column in (("current_fold", "selected"), ("all_folds", "selected_all_folds"),
                                 ("rule_of_thumb", "selected_rule_of_thumb")):
            assert positions.loc[positions[column], "k"].item() == selection[strategy]["k"]
            model = stitch_ensemble("a", method, finetuned, strategy)
            predicted = experiment / "predictions" / PAIR / "stitch" / model.trained_on / "fold_0"
            assert {p.name for p in predicted.iterdir()} == {"test_a", "test_b", "val"}
            # scored in the stage that chose it: both test sets and c's validation cases
            summary = json.loads((experiment / "metrics" / PAIR / "stitch" / model.trained_on / "fold_0"
                                  / "summary.json").read_text())
            assert {"test_a/dice_mean", "test_b/dice_mean", "val_a/dice_mean"} <= set(summary)
        assert selection["rule_of_thumb"]["pooled_tables"] == 3  # pooled over methods and parent variants


def test_rq1_table_and_plot(experiment: Path):
    folder = experiment / "metrics" / PAIR / "rq1" / "a" / "fold_0"
    table = pd.read_csv(folder / "rq1.csv")
    assert list(table.columns) == ["method", "n_stitches", "sample", "dice", "hd95"]
    assert set(table["method"]) == {"direct_matching", "double_batched"}
    assert sorted(table["n_stitches"].unique())[0] == 0 and table["n_stitches"].nunique() == 2
    assert not table.duplicated(["method", "n_stitches", "sample"]).any()
    assert (folder / "rq1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = runs(experiment)
    assert (logged["tags.approach"] == "rq1").sum() == 1
