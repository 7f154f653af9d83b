"""The paper's nine findings (DESIGN.md), each judged on this run's numbers by an explicit rule.

Every rule reads the measured tables, never a hard-coded result, and says *held*, *not
held* or *not testable here* (an input it needs was not produced, e.g. no merged model
or no RQ1 table), with the numbers it used. ``D(m, t)`` below is model m's mean Dice on
party t's test set over every fold and case; ``p`` is a party, ``o`` the other one;
``l`` / ``s`` the larger / smaller party (more cross-validation cases; ``a`` when the
sizes are unknown, as the embedded pairs make a the larger, more varied party).
A *combination* is any model of Table 2 that is not a basis model (stitch-ensembles as
selection strategy 1 chose them; the no-stitch reference and strategies 2/3 are shown, not
judged); it is *feasible from p* when its perspective is p or both. Thresholds (Dice points): ``NEAR`` = 0.03 ("about as well"),
``NOTABLE`` = 0.05 ("notably", "degrades", "forgets").

1. For both p: ``|D(p, p) − D(a+b, p)| ≤ NEAR`` and ``D(p, o) ≤ D(a+b, o) − NOTABLE``.
2. The mean over combinations feasible from s of ``D(m, l) − D(s, l)`` (gain on the other's
   data) exceeds the same mean for l (``D(m, s) − D(l, s)``).
3. Every combination feasible from p beats p's model on o's test set (``D(m, o) > D(p, o)``,
   both p), and ``a+b`` and ``a‖b`` are both on the Pareto front of (D(·, a), D(·, b))
   over all models.
4. Over the fine-tuned models ``o→p`` and folds, at least one forgets
   (``D(o→p, o) ≤ D(o, o) − NOTABLE`` on the original party's test set) and at least one
   matches pooled data on the fine-tuning party's (``D(o→p, p) ≥ D(a+b, p) − NEAR``).
5. ``D(a&b, l) < D(l, l)`` and ``D(a&b, s) > D(s, s)``.
6. For every stitch-ensemble ``a←[c]→b`` of the basis models with ``gap = D(c, c) − D(a&b, c) ≥ NEAR`` (a smaller
   gap is "about as well" already: nothing a stitch could measurably close, so it is listed, not judged): it closes at
   least half the gap (``D(S, c) − D(a&b, c) ≥ gap / 2``), keeps the ensemble's robustness
   (``D(S, o) ≥ D(a&b, o) − NEAR``), and, where positions and the no-stitch reference were
   scored, the worst position's validation Dice is below the reference by more than NEAR.
7. Over the scored-position tables (stitching party, method, fold) with at least 3
   positions, in more than half: the best validation Dice is at relative position ≥ 0.75,
   and the last position has the lowest Dice; and where the no-stitch reference exists,
   positions before 0.3 stay within NEAR of it.
8. For every stitching party c of RQ1: direct matching falls (mean Dice at the largest
   stitch count ≤ at 0 stitches − NOTABLE); double-batched stays closer to the parents
   (mean Dice over the upper half of the non-zero counts above direct matching's); with
   the fewest stitches (the smallest non-zero count) the two are within NEAR.
9. Every own-data Wilcoxon test of Dice significant after Holm has
   ``|median difference| ≤ NOTABLE``; not testable when none is significant.

Beside the nine, :func:`ablation_statement` states what our ablation of the stitch training
(not the paper's; :mod:`stitch_ops.stitching.ablation`) measured: how much of the default
stitches' gap closed is lost when the stitches start at their least-squares optimum, i.e. how
much of the benefit depends on the stitches being imperfect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from stitch_ops import approaches
from stitch_ops.approaches import StitchMethod
from stitch_ops.config import PARTIES
from stitch_ops.evaluation.results import PairResults, StitchSlug, model_label
from stitch_ops.evaluation.stats import ALPHA

__all__ = ["CLAIMS", "Finding", "NEAR", "NOTABLE", "Verdict", "ablation_statement", "judge", "mean_table"]

NEAR = 0.03
NOTABLE = 0.05
EARLY, LATE = 0.3, 0.75

CLAIMS = {
    1: "A model trained on one party's data does about as well as pooled data on that party's own test set, "
       "but notably worse on the other party's.",
    2: "The party with less, narrower data gains most from any combination on the other party's data.",
    3: "Any combination is more robust to the other party's data than an own-data model; merged and "
       "federated give the best trade-off.",
    4: "Fine-tuning is variable: it can match pooled data or fall below the own model on the original "
       "party's data (forgetting).",
    5: "The plain ensemble a&b hurts the larger party on its own test set while it helps the smaller party.",
    6: "A well-placed stitch closes most of the gap between a&b and the own model on the stitching party's "
       "data, keeping the ensemble's robustness; the worst position degrades it.",
    7: "Position trend: early stitches change little; later positions tend to be best; the last is worst.",
    8: "RQ1: with direct matching performance falls as more stitches are active; double-batched training "
       "keeps it closer to the parents; with few stitches the two are alike.",
    9: "On own data, differences between approaches are small even when significant (Wilcoxon + Holm).",
}


class Verdict(StrEnum):
    HELD = "held"
    NOT_HELD = "not held"
    NOT_TESTABLE = "not testable here"


@dataclass(frozen=True)
class Finding:
    """One finding's verdict and the numbers behind it."""

    number: int
    claim: str
    verdict: Verdict
    numbers: str


