"""The report on hand-made metrics trees: findings with known verdicts, tables, figures, files."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from stitch_ops.evaluation.findings import Verdict, judge
from stitch_ops.evaluation.report import _stats, mlflow_metrics, run, write_index
from stitch_ops.evaluation.results import StitchSlug, load_pair, model_label, role
from tests.evaluation.report_tree import ABLATION, EXPECTED, MEANS, PAIR, write_tree

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory):
    """The hand-made tree and its report (figures are the slow part: render them once)."""
    root = write_tree(tmp_path_factory.mktemp("reported"))
    return root, run(PAIR, root, Path("reports"), log_mlflow=False)


def test_labels_are_the_papers_shorthands():
    assert model_label("finetune", "b_to_a") == "b→a"
    assert model_label("stitch", "via_a_double_batched") == "a←[a]→b DB"
    assert model_label("stitch", "via_b_direct_matching") == "a←[b]→b DM"
    assert model_label("mystery", "x") == "mystery/x"


def test_stitch_slugs_say_what_they_are():
    assert StitchSlug.parse("via_b_direct_matching_finetuned_rule_of_thumb") == StitchSlug(
        "b", "direct_matching", True, "rule_of_thumb", False)
    assert StitchSlug.parse("no_stitch_via_a") == StitchSlug("a", None, False, None, True)
    assert role("stitch", "via_a_double_batched") == "approach"
    assert role("stitch", "via_a_double_batched_all_folds") == "selection variant"
    assert role("stitch", "no_stitch_via_a_finetuned") == "reference"
    assert role("merged", "a_plus_b") == "approach"


def test_references_and_selection_variants_stay_out_of_the_tests(tmp_path: Path):
    models = dict(MEANS)
    models[("stitch", "no_stitch_via_a")] = (0.5, 0.5)
    models[("stitch", "via_a_double_batched_rule_of_thumb")] = (0.5, 0.5)
    results = load_pair(PAIR, write_tree(tmp_path, models=models))
    assert {"reference", "selection variant"} <= set(results.models["role"])
    stats, _ = _stats(results)
    assert not stats["model"].str.contains("no stitch|rule of thumb|no_stitch").any()
    # the very bad extra models change no verdict
    assert {f.number: str(f.verdict) for f in judge(results, stats)} == EXPECTED


def test_load_pair_reads_every_contract_file(tree: Path):
    results = load_pair(PAIR, tree)
    assert set(results.models["model"]) == {model_label(a, t) for a, t in MEANS}
    assert results.hd95_unit == "px"
    assert results.train_cases == {"a": 60, "b": 30}
    assert len(results.budgets) == 8 and results.budgets["iterations"].eq(150).all()
    assert set(results.positions["slug"]) == {"via_a_double_batched", "via_a_direct_matching"}
    assert len(results.no_stitch) == 2
    assert set(results.selections["strategy"]) == {"current_fold", "all_folds", "rule_of_thumb"}
    assert set(results.rq1["method"]) == {"direct_matching", "double_batched"}
    assert results.problems == []


def test_findings_have_the_hand_checked_verdicts(tree: Path):
    results = load_pair(PAIR, tree)
    stats, _ = _stats(results)
    findings = judge(results, stats)
    assert [f.number for f in findings] == list(range(1, 10))
    assert {f.number: str(f.verdict) for f in findings} == EXPECTED
    # the numbers behind a verdict are the data's
    assert "D(a,a) = 0.90" in findings[0].numbers and "D(a+b,a) = 0.91" in findings[0].numbers
    assert "held for 1 of 2" in findings[5].numbers


def test_findings_flip_with_the_data(tmp_path: Path):
    models = dict(MEANS)
    models[("ensemble", "a_and_b")] = (0.95, 0.80)  # a&b now helps a and hurts b: finding 5 fails
    results = load_pair(PAIR, write_tree(tmp_path, models=models))
    findings = {f.number: f for f in judge(results, _stats(results)[0])}
    assert findings[5].verdict is Verdict.NOT_HELD
    assert "0.950" in findings[5].numbers


def test_a_gap_within_near_is_listed_not_judged(tmp_path: Path):
    # c = b: b's own model is only 0.02 above a&b on b's test, a gap no stitch could measurably close; its
    # stitch-ensemble (which even loses on a's test) must not decide finding 6, and the report says why
    models = dict(MEANS)
    models[("local", "b")] = (0.60, 0.91)
    models[("stitch", "via_b_direct_matching")] = (0.70, 0.90)
    results = load_pair(PAIR, write_tree(tmp_path, models=models))
    finding = {f.number: f for f in judge(results, _stats(results)[0])}[6]
    assert "held for 1 of 2" in finding.numbers
    assert "no gap to close" in finding.numbers and "not judged" in finding.numbers


def test_missing_inputs_are_not_testable_not_guessed(tmp_path: Path):
    models = {k: v for k, v in MEANS.items() if k[0] not in ("merged", "stitch")}
    results = load_pair(PAIR, write_tree(tmp_path, models=models, extras=False))
    findings = {f.number: f for f in judge(results, _stats(results)[0])}
    for number in (1, 3, 6, 7, 8):
        assert findings[number].verdict is Verdict.NOT_TESTABLE, number
    assert findings[5].verdict is Verdict.HELD


def test_own_data_family_per_perspective(tree: Path):
    results = load_pair(PAIR, tree)
    stats, notes = _stats(results)
    family_a = set(stats.loc[stats["perspective"] == "a", "model"])
    assert family_a == {"b→a", "a&b", "a&b→a", "a‖b", "a+b", "a←[a]→b DB", "a←[a]→b DM"}
    family_b = set(stats.loc[stats["perspective"] == "b", "model"])
    assert family_b == {"a→b", "a&b", "a&b→b", "a‖b", "a+b"}  # no stitching with a's data, no b→a
    assert (stats["n_pairs"] == 12).all()
    dice_a = stats[(stats["perspective"] == "a") & (stats["metric"] == "dice")].set_index("model")
    assert dice_a.loc["a&b", "direction"].startswith("worse than a")
    assert dice_a.loc["a&b", "median_difference"] == pytest.approx(-0.06, abs=1e-3)
    metrics = mlflow_metrics(results, stats, [])
    assert metrics["wilcoxon/a/stitch_via_a_double_batched/dice_p_holm"] == pytest.approx(
        dice_a.loc["a←[a]→b DB", "p_holm"])


def test_run_writes_self_contained_html_markdown_metrics_and_figures(reported):
    tree, report = reported
    page = report.html.read_text(encoding="utf-8")
    images = re.findall(r"<img src='([^']+)'", page)
    # bi-objective mean + fold 0, own data a and b, positions of c = a, stitch training, ablation, RQ1 of c = a
    assert len(images) == 8 == len(report.figures)
    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for section in ("Findings of the paper", "Approaches and operating conditions", "Training budgets",
                    "Bi-objective results", "Wilcoxon signed-rank + Holm", "Selection strategies"):
        assert section.lower() in page.lower(), section
    assert "a←[a]→b DB" in page and "rule_of_thumb" in page
    budgets = pd.read_csv(tree / "reports" / PAIR / "tables" / "budgets.csv")
    stitched = budgets[budgets["approach"] == "stitch"]
    assert stitched["plateau reached"].all()
    # the number the plateau criterion judged: the probe loss's last step, not the training loss's
    assert stitched["last-epoch probe-loss improvement"].tolist() == pytest.approx([0.0001 / 0.25] * 2)
    markdown = report.markdown.read_text(encoding="utf-8")
    assert "## Training budgets" in markdown and f"]({PAIR}/figures/biobjective_mean.png)" in markdown
    # which learning rate each fine-tuning used and where it came from (fixed / sweep / rule)
    tuned = budgets.set_index("trained_on")["fine-tuning base LR (source)"]
    assert tuned["a_to_b"] == "0.0001 (rule)" and tuned["b_to_a"] == "0.001 (fixed)"
    assert tuned.drop(["a_to_b", "b_to_a"]).isna().all()  # only fine-tuned models have one
    approaches_table = pd.read_csv(tree / "reports" / PAIR / "tables" / "approaches.csv").set_index("trained_on")
    assert approaches_table.loc["a_to_b", "fine-tuning base LR (source)"] == "0.0001 (rule)"
    for label in ("0.0001 (rule)", "0.001 (fixed)"):
        assert label in markdown and label in page
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in report.figures)
    headline = json.loads(report.metrics.read_text(encoding="utf-8"))
    assert headline["findings"]["verdicts"] == {str(k): v for k, v in EXPECTED.items()}
    assert headline["models"]["local_a"]["test_a_dice"] == pytest.approx(0.90, abs=1e-3)
    tables = pd.read_csv(tree / "reports" / PAIR / "tables" / "wilcoxon_holm.csv")
    assert set(tables["perspective"]) == {"a", "b"}
    assert not list((tree / "reports").glob(".*partial*"))


def test_unavailable_inputs_say_so(tmp_path: Path):
    root = write_tree(tmp_path, models={("local", "a"): (0.9, 0.7)}, extras=False, hd95_file_ending=None)
    page = run(PAIR, root, Path("reports"), log_mlflow=False).html.read_text(encoding="utf-8")
    assert page.count("not available in this run") >= 4
    assert "HD95 in units of the data" in page


def test_rerun_replaces_outputs_and_index_links_pairs(reported):
    tree, _ = reported
    shutil.rmtree(tree / "metrics" / PAIR / "rq1")
    report = run(PAIR, tree, Path("reports"), log_mlflow=False)
    assert not (tree / "reports" / PAIR / "figures" / "rq1_a_fold0.png").exists()
    assert len(report.figures) == 7
    index = write_index([PAIR, "absent"], tree / "reports").read_text(encoding="utf-8")
    assert f"href='{PAIR}.html'" in index
    assert "not available in this run" in index  # the pair without a report


def test_two_folds_pair_by_case_and_fold(tmp_path: Path):
    results = load_pair(PAIR, write_tree(tmp_path, folds=(0, 1)))
    stats, notes = _stats(results)
    assert (stats["n_pairs"] == 24).all()  # 12 test cases x 2 folds
    assert "folds [0, 1]" in notes["a"]
    assert {f.number: str(f.verdict) for f in judge(results, stats)} == EXPECTED


def test_ablation_table_figure_and_statement(reported):
    """The ablation section from a hand-made table (report_tree.ABLATION): one row per variant, the
    numbers of both positions, the figure, and the findings' statement with the share that depends on
    imperfect stitches ((0.5 - 0.1) / 0.5 = 80 %)."""
    tree, report = reported
    table = pd.read_csv(tree / "reports" / PAIR / "tables" / "ablation.csv").set_index("variant")
    assert list(table.index) == list(ABLATION)
    assert table.loc["default", "selected k"] == 8 and table.loc["default", "best k"] == 7
    assert table.loc["default", "gap closed (selected)"] == pytest.approx(0.5)
    assert table.loc["default", "gap closed (best)"] == pytest.approx(0.75)
    assert table.loc["least_squares", "gap closed (selected)"] == pytest.approx(0.1)
    assert table.loc["schedule_x2", "distance from LS optimum (best)"] == pytest.approx(0.45)
    assert table.loc["schedule_x2", "Dice on b's test (best)"] == pytest.approx(0.88)
    assert (table["stitch-ensemble"] == "a←[a]→b DM").all()
    assert any(p.name == "ablation.png" for p in report.figures)
    headline = json.loads(report.metrics.read_text(encoding="utf-8"))["ablation"]
    assert headline["default/selected"] == {"gap_closed": 0.5, "distance": 0.9}
    assert headline["least_squares/best"] == {"gap_closed": 0.1, "distance": 0.05}
    logged = mlflow_metrics(load_pair(PAIR, tree), pd.DataFrame(columns=["perspective"]), [])
    assert logged["ablation/default/best/gap_closed_mean"] == pytest.approx(0.75)
    page = report.html.read_text(encoding="utf-8")
    assert "Ablation: how the stitches are trained" in page
    statement = ("Our ablation, not the paper&#x27;s", "80% of the default stitches&#x27; benefit")
    assert all(part in page for part in statement)
    assert page.index(statement[0]) < page.index("Approaches and operating conditions")  # in the findings section
    markdown = report.markdown.read_text(encoding="utf-8")
    assert "default (default init, 50 steps): gap closed 50% at the selected position (75% at the best)" in markdown
    assert "least_squares (least_squares init, 50 steps): gap closed 10%" in markdown
    assert "distance from the least-squares optimum 0.050 (0.050)" in markdown
    assert table.loc["least_squares", "init"] == "least_squares" and table.loc["default", "steps"] == 50


def test_the_report_renders_without_ablation_rows(tmp_path: Path):
    """Smoke with few positions, or a profile whose ablation has not run: the section says so."""
    root = write_tree(tmp_path)
    shutil.rmtree(root / "metrics" / PAIR / "ablation")
    empty = root / "metrics" / PAIR / "ablation" / "via_a_direct_matching" / "fold_0"
    empty.mkdir(parents=True)
    (empty / "ablation.csv").write_text(",".join(["pair", "c", "method", "fold", "variant", "init", "steps", "position", "k",
                                                  "selected_k", "best_k", "val_dice", "dice_a", "dice_b",
                                                  "own_dice", "ensemble_dice", "gap_closed", "distance"]) + "\n")
    report = run(PAIR, root, Path("reports"), log_mlflow=False)
    page = report.html.read_text(encoding="utf-8")
    assert "Ablation: how the stitches are trained" in page
    assert "not available (no ablation rows in this run)" in page
    assert not any(p.name == "ablation.png" for p in report.figures)
    assert load_pair(PAIR, root).problems == []


@pytest.mark.parametrize(("default", "start", "says"), [
    (0.5, 0.1, "80% of the default stitches' benefit"),
    (0.2, 0.3, "here none of the benefit depends on the stitches being imperfect"),
    (-0.1, -0.2, "the default stitches close no part of the gap (-10%)"),
    (None, None, "not available (no stitch-ensemble with a gap to close)"),
])
def test_ablation_statement_says_what_the_numbers_allow(default, start, says):
    from stitch_ops.evaluation.findings import ablation_statement

    rows = [{"c": "a", "method": "direct_matching", "fold": 0, "variant": variant, "init": init, "steps": 50,
             "position": position, "gap_closed": gap, "distance": 0.5}
            for variant, init, gap in (("default", "default", default), ("least_squares", "least_squares", start))
            for position in ("selected", "best")]
    statement = ablation_statement(pd.DataFrame(rows).assign(own_dice=0.9, ensemble_dice=0.8))
    assert statement.startswith("Our ablation, not the paper's") and says in statement
    assert "unreliable" not in statement
    small_gap = ablation_statement(pd.DataFrame(rows).assign(own_dice=0.81, ensemble_dice=0.8))
    if default is not None:  # with a gap to close, a tiny one makes the shares unreliable: said so
        assert "only 0.010 Dice" in small_gap and "these shares are unreliable" in small_gap
