"""The README's main job on the smoke profile: what `make run` runs (`stitch-ops repro`: `dvc
repro`, two stages side by side) end to end, on real nnU-Nets, a real MLflow store and real
DVC stages; then a second, plain `dvc repro` that does nothing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from stitch_ops.approaches import Approach
from stitch_ops.bundle.verify import verify_bundle
from tests.helpers import copy_pipeline, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the module fixture runs the whole smoke pipeline

PAIRS = ("polyp", "pelvis")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_pipeline(tmp_path_factory.mktemp("pipeline"))
    run([sys.executable, "-m", "stitch_ops.cli", "profile", "smoke"], root)
    run([sys.executable, "-m", "stitch_ops.cli", "repro"], root)  # what `make run` runs
    return root


def mlflow_runs(root: Path, pair: str):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[f"stitch_ops/{pair}"], output_format="pandas")


def mask(path: Path) -> np.ndarray:
    """A segmentation or label map (PNG or NIfTI) as an array."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def dice_by_hand(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2|P∩R| / (|P| + |R|); 1 when both masks are empty (README: empty-mask policy)."""
    p, r = prediction > 0, reference > 0
    if not p.any() and not r.any():
        return 1.0
    return 2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum())


def raw_dataset(root: Path, pair: str, party: str) -> Path:
    return root / "data" / pair / "nnUNet_raw" / f"Dataset00{1 if party == 'a' else 2}_{pair}_{party}"


@pytest.mark.parametrize("pair", PAIRS)
def test_basis_models_are_in_mlflow_with_both_test_sets(pipeline: Path, pair: str):
    runs = mlflow_runs(pipeline, pair)
    local = runs[runs["tags.approach"] == "local"]
    assert sorted(local["tags.trained_on"]) == ["a", "b"]
    for _, run_row in local.iterrows():
        party = run_row["tags.trained_on"]
        cases = pd.read_csv(pipeline / "metrics" / pair / "local" / party / "fold_0" / "cases.csv")
        summary = json.loads((pipeline / "metrics" / pair / "local" / party / "fold_0" / "summary.json").read_text())
        for test_party in ("a", "b"):
            scored = cases[cases["test_party"] == test_party]
            for metric in ("dice", "hd95"):
                logged = run_row[f"metrics.test_{test_party}/{metric}_mean"]
                assert math.isfinite(logged) and logged == pytest.approx(scored[metric].mean())
                assert summary[f"test_{test_party}/{metric}_mean"] == pytest.approx(logged)
            # every per-case Dice recomputed from the written segmentation and the label by hand
            predictions = pipeline / "predictions" / pair / "local" / party / "fold_0" / f"test_{test_party}"
            labels = raw_dataset(pipeline, pair, test_party) / "labelsTs"
            ending = json.loads((labels.parent / "dataset.json").read_text())["file_ending"]
            for _, case in scored.iterrows():
                expected = dice_by_hand(mask(predictions / f"{case['case']}{ending}"),
                                        mask(labels / f"{case['case']}{ending}"))
                assert case["dice"] == pytest.approx(expected), (party, test_party, case["case"])
    assert (local["tags.mlflow.runName"].str.startswith("local:")).all()


@pytest.mark.parametrize("pair", PAIRS)
def test_per_case_tables_cover_every_test_case(pipeline: Path, pair: str):
    import pandas as pd

    for party in ("a", "b"):
        cases = pd.read_csv(pipeline / "metrics" / pair / "local" / party / "fold_0" / "cases.csv")
        assert list(cases.columns) == ["pair", "test_party", "approach", "trained_on", "fold", "case",
                                       "dice", "hd95"]
        for test_party in ("a", "b"):
            labels = raw_dataset(pipeline, pair, test_party) / "labelsTs"
            assert (cases["test_party"] == test_party).sum() == len(list(labels.iterdir()))


APPROACHES = {approach.value for approach in Approach}
"""Every approach of the table (``approaches.py``): each must be scored, so a registered approach
whose stages do not run in the pipeline fails here."""