def mean_table(cases: pd.DataFrame, by_fold: bool = False) -> pd.DataFrame:
    """Mean Dice and HD95 per model and test set (test sets only, validation rows left out).

    Returns:
        Columns ``model, test_party, [fold,] dice, hd95, n_cases``.
    """
    test = cases[cases["test_party"].isin(PARTIES)]
    keys = ["model", "test_party"] + (["fold"] if by_fold else [])
    if test.empty:
        return pd.DataFrame(columns=[*keys, "dice", "hd95", "n_cases"])
    grouped = test.groupby(keys, sort=False)
    table = grouped[["dice", "hd95"]].mean()
    table["n_cases"] = grouped.size()
    return table.reset_index()


class _Means:
    """``D(model, party)`` lookups that say which inputs were missing."""

    def __init__(self, cases: pd.DataFrame):
        table = mean_table(cases)
        self.dice = {(m, t): float(d) for m, t, d in zip(table["model"], table["test_party"], table["dice"])}
        self.missing: set[str] = set()

    def __call__(self, model: str, party: str) -> float:
        value = self.dice.get((model, party))
        if value is None:
            self.missing.add(f"{model} on {party}'s test set")
            return math.nan
        return value

    def has(self, model: str) -> bool:
        return all((model, p) in self.dice for p in PARTIES)


