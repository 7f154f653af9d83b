"""Own-data comparison of approaches: two-sided Wilcoxon signed-rank tests with Holm's correction.

DESIGN.md, "Experiments": per party *perspective* p, every approach feasible from p is
compared with p's own-data model ``p`` on p's own test set, paired by (test case, fold),
for Dice and for HD95; the p-values of one perspective and one metric form one family,
corrected with Holm–Bonferroni.

Choices, stated once:

- **Test.** :func:`scipy.stats.wilcoxon` (two-sided, ``zero_method="wilcox"``: pairs
  with a zero difference are left out of the ranking, as Wilcoxon proposed; their number
  is reported as ``n_zero``; ``method="auto"``: exact distribution for small samples
  without ties, all ``2**n`` sign flips for at most 13 pairs with ties or zeros, normal
  approximation otherwise). With ``n`` non-zero pairs the smallest
  two-sided p-value is ``2 / 2**n``: fewer than 6 pairs can never reach p < 0.05.
- **All differences zero.** The two models agree on every case, so there is no evidence
  of a difference: ``p = 1.0`` (not NaN, so it stays in the Holm family and a table never
  carries a missing value); ``statistic = 0.0``.
- **Empty masks.** The per-case values come from :mod:`stitch_ops.evaluation.metrics`,
  whose empty-mask policy gives every case a finite Dice and HD95 (an empty answer scores
  Dice 0 and HD95 = the image diagonal). Those cases stay in the test like every other
  case; :func:`perspective_tests` counts them per model (``n_dice_zero``). A NaN or
  infinite value means the table did not come from that policy: it is refused, never
  dropped.
- **Pairing.** Every model must have exactly the baseline's (fold, case) pairs; a missing
  or duplicated pair is an error, never silently skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "ALPHA",
    "HIGHER_IS_BETTER",
    "STATS_COLUMNS",
    "direction",
    "feasible_from",
    "perspective_tests",
    "wilcoxon_holm",
]

ALPHA = 0.05
"""Significance level applied to the Holm-adjusted p-values when stating a direction."""

STATS_COLUMNS: tuple[str, ...] = ("model", "n_pairs", "n_zero", "statistic", "p", "p_holm", "median_difference")
"""Columns of :func:`wilcoxon_holm`'s result, in order."""

HIGHER_IS_BETTER = {"dice": True, "hd95": False}
"""Which way each metric improves."""

PAIR_KEYS = ("fold", "case")


def _check_table(per_case: pd.DataFrame, baseline: str, metric: str) -> None:
    missing = [c for c in ("model", *PAIR_KEYS, metric) if c not in per_case.columns]
    if missing:
        raise ValueError(f"per_case should have the columns model, fold, case, {metric}; missing {missing}.")
    if baseline not in set(per_case["model"]):
        raise ValueError(f"the baseline model {baseline!r} has no rows; models present: "
                         f"{sorted(map(str, per_case['model'].unique()))}.")
    values = pd.to_numeric(per_case[metric], errors="coerce")
    bad = per_case.loc[~np.isfinite(values.to_numpy(dtype=float)), ["model", *PAIR_KEYS, metric]]
    if not bad.empty:
        shown = bad.head(5).to_dict("records")
        raise ValueError(
            f"{len(bad)} {metric} value(s) are NaN, infinite or not numbers, e.g. {shown}; the empty-mask "
            "policy (stitch_ops.evaluation.metrics) gives every case a finite value: re-evaluate these "
            "predictions with `python -m stitch_ops.evaluation` instead of dropping the cases.")
    duplicated = per_case.duplicated(["model", *PAIR_KEYS], keep=False)
    if duplicated.any():
        shown = per_case.loc[duplicated, ["model", *PAIR_KEYS]].head(5).to_dict("records")
        raise ValueError(f"per_case holds more than one row per (model, fold, case), e.g. {shown}; "
                         "pass one perspective's test set at a time.")


def _paired(per_case: pd.DataFrame, baseline: str, metric: str) -> pd.DataFrame:
    """Wide table: one row per (fold, case) of the baseline, one column per model."""
    wide = per_case.pivot(index=list(PAIR_KEYS), columns="model", values=metric).astype(float)
    expected = wide[baseline].notna()
    for model in wide.columns:
        have = wide[model].notna()
        if not have.equals(expected):
            lacking = wide.index[expected & ~have].tolist()[:5]
            extra = wide.index[have & ~expected].tolist()[:5]
            raise ValueError(f"model {model!r} is not paired with the baseline {baseline!r} by (fold, case): "
                             f"missing {lacking}, extra {extra}; evaluate every model on the same test "
                             "cases and folds.")
    return wide.loc[expected]