@pytest.mark.parametrize("pair", PAIRS)
def test_every_approach_is_scored_on_both_test_sets_with_the_same_metric_names(pipeline: Path, pair: str):
    runs = mlflow_runs(pipeline, pair)
    scored = runs[runs["metrics.test_a/dice_mean"].notna()]
    assert set(scored["tags.approach"]) == APPROACHES
    assert scored["metrics.test_b/hd95_mean"].notna().all()
    assert scored["tags.shorthand"].notna().all()  # a, a→b, a&b, a‖b, a+b, a←[a]→b ...
    stitched = scored[scored["tags.approach"] == "stitch"]
    networks = {f"via_a_{method}{variant}" for method in ("double_batched", "direct_matching")
                for variant in ("", "_finetuned")}
    strategies = {f"{slug}_{strategy}" for slug in networks for strategy in ("all_folds", "rule_of_thumb")}
    references = {"no_stitch_via_a", "no_stitch_via_a_finetuned"}
    assert set(stitched["tags.trained_on"]) == networks | strategies | references
    assert set(stitched.loc[stitched["tags.trained_on"].isin(networks), "tags.selection"]) == {"current_fold"}
    assert stitched.loc[stitched["tags.trained_on"] == "via_a_double_batched_finetuned", "tags.shorthand"].item() == (
        "a←[a]→b→a")
    # the no-stitch reference is scored on c's validation cases like a position
    assert stitched.loc[stitched["tags.trained_on"].isin(references), "metrics.val_a/dice_mean"].between(0, 1).all()


@pytest.mark.parametrize("pair", PAIRS)
def test_every_scored_stitch_position_has_its_own_run_and_each_strategy_selects_one(pipeline: Path, pair: str):
    import json

    import pandas as pd

    runs = mlflow_runs(pipeline, pair)
    for slug in ("via_a_double_batched", "via_a_direct_matching", "via_a_double_batched_finetuned"):
        folder = pipeline / "metrics" / pair / "stitch" / slug / "fold_0"
        positions = pd.read_csv(folder / "positions.csv")
        for column in ("selected", "selected_all_folds", "selected_rule_of_thumb"):
            assert positions[column].sum() == 1, column
        assert positions["relative_position"].between(0, 1).all()
        nested = runs[(runs["tags.trained_on"] == slug) & runs["tags.k"].notna()]
        assert sorted(nested["tags.k"].astype(int)) == sorted(positions["k"])
        logged = nested.set_index(nested["tags.k"].astype(int))
        for _, position in positions.iterrows():  # the run of each k logs that k's row of positions.csv
            assert logged.loc[position["k"], "metrics.val_a/dice_mean"] == pytest.approx(position["dice"])
            assert logged.loc[position["k"], "metrics.val_a/hd95_mean"] == pytest.approx(position["hd95"])
        selection = json.loads((folder / "selection.json").read_text())
        assert set(selection) == {"current_fold", "all_folds", "rule_of_thumb"}
        assert selection["current_fold"]["k"] == positions.loc[positions["selected"], "k"].item()
        assert selection["all_folds"]["equals_current_fold"] is True  # smoke has one fold, and says so
        no_stitch = json.loads((folder / "no_stitch.json").read_text())
        assert 0 <= no_stitch["dice"] <= 1 and no_stitch["hd95"] >= 0
        for strategy in ("all_folds", "rule_of_thumb"):
            cases = pd.read_csv(pipeline / "metrics" / pair / "stitch" / f"{slug}_{strategy}" / "fold_0" / "cases.csv")
            assert set(cases["test_party"]) == {"a", "b", "val_a"}


@pytest.mark.parametrize("pair", PAIRS)
def test_rq1_samples_both_methods_from_none_to_every_stitch(pipeline: Path, pair: str):
    import pandas as pd

    folder = pipeline / "metrics" / pair / "rq1" / "a" / "fold_0"
    table = pd.read_csv(folder / "rq1.csv")
    assert list(table.columns) == ["method", "n_stitches", "sample", "dice", "hd95"]
    assert set(table["method"]) == {"direct_matching", "double_batched"}
    for _, group in table.groupby("method"):
        assert group["n_stitches"].min() == 0 and group["n_stitches"].nunique() == 2  # smoke: counts 2
        assert group.groupby("n_stitches").size().max() <= 3
    assert table["dice"].between(0, 1).all()
    assert (folder / "rq1.png").stat().st_size > 0
    # both methods score the same sampled networks; with no stitch active those are plain parents,
    # so the two methods' scores agree sample by sample
    none = table[table["n_stitches"] == 0].pivot(index="sample", columns="method", values="dice")
    np.testing.assert_allclose(none["direct_matching"], none["double_batched"])