def _f(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _label(model: approaches.ModelId) -> str:
    return model_label(model.approach, model.trained_on)


def _other(party: str) -> str:
    return approaches.other(party)


def _parties_by_size(results: PairResults) -> tuple[str, str, str]:
    sizes = results.train_cases
    if all(p in sizes for p in PARTIES) and sizes["a"] != sizes["b"]:
        larger = max(PARTIES, key=lambda p: sizes[p])
        return larger, _other(larger), f"{larger} is larger ({sizes['a']} vs {sizes['b']} CV cases for a vs b)"
    return "a", "b", "a taken as the larger party (the embedded pairs' design)"


def _not_testable(number: int, why: str) -> Finding:
    return Finding(number, CLAIMS[number], Verdict.NOT_TESTABLE, why)


def _verdict(ok: bool) -> Verdict:
    return Verdict.HELD if ok else Verdict.NOT_HELD


def _combinations(results: PairResults, party: str) -> list[str]:
    """Labels of evaluated non-basis models feasible from ``party``."""
    models = results.models
    keep = models[(models["approach"] != approaches.Approach.LOCAL) & models["known"].astype(bool)
                  & (models["role"] == "approach") & models["perspective"].isin([party, approaches.BOTH])]
    return list(keep["model"])


def _finding_1(results: PairResults, D: _Means) -> Finding:
    pooled = _label(approaches.merged())
    if not (D.has("a") and D.has("b") and D.has(pooled)):
        return _not_testable(1, f"needs the basis models a, b and {pooled} on both test sets")
    parts, ok = [], True
    for p in PARTIES:
        o = _other(p)
        near = abs(D(p, p) - D(pooled, p)) <= NEAR
        worse = D(p, o) <= D(pooled, o) - NOTABLE
        ok &= near and worse
        parts.append(f"{p}: D({p},{p}) = {_f(D(p, p))} vs D({pooled},{p}) = {_f(D(pooled, p))} "
                     f"({'within' if near else 'not within'} {NEAR}); D({p},{o}) = {_f(D(p, o))} vs "
                     f"D({pooled},{o}) = {_f(D(pooled, o))} ({'notably worse' if worse else 'not notably worse'})")
    return Finding(1, CLAIMS[1], _verdict(ok), "; ".join(parts))


def _finding_2(results: PairResults, D: _Means) -> Finding:
    large, small, sizes = _parties_by_size(results)
    gains = {}
    for p in (small, large):
        o = _other(p)
        values = [D(m, o) - D(p, o) for m in _combinations(results, p) if D.has(m)] if D.has(p) else []
        gains[p] = values
    if not gains[small] or not gains[large]:
        return _not_testable(2, "needs both basis models and at least one combination feasible from each party")
    g_small, g_large = float(np.mean(gains[small])), float(np.mean(gains[large]))
    return Finding(2, CLAIMS[2], _verdict(g_small > g_large),
                   f"{sizes}; mean gain on the other's test set: {small} {g_small:+.3f} over {len(gains[small])} "
                   f"combinations, {large} {g_large:+.3f} over {len(gains[large])}")


def _pareto(points: dict[str, tuple[float, float]]) -> set[str]:
    front = set()
    for name, (x, y) in points.items():
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for other, (x2, y2) in points.items()
                        if other != name)
        if not dominated:
            front.add(name)
    return front


def _finding_3(results: PairResults, D: _Means) -> Finding:
    pooled, federated = _label(approaches.merged()), _label(approaches.federated())
    if not (D.has("a") and D.has("b") and D.has(pooled) and D.has(federated)):
        return _not_testable(3, f"needs a, b, {pooled} and {federated} on both test sets")
    robust, total, weaker = 0, 0, []
    for p in PARTIES:
        o = _other(p)
        for m in _combinations(results, p):
            if not D.has(m):
                continue
            total += 1
            if D(m, o) > D(p, o):
                robust += 1
            else:
                weaker.append(f"{m} on {o}'s test {_f(D(m, o))} ≤ {p}'s {_f(D(p, o))}")
    points = {m: (D(m, "a"), D(m, "b")) for m in results.models["model"] if D.has(m)}
    front = _pareto(points)
    on_front = pooled in front and federated in front
    text = (f"{robust} of {total} (combination, perspective) pairs beat the own model on the other's test set"
            + (f" (not: {'; '.join(weaker[:4])})" if weaker else "")
            + f"; Pareto front of (Dice on a, Dice on b): {', '.join(sorted(front))}")
    return Finding(3, CLAIMS[3], _verdict(total > 0 and robust == total and on_front), text)


def _finding_4(results: PairResults, D: _Means) -> Finding:
    pooled = _label(approaches.merged())
    per_fold = mean_table(results.cases, by_fold=True)
    value = {(m, t, f): d for m, t, f, d in zip(per_fold["model"], per_fold["test_party"], per_fold["fold"],
                                                per_fold["dice"])}
    forgets, matches, parts = 0, 0, []
    for p in PARTIES:
        o, tuned = _other(p), _label(approaches.finetuned(p))
        for fold in sorted({f for (m, _, f) in value if m == tuned}):
            needed = [(tuned, o, fold), (o, o, fold), (tuned, p, fold), (pooled, p, fold)]
            if any(key not in value for key in needed):
                continue
            drop = value[(tuned, o, fold)] - value[(o, o, fold)]
            gap = value[(tuned, p, fold)] - value[(pooled, p, fold)]
            forgets += drop <= -NOTABLE
            matches += gap >= -NEAR
            parts.append(f"{tuned} fold {fold}: on {o}'s test {drop:+.3f} vs {o} "
                         f"({'forgets' if drop <= -NOTABLE else 'keeps'}), on {p}'s test {gap:+.3f} vs {pooled} "
                         f"({'matches' if gap >= -NEAR else 'below'})")
    if not parts:
        return _not_testable(4, f"needs fine-tuned models, the basis models and {pooled}, per fold")
    return Finding(4, CLAIMS[4], _verdict(forgets > 0 and matches > 0), "; ".join(parts))