SIGN_FLIPS_MAX_PAIRS = 13
"""Up to this many pairs, with zero or tied differences, scipy's ``method="auto"`` computes
the p-value from all ``2**n`` sign flips of the differences (a permutation test)."""


def _wilcoxon(differences: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired differences; (statistic, p), as
    :func:`scipy.stats.wilcoxon` with ``method="auto"`` gives them. Its sign-flip permutation
    test evaluates the statistic one flip at a time (about 2.6 s for 12 pairs, a report runs
    dozens); :func:`_sign_flip_p` computes the same p-value for all flips at once."""
    from scipy.stats import wilcoxon

    if not np.any(differences != 0):
        return 0.0, 1.0  # no evidence of a difference (see the module docstring)
    if not _sign_flips_used(differences):
        result = wilcoxon(differences, zero_method="wilcox", alternative="two-sided", method="auto")
        return float(result.statistic), float(result.pvalue)
    # min(R+, R-) is the same whichever way the p-value is computed
    statistic = wilcoxon(differences, zero_method="wilcox", alternative="two-sided", method="asymptotic").statistic
    return float(statistic), _sign_flip_p(differences)


def _sign_flips_used(differences: np.ndarray) -> bool:
    """Whether scipy's ``method="auto"`` takes the permutation test: few pairs, and a zero
    difference or tied absolute differences (its exact distribution assumes neither)."""
    magnitudes = np.abs(differences[differences != 0])
    ties_or_zeros = len(magnitudes) < len(differences) or len(np.unique(magnitudes)) < len(magnitudes)
    return len(differences) <= SIGN_FLIPS_MAX_PAIRS and ties_or_zeros


def _sign_flip_p(differences: np.ndarray) -> float:
    """Two-sided p-value of the signed-rank statistic R+ over every sign flip of the
    differences, as scipy's permutation test gives it. Flipping signs leaves the ranks of the
    absolute differences unchanged (zeros stay out of the ranking), so R+ of every flip is a
    sum of the same ranks: one vectorized statistic instead of one call per flip."""
    from scipy.stats import PermutationMethod, permutation_test, rankdata

    nonzero = differences != 0
    ranks = np.zeros(len(differences))
    ranks[nonzero] = rankdata(np.abs(differences[nonzero]))

    def positive_rank_sum(flipped: np.ndarray, axis: int) -> np.ndarray:
        return np.sum((np.moveaxis(flipped, axis, -1) > 0) * ranks, axis=-1)

    result = permutation_test((differences,), positive_rank_sum, permutation_type="samples", vectorized=True,
                              alternative="two-sided", **PermutationMethod()._asdict())
    return float(result.pvalue)


def wilcoxon_holm(per_case: pd.DataFrame, baseline: str, metric: str) -> pd.DataFrame:
    """Test every model against ``baseline`` on ``metric``, Holm-corrected over those tests.

    Args:
        per_case: columns ``model, fold, case, <metric>``, one row per model × fold × test
            case of one perspective's test set (extra columns are ignored).
        baseline: the value of ``model`` to compare with (the own-data model).
        metric: the metric column, e.g. ``"dice"`` or ``"hd95"``.

    Returns:
        One row per other model (sorted by name), columns :data:`STATS_COLUMNS`:
        ``n_pairs`` (fold, case) pairs, ``n_zero`` of them with a zero difference (left
        out of the ranking), the Wilcoxon ``statistic`` and two-sided ``p``, ``p_holm``
        (Holm over every row of this table), ``median_difference`` = median of
        (model − baseline), in the metric's units. Empty when there is no other model.

    Raises:
        ValueError: a column is missing, the baseline has no rows, a value is NaN or
            infinite, or a model lacks some of the baseline's (fold, case) pairs.

    Example:
        >>> table = pd.DataFrame({"model": ["a"] * 4 + ["a&b"] * 4, "fold": 0,
        ...                       "case": ["c1", "c2", "c3", "c4"] * 2,
        ...                       "dice": [0.8, 0.7, 0.9, 0.6, 0.9, 0.8, 0.95, 0.7]})
        >>> row = wilcoxon_holm(table, "a", "dice").iloc[0]
        >>> (row["model"], row["n_pairs"], round(row["p"], 3), round(row["median_difference"], 3))
        ('a&b', 4, 0.125, 0.1)
    """
    _check_table(per_case, baseline, metric)
    wide = _paired(per_case, baseline, metric)
    rows = []
    for model in sorted((m for m in wide.columns if m != baseline), key=str):
        differences = (wide[model] - wide[baseline]).to_numpy()
        statistic, p = _wilcoxon(differences)
        rows.append({"model": model, "n_pairs": len(differences), "n_zero": int(np.sum(differences == 0)),
                     "statistic": statistic, "p": p, "median_difference": float(np.median(differences))})
    table = pd.DataFrame(rows, columns=[c for c in STATS_COLUMNS if c != "p_holm"])
    table.insert(STATS_COLUMNS.index("p_holm"), "p_holm", _holm(table["p"].to_numpy(dtype=float)))
    return table.reset_index(drop=True)


def _holm(p_values: np.ndarray) -> np.ndarray:
    from statsmodels.stats.multitest import multipletests

    if len(p_values) == 0:
        return np.array([], dtype=float)
    return multipletests(p_values, alpha=ALPHA, method="holm")[1]


def direction(metric: str, median_difference: float, p_holm: float, baseline: str, alpha: float = ALPHA) -> str:
    """The test's result in words, e.g. ``"better than a (p_holm = 0.012)"``.

    "better"/"worse" use the metric's direction (Dice up, HD95 down) and need
    ``p_holm < alpha``; otherwise ``"no significant difference from a"``.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {metric!r}")
    if math.isnan(p_holm) or p_holm >= alpha:
        return f"no significant difference from {baseline} (p_holm = {p_holm:.3g})"
    if median_difference == 0:
        return f"differs from {baseline}, median difference 0 (p_holm = {p_holm:.3g})"
    better = (median_difference > 0) == HIGHER_IS_BETTER[metric]
    return f"{'better' if better else 'worse'} than {baseline} (p_holm = {p_holm:.3g})"


def feasible_from(party: str, perspective: str, both: str = "both") -> bool:
    """Whether a model with this ``perspective`` is an approach feasible from ``party``.

    Feasible: the party's own approaches (own model, fine-tuning the other's model on own
    data, stitching with own images, ...) and those that need no party's data in
    particular (perspective ``both``: ensemble, federated, merged). Not feasible: whatever
    was made with the other party's data on the other party's side, the other party's own
    basis model included (it is the other party's own-data approach).
    """
    return perspective in (party, both)


def perspective_tests(cases: pd.DataFrame, party: str, metrics: Sequence[str] = ("dice", "hd95"),
                      feasible: Iterable[str] | None = None) -> pd.DataFrame:
    """The Wilcoxon/Holm tables of one perspective: models on ``party``'s test set vs ``party``.

    Args:
        cases: per-case rows of every model of a pair with at least the columns
            ``test_party, model, fold, case`` and the metrics; ``model`` is the label the
            tables show (the paper's shorthand), the baseline's label is ``party``.
        party: the perspective (``a`` or ``b``).
        metrics: metrics to test, one Holm family each.
        feasible: model labels feasible from ``party`` (the family); ``None``: every model
            in ``cases`` evaluated on ``party``'s test set.

    Returns:
        Rows of :func:`wilcoxon_holm` with ``perspective``, ``metric``, ``n_dice_zero``
        (cases of the model with Dice 0: an empty or disjoint answer, kept in the test under
        the empty-mask policy) and ``direction`` (in words) added.
    """
    own = cases[cases["test_party"] == party]
    if feasible is not None:
        keep = set(feasible) | {party}
        own = own[own["model"].isin(keep)]
    tables = []
    for metric in metrics:
        table = wilcoxon_holm(own, party, metric)
        if table.empty:
            continue
        zero_dice = own[own["dice"] == 0].groupby("model").size() if "dice" in own.columns else pd.Series()
        table.insert(0, "metric", metric)
        table.insert(0, "perspective", party)
        table["n_dice_zero"] = [int(zero_dice.get(m, 0)) for m in table["model"]]
        table["direction"] = [direction(metric, d, p, party)
                              for d, p in zip(table["median_difference"], table["p_holm"])]
        tables.append(table)
        logger.info("perspective %s, %s: %d tests, %d significant after Holm", party, metric, len(table),
                    int((table["p_holm"] < ALPHA).sum()))
    if not tables:
        return pd.DataFrame(columns=["perspective", "metric", *STATS_COLUMNS, "n_dice_zero", "direction"])
    return pd.concat(tables, ignore_index=True)