def test_second_repro_does_nothing(pipeline: Path):
    result = run(["dvc", "repro"], pipeline)
    assert "Running stage" not in result.stdout
    assert "up to date" in result.stdout


def probabilities(path: Path) -> np.ndarray:
    with np.load(path) as saved:
        return saved["probabilities"]


def assert_segmented_by(seg: Path, model_predictions: Path, other_predictions: Path) -> None:
    """``seg`` holds what the pipeline's predictions of that model hold (segmentations and
    probabilities), and not another model's probabilities."""
    cases = sorted(p.stem for p in model_predictions.glob("*.npz"))
    assert cases and sorted(p.stem for p in seg.glob("*.npz")) == cases
    for case in cases:
        np.testing.assert_array_equal(mask(seg / f"{case}.png"), mask(model_predictions / f"{case}.png"))
        np.testing.assert_allclose(probabilities(seg / f"{case}.npz"), probabilities(model_predictions / f"{case}.npz"),
                                   rtol=0, atol=1e-6)
    assert not np.allclose(probabilities(seg / f"{cases[0]}.npz"), probabilities(other_predictions / f"{cases[0]}.npz"))


def segment_with_bundle(bundle: Path, images: Path, out: Path) -> Path:
    run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--bundle_root", str(bundle), "--input_dir", str(images), "--output_dir", str(out),
         "--save_probabilities", "True", "--progress", "False"], bundle)
    return out


def test_exported_bundle_verifies_and_segments_through_monai_bundle(pipeline: Path, tmp_path: Path):
    bundle = pipeline / "exports" / "polyp" / "local_a_fold0"
    report = verify_bundle(bundle)
    assert report.models == [bundle / "models"] and report.output_shape[1] == 2
    # its train.json retrains with the schedule this model had (the smoke profile's), not the definition's
    budget = json.loads((pipeline / "metrics" / "polyp" / "local" / "a" / "fold_0" / "budget.json").read_text())
    schedule = json.loads((bundle / "configs" / "train.json").read_text())["schedule"]
    assert (schedule["epochs"], schedule["iterations_per_epoch"]) == (budget["epochs"], budget["iterations_per_epoch"])
    images = raw_dataset(pipeline, "polyp", "a") / "imagesTs"
    seg = segment_with_bundle(bundle, images, tmp_path / "seg")
    written = sorted(p.name for p in seg.glob("*.png"))
    assert written == sorted(p.name.replace("_0000", "") for p in images.glob("*.png"))
    local = pipeline / "predictions" / "polyp" / "local"
    assert_segmented_by(seg, local / "a" / "fold_0" / "test_a", local / "b" / "fold_0" / "test_a")


@pytest.mark.parametrize("slug", ["via_a_double_batched", "via_a_double_batched_finetuned"])
def test_exported_stitch_bundle_verifies_and_segments_through_monai_bundle(pipeline: Path, tmp_path: Path, slug: str):
    bundle = pipeline / "exports" / "polyp" / f"stitch_{slug}_fold0"
    assert verify_bundle(bundle).models == [bundle / "models"]
    images = pipeline / "data" / "polyp" / "nnUNet_raw" / "Dataset002_polyp_b" / "imagesTs"
    run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--bundle_root", str(bundle), "--input_dir", str(images), "--output_dir", str(tmp_path / "seg"),
         "--progress", "False"], bundle)
    assert len(list((tmp_path / "seg").glob("*.png"))) == len(list(images.glob("*.png")))