def _finding_5(results: PairResults, D: _Means) -> Finding:
    both = _label(approaches.ensemble())
    if not (D.has("a") and D.has("b") and D.has(both)):
        return _not_testable(5, f"needs a, b and {both} on both test sets")
    large, small, sizes = _parties_by_size(results)
    hurts = D(both, large) < D(large, large)
    helps = D(both, small) > D(small, small)
    return Finding(5, CLAIMS[5], _verdict(hurts and helps),
                   f"{sizes}; on {large}'s test: {both} {_f(D(both, large))} vs {large} {_f(D(large, large))} "
                   f"({'hurts' if hurts else 'does not hurt'}); on {small}'s test: {both} {_f(D(both, small))} "
                   f"vs {small} {_f(D(small, small))} ({'helps' if helps else 'does not help'})")


def _worst_position_degrades(results: PairResults, slug: str) -> tuple[bool | None, str]:
    positions = results.positions
    references = results.no_stitch
    if positions.empty or references.empty:
        return None, "worst position: no scored positions with a no-stitch reference"
    verdicts, texts = [], []
    for fold, table in positions[positions["slug"] == slug].groupby("fold"):
        reference = references[(references["slug"] == slug) & (references["fold"] == fold)]
        if reference.empty or pd.isna(reference["dice"].iloc[0]):
            continue
        worst, ref = float(table["dice"].min()), float(reference["dice"].iloc[0])
        verdicts.append(worst < ref - NEAR)
        texts.append(f"fold {fold} worst position val Dice {worst:.3f} vs no-stitch {ref:.3f}")
    if not verdicts:
        return None, "worst position: no no-stitch reference for this stitch-ensemble"
    return all(verdicts), ", ".join(texts)


def _finding_6(results: PairResults, D: _Means) -> Finding:
    both = _label(approaches.ensemble())
    models = results.models
    stitched = models[(models["approach"] == approaches.Approach.STITCH) & (models["role"] == "approach")
                      & ~models["trained_on"].map(lambda slug: StitchSlug.parse(slug).finetuned)]
    if stitched.empty or not (D.has(both) and D.has("a") and D.has("b")):
        return _not_testable(6, f"needs stitch-ensembles, {both} and the basis models on both test sets")
    oks, parts = [], []
    for model, c, slug in zip(stitched["model"], stitched["perspective"], stitched["trained_on"]):
        if c not in PARTIES or not D.has(model):
            continue
        o = _other(c)
        gap = D(c, c) - D(both, c)
        if gap < NEAR:
            parts.append(f"{model}: no gap to close ({both} {_f(D(both, c))} vs {c} {_f(D(c, c))} on {c}'s test, "
                         f"within {NEAR}; not judged)")
            continue
        closed = (D(model, c) - D(both, c)) / gap
        robust = D(model, o) >= D(both, o) - NEAR
        worst, worst_text = _worst_position_degrades(results, slug)
        ok = closed >= 0.5 and robust and worst is not False
        oks.append(ok)
        parts.append(f"{model}: closes {closed:.0%} of the gap {gap:.3f} on {c}'s test ({_f(D(model, c))}); "
                     f"on {o}'s test {_f(D(model, o))} vs {both} {_f(D(both, o))} "
                     f"({'robust' if robust else 'less robust'}); {worst_text}")
    if not oks:
        return Finding(6, CLAIMS[6], Verdict.NOT_TESTABLE, "; ".join(parts) or "no stitch-ensemble on both tests")
    return Finding(6, CLAIMS[6], _verdict(all(oks)), f"held for {sum(oks)} of {len(oks)}: " + "; ".join(parts))


