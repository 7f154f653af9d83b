"""Wilcoxon + Holm on hand-made tables, checked against scipy / statsmodels and by hand."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon
from statsmodels.stats.multitest import multipletests

from stitch_ops.evaluation.stats import STATS_COLUMNS, direction, perspective_tests, wilcoxon_holm


def long_table(values: dict[str, list[float]], folds: int = 1, metric: str = "dice") -> pd.DataFrame:
    """``values[model]`` = the metric of cases c0, c1, ... (repeated per fold, fold f adds f/100)."""
    rows = []
    for model, column in values.items():
        n = len(column) // folds
        for i, value in enumerate(column):
            rows.append({"model": model, "fold": i // n, "case": f"c{i % n}", metric: value})
    return pd.DataFrame(rows)


def test_columns_and_one_row_per_other_model():
    table = long_table({"a": [0.8, 0.7, 0.9, 0.6], "a&b": [0.9, 0.8, 0.95, 0.7], "a+b": [0.7, 0.6, 0.8, 0.5]})
    result = wilcoxon_holm(table, "a", "dice")
    assert tuple(result.columns) == STATS_COLUMNS
    assert list(result["model"]) == ["a&b", "a+b"]  # sorted by name, baseline left out


def test_n_below_6_matches_exact_scipy_and_cannot_reach_005():
    # four pairs, all improving: the exact two-sided p is 2 / 2**4 = 0.125, the smallest there is
    table = long_table({"a": [0.8, 0.7, 0.9, 0.6], "a&b": [0.9, 0.8, 0.95, 0.7]})
    row = wilcoxon_holm(table, "a", "dice").iloc[0]
    assert row["p"] == pytest.approx(0.125)
    assert row["statistic"] == 0.0
    assert row["n_pairs"] == 4 and row["n_zero"] == 0
    assert row["median_difference"] == pytest.approx(0.1)
    assert row["p_holm"] == pytest.approx(0.125)  # a family of one


def test_against_scipy_and_statsmodels_with_ties_and_two_folds():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 0.9, 24)
    models = {"a": list(base),
              "x": list(np.round(base + rng.normal(0.03, 0.02, 24), 2)),   # rounding makes ties
              "y": list(base + rng.normal(-0.01, 0.05, 24)),
              "z": list(np.round(base + rng.normal(0.0, 0.01, 24), 2))}
    table = long_table(models, folds=2)
    result = wilcoxon_holm(table, "a", "dice").set_index("model")
    p = []
    for model in ["x", "y", "z"]:
        expected = wilcoxon(np.array(models[model]) - base, zero_method="wilcox", alternative="two-sided")
        assert result.loc[model, "p"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert result.loc[model, "statistic"] == pytest.approx(expected.statistic)
        assert result.loc[model, "n_pairs"] == 24
        assert result.loc[model, "median_difference"] == pytest.approx(np.median(np.array(models[model]) - base))
        p.append(expected.pvalue)
    holm = multipletests(p, method="holm")[1]
    assert list(result.loc[["x", "y", "z"], "p_holm"]) == pytest.approx(list(holm), rel=1e-12)
    assert (result["p_holm"] >= result["p"]).all()
    assert result.loc["x", "p_holm"] < 0.05  # a clear improvement stays significant after Holm


@pytest.mark.parametrize(("pairs", "draws"), [(3, 4), (8, 4), (13, 1)])
def test_small_samples_with_ties_or_zeros_give_scipys_permutation_p(pairs: int, draws: int):
    # scipy's method="auto" runs a sign-flip permutation test here (one statistic per flip); the
    # vectorized one must give the very same numbers, zeros left out of the ranking, ties averaged
    rng = np.random.default_rng(pairs)
    base = rng.uniform(0.5, 0.9, pairs)
    for step in (0.05, 0.1):  # coarse differences: ties and zeros on most draws
        for _ in range(draws):
            other = base + step * rng.integers(-2, 4, pairs)
            if np.array_equal(other, base):
                continue
            row = wilcoxon_holm(long_table({"a": list(base), "m": list(other)}), "a", "dice").iloc[0]
            expected = wilcoxon(other - base, zero_method="wilcox", alternative="two-sided", method="auto")
            assert (row["statistic"], row["p"]) == (float(expected.statistic), float(expected.pvalue))


def test_zero_differences_are_counted_and_left_out_of_the_ranking():
    base = [0.5, 0.6, 0.7, 0.8, 0.55, 0.65, 0.75]
    other = [0.5, 0.6, 0.72, 0.83, 0.6, 0.71, 0.82]  # two zeros, five improvements
    row = wilcoxon_holm(long_table({"a": base, "m": other}), "a", "dice").iloc[0]
    assert row["n_zero"] == 2 and row["n_pairs"] == 7
    expected = wilcoxon(np.array(other) - np.array(base), zero_method="wilcox")
    assert row["p"] == pytest.approx(expected.pvalue)
    assert row["p"] == pytest.approx(2 / 2**5)  # exactly five non-zero pairs, all positive


def test_all_equal_column_gives_p_one_and_stays_in_the_holm_family():
    base = [0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3]
    better = [v + 0.05 + 0.001 * i for i, v in enumerate(base)]
    table = long_table({"a": base, "same": list(base), "better": better})
    result = wilcoxon_holm(table, "a", "dice").set_index("model")
    assert result.loc["same", "p"] == 1.0
    assert result.loc["same", "statistic"] == 0.0
    assert result.loc["same", "n_zero"] == 7
    assert result.loc["same", "median_difference"] == 0.0
    # Holm over the two p-values: the smaller one is doubled
    assert result.loc["better", "p_holm"] == pytest.approx(2 * result.loc["better", "p"])
    assert result.loc["same", "p_holm"] == 1.0


def test_large_hd95_from_the_empty_mask_policy_is_kept_and_ranked():
    # one case of model m has an empty prediction: HD95 = the image diagonal (136 px for 96x96)
    diagonal = float(np.hypot(96, 96))
    base = [3.0, 4.0, 2.5, 5.0, 3.5, 4.5]
    other = [2.0, 3.0, 2.0, 4.0, 3.0, diagonal]
    row = wilcoxon_holm(long_table({"a": base, "m": other}, metric="hd95"), "a", "hd95").iloc[0]
    assert row["n_pairs"] == 6
    expected = wilcoxon(np.array(other) - np.array(base))
    assert row["p"] == pytest.approx(expected.pvalue)
    assert row["median_difference"] == pytest.approx(-0.75)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_is_refused_not_dropped(bad):
    table = long_table({"a": [3.0, 4.0, 2.5, 5.0], "m": [2.0, bad, 2.0, 4.0]}, metric="hd95")
    with pytest.raises(ValueError, match="NaN, infinite.*re-evaluate"):
        wilcoxon_holm(table, "a", "hd95")


def test_unpaired_or_duplicated_cases_are_refused():
    table = long_table({"a": [0.8, 0.7, 0.9, 0.6], "m": [0.9, 0.8, 0.95, 0.7]})
    with pytest.raises(ValueError, match="not paired with the baseline"):
        wilcoxon_holm(table.drop(index=5), "a", "dice")
    with pytest.raises(ValueError, match="more than one row per"):
        wilcoxon_holm(pd.concat([table, table.tail(1)]), "a", "dice")
    with pytest.raises(ValueError, match="baseline model 'b' has no rows"):
        wilcoxon_holm(table, "b", "dice")
    with pytest.raises(ValueError, match="missing \\['hd95'\\]"):
        wilcoxon_holm(table, "a", "hd95")


def test_only_the_baseline_gives_an_empty_table():
    result = wilcoxon_holm(long_table({"a": [0.8, 0.7]}), "a", "dice")
    assert result.empty and tuple(result.columns) == STATS_COLUMNS


def test_direction_in_words_follows_the_metric():
    assert direction("dice", 0.02, 0.01, "a").startswith("better than a")
    assert direction("hd95", 0.5, 0.01, "a").startswith("worse than a")
    assert direction("hd95", -0.5, 0.01, "a").startswith("better than a")
    assert direction("dice", 0.02, 0.2, "a").startswith("no significant difference from a")
    with pytest.raises(ValueError, match="metric must be one of"):
        direction("iou", 0.1, 0.01, "a")


def test_perspective_tests_use_own_test_set_and_family():
    rows = []
    for test_party, offset in (("a", 0.0), ("b", 0.3)):
        for model, delta in (("a", 0.0), ("b", -0.2), ("a&b", 0.05), ("b→a", 0.01)):
            for i in range(8):
                dice = 0.6 + offset + delta + 0.01 * i + (0.001 * i if model != "a" else 0)
                rows.append({"test_party": test_party, "model": model, "fold": 0, "case": f"{test_party}{i}",
                             "dice": 0.0 if (model == "b" and i == 0) else dice, "hd95": 10 - 10 * dice})
    cases = pd.DataFrame(rows)
    result = perspective_tests(cases, "a", feasible=["a&b", "b"])
    assert set(result["model"]) == {"a&b", "b"}  # b→a not in the family
    assert set(result["metric"]) == {"dice", "hd95"}
    dice = result[result["metric"] == "dice"].set_index("model")
    assert dice.loc["b", "n_dice_zero"] == 1
    assert dice.loc["b", "direction"].startswith("worse than a")
    assert dice.loc["a&b", "direction"].startswith("better than a")
    hd95 = result[result["metric"] == "hd95"].set_index("model")
    assert hd95.loc["a&b", "direction"].startswith("better than a")
    # Holm per (perspective, metric): with two tests the smallest p is at least doubled
    assert dice["p_holm"].min() == pytest.approx(2 * dice["p"].min())