@pytest.mark.parametrize("pair", PAIRS)
def test_every_training_stage_states_its_budget_and_none_is_starved(pipeline: Path, pair: str):
    import json

    budgets = {path.parent.parent.relative_to(pipeline / "metrics" / pair).as_posix(): json.loads(path.read_text())
               for path in (pipeline / "metrics" / pair).glob("*/*/fold_0/budget.json")}
    expected = {"local/a", "local/b", "finetune/a_to_b", "finetune/b_to_a", "federated/a_fed_b", "merged/a_plus_b"}
    assert expected <= set(budgets), sorted(budgets)
    assert any(name.startswith("stitch/") for name in budgets), sorted(budgets)
    basis = budgets["local/a"]["iterations"]
    batch_size = yaml.safe_load((pipeline / "params.yaml").read_text())["nnunet"]["batch_size"]
    for name in expected:
        record = budgets[name]
        assert {"epochs", "iterations", "samples_seen", "wall_time_s"} <= set(record), name
        assert record["iterations"] >= basis and record["samples_seen"] == record["iterations"] * record["batch_size"]
        if batch_size is not None:  # every approach trains with the profile's batch (federated once stated the planner's)
            assert record["batch_size"] == batch_size, name
        assert record["wall_time_s"] > 0, name
    for name in (n for n in budgets if n.startswith("stitch/")):
        assert len(budgets[name]["loss_per_epoch"]) == budgets[name]["epochs"]
        assert isinstance(budgets[name]["plateau_reached"], bool)


def test_repro_ends_with_a_report_that_renders_in_chromium(pipeline: Path):
    """The Done-when of issue 7: `dvc repro` ends with reports/index.html, every figure of every
    pair's report renders in headless Chromium (non-zero natural width) and the pages log no error."""
    import json

    from tests.browser import check_page

    reports = pipeline / "reports"
    index = check_page(reports / "index.html")
    assert index.errors == []
    for pair in PAIRS:
        check = check_page(reports / f"{pair}.html")
        assert check.errors == [], (pair, check.errors)
        assert len(check.images) >= 4, check.images  # bi-objective x2, own data a and b at least
        assert all(width > 0 for _, width in check.images), check.images
        headline = json.loads((reports / "metrics" / f"{pair}.json").read_text())
        assert sorted(headline["findings"]["verdicts"]) == [str(n) for n in range(1, 10)]
        assert headline["models"]["local_a"]["test_a_dice"] >= 0


@pytest.mark.parametrize("pair", PAIRS)
def test_runs_are_live_with_curves_datasets_and_registered_models(pipeline: Path, pair: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{pipeline / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"stitch_ops/{pair}")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = mlflow_runs(pipeline, pair)
    models = runs[runs["tags.dvc.stage.evaluation"].notna()]
    assert models.groupby(["tags.approach", "tags.trained_on", "tags.fold"]).size().max() == 1  # no duplicates
    assert (models["status"] == "FINISHED").all()
    # every model that trains has a live run; stitch-ensembles chosen by strategy 2/3 and the
    # no-stitch reference reuse trained stitches, so their runs start at evaluation
    selection = models.get("tags.selection", pd.Series(index=models.index, dtype=object)).fillna("current_fold")
    trained = models[models["tags.approach"].isin(["local", "finetune", "federated", "merged", "stitch"])
                     & (selection == "current_fold") & ~models["tags.trained_on"].str.startswith("no_stitch")]
    assert {"local", "finetune", "federated", "merged", "stitch"} == set(trained["tags.approach"])
    for _, row in trained.iterrows():
        run = client.get_run(row["run_id"])
        assert run.info.end_time - run.info.start_time > 1000, "training + evaluation take seconds, not ms"
        assert run.data.tags["dvc.stage"].split("@")[0] in {"train", "finetune", "federated", "merged", "stitch_train",
                                                            "stitch_train_finetuned"}
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == sorted(steps) and len(steps) >= 1
        names = {i.dataset.name for i in run.inputs.dataset_inputs}
        assert {f"{pair}/a/test", f"{pair}/b/test"} <= names and any(n.endswith("train") or "train " in n for n in names)
    for slug in ("via_a_double_batched", "via_a_direct_matching"):  # smoke selects by strategy 1
        champion = client.get_model_version_by_alias(f"stitch_ops-{pair}-stitch-{slug}", "champion")
        assert champion.run_id in set(models["run_id"])
    assert client.search_model_versions(f"name = 'stitch_ops-{pair}-local-a'")


def test_dvc_plots_and_metrics_show_the_curves_trends_and_headline_numbers(pipeline: Path):
    import json

    plots = json.loads(run(["dvc", "plots", "show", "--json"], pipeline).stdout)
    drawn = {name for name, charts in plots["data"].items() if charts}
    for pair in PAIRS:
        assert f"plots/training/{pair}/local/a/fold_0.csv" in drawn
        assert f"plots/training/{pair}/federated/a_fed_b/fold_0.csv" in drawn
        assert f"plots/stitch_training/{pair}/stitch/via_a_double_batched/fold_0.csv" in drawn
        assert f"metrics/{pair}/stitch/via_a_double_batched/fold_0/positions.csv" in drawn
    ours = [e for e in plots.get("errors", []) if "training" in e.get("name", "") or "positions" in e.get("name", "")]
    assert not ours, ours
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], pipeline).stdout)
    files = next(iter(metrics.values()))["data"]
    assert "metrics/polyp/local/a/fold_0/summary.json" in files