def _relative(table: pd.DataFrame) -> pd.Series:
    if "relative_position" in table.columns and table["relative_position"].notna().all():
        return table["relative_position"].astype(float)
    return table["k"].astype(float) / (table["k"].max() + 1)  # k / number of matches, approximated


def _finding_7(results: PairResults, D: _Means) -> Finding:
    positions = results.positions
    if positions.empty:
        return _not_testable(7, "no scored stitch positions")
    late, last, early, early_n, tables = 0, 0, 0, 0, 0
    for (slug, fold), table in positions.groupby(["slug", "fold"]):
        if len(table) < 3:
            continue
        tables += 1
        table = table.assign(rel=_relative(table)).sort_values("k")
        late += float(table.loc[table["dice"].idxmax(), "rel"]) >= LATE
        last += float(table["dice"].iloc[-1]) <= float(table["dice"].min())
        reference = results.no_stitch[(results.no_stitch["slug"] == slug) & (results.no_stitch["fold"] == fold)]
        first = table[table["rel"] < EARLY]
        if not reference.empty and not first.empty and pd.notna(reference["dice"].iloc[0]):
            early_n += 1
            early += bool((first["dice"] - float(reference["dice"].iloc[0])).abs().le(NEAR).all())
    if tables == 0:
        return _not_testable(7, "no table with at least 3 scored positions")
    majority = lambda count, n: count > n / 2  # noqa: E731
    ok = majority(late, tables) and majority(last, tables) and (early_n == 0 or majority(early, early_n))
    text = (f"{tables} position tables: best at relative position ≥ {LATE} in {late}, last position worst in "
            f"{last}; early positions (< {EARLY}) within {NEAR} of the no-stitch reference in "
            + (f"{early} of {early_n}" if early_n else "none testable (no reference)"))
    return Finding(7, CLAIMS[7], _verdict(ok), text)


def _finding_8(results: PairResults, D: _Means) -> Finding:
    rq1 = results.rq1
    methods = set(rq1["method"]) if not rq1.empty else set()
    if not {m.value for m in StitchMethod} <= methods:
        return _not_testable(8, "needs RQ1 results of both training methods")
    oks, parts = [], []
    for c, table in rq1.groupby("c"):
        curve = table.groupby(["method", "n_stitches"])["dice"].mean().unstack("method").sort_index()
        if not {m.value for m in StitchMethod} <= set(curve.columns) or 0 not in curve.index:
            continue
        counts = [n for n in curve.index if n > 0]
        if len(counts) < 2:
            continue
        dm, db = curve[StitchMethod.DIRECT_MATCHING.value], curve[StitchMethod.DOUBLE_BATCHED.value]
        falls = dm[counts[-1]] <= dm[0] - NOTABLE
        upper = counts[len(counts) // 2:]
        closer = db[upper].mean() > dm[upper].mean()
        alike = abs(db[counts[0]] - dm[counts[0]]) <= NEAR
        oks.append(falls and closer and alike)
        parts.append(f"c = {c}: direct matching {dm[0]:.3f} at 0 → {dm[counts[-1]]:.3f} at {counts[-1]} stitches "
                     f"({'falls' if falls else 'does not fall'}); upper half of counts DB {db[upper].mean():.3f} "
                     f"vs DM {dm[upper].mean():.3f}; at {counts[0]} stitches DB {db[counts[0]]:.3f} vs DM "
                     f"{dm[counts[0]]:.3f} ({'alike' if alike else 'differ'})")
    if not oks:
        return _not_testable(8, "RQ1 tables lack 0 stitches or two non-zero counts")
    return Finding(8, CLAIMS[8], _verdict(all(oks)), "; ".join(parts))


def _finding_9(stats: pd.DataFrame) -> Finding:
    if stats.empty:
        return _not_testable(9, "no own-data tests (needs the basis models and other models on the same test cases)")
    dice = stats[stats["metric"] == "dice"]
    significant = dice[dice["p_holm"] < ALPHA]
    if significant.empty:
        n = int(dice["n_pairs"].max()) if not dice.empty else 0
        return _not_testable(9, f"no Dice difference significant after Holm ({len(dice)} tests, up to {n} pairs "
                                f"each; fewer than 6 non-zero pairs can never reach p < 0.05)")
    large = significant[significant["median_difference"].abs() > NOTABLE]
    text = ", ".join(f"{r.model} vs {r.perspective}: {r.median_difference:+.3f} (p_holm {r.p_holm:.3g})"
                     for r in significant.itertuples())
    return Finding(9, CLAIMS[9], _verdict(large.empty),
                   f"{len(significant)} of {len(dice)} Dice tests significant; median differences: {text}")


def judge(results: PairResults, stats: pd.DataFrame) -> list[Finding]:
    """The nine findings for one pair, in order (rules in the module docstring)."""
    D = _Means(results.cases)
    rules: list[Callable[[PairResults, _Means], Finding]] = [
        _finding_1, _finding_2, _finding_3, _finding_4, _finding_5, _finding_6, _finding_7, _finding_8]
    return [rule(results, D) for rule in rules] + [_finding_9(stats)]


def _share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0%}"


def ablation_statement(ablation: pd.DataFrame) -> str:
    """One paragraph, with its numbers, on what the ablation of the stitch training measured (ours,
    not the paper's): per variant the mean gap closed on c's test set (selected and best position)
    and the stitches' mean distance from their least-squares optimum, and the share of the default
    variant's gap closed (selected position) that is lost from the least-squares start. Says so
    when the ablation has no rows or no gap to close."""
    prefix = "Our ablation, not the paper's (how the stitches are trained): "
    rows = ablation.dropna(subset=["gap_closed"]) if not ablation.empty else ablation
    if rows.empty:
        why = "no ablation rows in this run" if ablation.empty else "no stitch-ensemble with a gap to close"
        return prefix + f"not available ({why})."
    means = rows.groupby(["variant", "position"])[["gap_closed", "distance"]].mean()
    networks = rows[["c", "method", "fold"]].drop_duplicates()
    where = ", ".join(f"a←[{r.c}]→b {r.method} fold {r.fold}" for r in networks.itertuples())

    def mean(variant: str, position: str, column: str) -> float:
        return float(means.loc[(variant, position), column]) if (variant, position) in means.index else math.nan

    parts = []
    for variant, table in rows.groupby("variant", sort=False):
        setup = f"{table['init'].iloc[0]} init, {int(table['steps'].iloc[0])} steps"
        parts.append(f"{variant} ({setup}): gap closed {_share(mean(variant, 'selected', 'gap_closed'))} at the "
                     f"selected position ({_share(mean(variant, 'best', 'gap_closed'))} at the best), distance from "
                     f"the least-squares optimum {mean(variant, 'selected', 'distance'):.3f} "
                     f"({mean(variant, 'best', 'distance'):.3f})")
    default, start = mean("default", "selected", "gap_closed"), mean("least_squares", "selected", "gap_closed")
    if math.isnan(default) or math.isnan(start):
        verdict = "the default or the least-squares variant is missing, so the share cannot be computed"
    elif default <= 0:
        verdict = (f"the default stitches close no part of the gap ({_share(default)}), so no benefit is there "
                   f"to depend on them")
    elif start >= default:
        verdict = (f"stitches started at their least-squares optimum close as much of the gap or more "
                   f"({_share(start)} against the default's {_share(default)}): here none of the benefit depends "
                   f"on the stitches being imperfect")
    else:
        lost = (default - start) / default
        verdict = (f"{_share(lost)} of the default stitches' benefit (gap closed at the selected position) is "
                   f"lost when they start at their least-squares optimum, i.e. depends on the stitches being "
                   f"imperfect")
    gap = float((rows["own_dice"] - rows["ensemble_dice"]).min()) if "own_dice" in rows else math.nan
    caveat = (f" The gap between a&b and the own model is only {gap:.3f} Dice on c's test set here (below {NEAR}): "
              f"these shares are unreliable." if gap < NEAR else "")
    return prefix + f"over {where}: " + "; ".join(parts) + f". So {verdict}." + caveat