def test_the_same_seed_from_scratch_gives_the_same_metrics(pipeline: Path, tmp_path: Path):
    """One party's chain of the smoke pipeline (prepare, split, plan, train, predict, evaluate)
    again in a fresh checkout: the same seed gives the same model and the same summary.json."""
    again = copy_pipeline(tmp_path / "again")
    run([sys.executable, "-m", "stitch_ops.cli", "profile", "smoke"], again)
    run(["dvc", "repro", "evaluate@polyp-a-0"], again)
    metrics = Path("metrics") / "polyp" / "local" / "a" / "fold_0"
    for name in ("summary.json", "cases.csv"):
        assert (again / metrics / name).read_bytes() == (pipeline / metrics / name).read_bytes(), name
    weights = Path("models") / "polyp" / "local" / "a" / "fold_0" / "export" / "weights.pth"
    first, second = (torch.load(root / weights, weights_only=True) for root in (pipeline, again))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_ablation_compares_how_the_stitches_are_trained(pipeline: Path):
    """smoke: polyp, c = a, direct matching, least_squares and schedule_x2 (params 'stitching.ablation');
    the default variant is the pipeline's own stitch-ensemble, read, not trained again."""
    from stitch_ops.stitching.ablation import COLUMNS

    slug = "via_a_direct_matching"
    folder = pipeline / "metrics" / "polyp" / "ablation" / slug / "fold_0"
    table = pd.read_csv(folder / "ablation.csv")
    assert list(table.columns) == list(COLUMNS)
    assert list(dict.fromkeys(table["variant"])) == ["default", "least_squares", "schedule_x2"]
    assert all(v == ["selected", "best"] for v in table.groupby("variant", sort=False)["position"].apply(list))
    first = table.drop_duplicates("variant").set_index("variant")
    assert first.loc["least_squares", "steps"] == first.loc["default", "steps"]
    assert first.loc["schedule_x2", "steps"] == 2 * first.loc["default", "steps"]
    assert first.loc["least_squares", "init"] == "least_squares" and first.loc["schedule_x2", "init"] == "default"
    main = pd.read_csv(pipeline / "scores" / "polyp" / "stitch" / slug / "fold_0" / "positions.csv")
    summary = json.loads((pipeline / "metrics" / "polyp" / "stitch" / slug / "fold_0" / "summary.json").read_text())
    default = table[(table["variant"] == "default") & (table["position"] == "selected")].iloc[0]
    assert default["k"] == main.loc[main["selected"], "k"].item()
    assert default["dice_a"] == pytest.approx(summary["test_a/dice_mean"])
    own = json.loads((pipeline / "metrics" / "polyp" / "local" / "a" / "fold_0" / "summary.json").read_text())
    assert table["own_dice"].tolist() == pytest.approx([own["test_a/dice_mean"]] * len(table))
    assert table[["val_dice", "dice_a", "dice_b"]].stack().between(0, 1).all()
    assert (table["distance"] >= 0).all() and table["training_s"].iloc[2:].gt(0).all()
    positions = pd.read_csv(folder / "positions.csv")
    for variant, scored in positions.groupby("variant"):  # every variant at the positions the pipeline scored
        assert sorted(scored["k"]) == sorted(main["k"]), variant
    assert set(json.loads((folder / "ablation.json").read_text())) == {
        f"{v}/{p}" for v in first.index for p in ("selected", "best")}
    assert not (pipeline / "metrics" / "pelvis" / "ablation").exists()
    assert "Ablation: how the stitches are trained" in (pipeline / "reports" / "polyp.html").read_text()
    assert "not available (no ablation rows in this run)" in (pipeline / "reports" / "pelvis.html").read_text()
