"""``stitch-ops report``: one self-contained HTML (+ Markdown) report per pair, and an index.

Reads what the pipeline measured (:mod:`stitch_ops.evaluation.results`), tests the own-data
differences (:mod:`stitch_ops.evaluation.stats`), draws the figures
(:mod:`stitch_ops.evaluation.figures`), judges the paper's findings
(:mod:`stitch_ops.evaluation.findings`) and writes, for pair P under ``reports/``:

- ``P.html``: self-contained (figures inlined as ``data:`` URIs, no script, no network);
- ``P.md``: the same tables and findings, figures linked from ``P/figures/``;
- ``P/figures/*.png`` and ``P/tables/*.csv``;
- ``metrics/P.json``: headline numbers for ``dvc metrics show``;

and ``index.html`` across pairs. The report and its tables are logged to MLflow as one run
per pair (tag ``kind = report``), the Wilcoxon results as metrics named
``wilcoxon/{perspective}/{approach}_{trained_on}/{metric}_{p|p_holm|median_difference}``.
An input not produced yet is shown as "not available in this run".

Usage::

    stitch-ops report                 # every pair of params.yaml, then the index
    stitch-ops report --pair polyp    # one pair (the DVC stage report@polyp)
    stitch-ops report --index         # only the index (the DVC stage report_index)
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params
from stitch_ops.errors import InputFileError, UnknownNameError
from stitch_ops.evaluation import figures
from stitch_ops.evaluation.findings import NEAR, NOTABLE, Finding, Verdict, ablation_statement, judge, mean_table
from stitch_ops.evaluation.results import PairResults, load_pair, model_label
from stitch_ops.evaluation.stats import ALPHA, feasible_from, perspective_tests
from stitch_ops.outputs import read_json, scratch_dir, swap_in, write_json, write_table, write_text
from stitch_ops.paths import REPORTS, PairPaths, dvc_stage
from stitch_ops.warm_start import stage_main

logger = logging.getLogger(__name__)

__all__ = ["PairReport", "build_parser", "main", "run", "write_index"]

NOT_AVAILABLE = "not available in this run"
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd;margin:0.4em 0}
.held{color:#1a7f37;font-weight:bold}.not-held{color:#b42318;font-weight:bold}.not-testable{color:#777}
.na{color:#777;font-style:italic}
code{background:#f5f5f5;padding:0 0.2em}
"""


@dataclass(frozen=True)
class PairReport:
    """What :func:`run` wrote for one pair."""

    pair: str
    html: Path
    markdown: Path
    metrics: Path
    figures: tuple[Path, ...]
    findings: tuple[Finding, ...]
    run_id: str | None


# ---------------------------------------------------------------- tables


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _approach_table(results: PairResults) -> pd.DataFrame:
    models = results.models
    table = models.loc[:, ["model", "approach", "trained_on", "perspective", "data_used", "models_used",
                           "online"]].rename(columns={"model": "shorthand", "data_used": "data used",
                                                      "models_used": "models used"})
    rates = _learning_rates(results)
    if rates:
        table["fine-tuning base LR (source)"] = [rates.get((a, t), "") for a, t in
                                                 zip(table["approach"], table["trained_on"])]
    return table


def _learning_rates(results: PairResults) -> dict[tuple[str, str], str]:
    """``(approach, trained_on)`` -> the base learning rate(s) its fine-tuning used, over all folds."""
    budgets = results.budgets
    if budgets.empty:
        return {}
    rates: dict[tuple[str, str], set[str]] = {}
    for row in budgets.itertuples():
        label = learning_rate_label(row.base_lr, row.base_lr_source)
        if label:
            rates.setdefault((row.approach, row.trained_on), set()).add(label)
    return {key: "; ".join(sorted(labels)) for key, labels in rates.items()}


def _last_improvement(losses: object) -> float | None:
    """Relative improvement of ``losses`` in the last epoch: with the budget's ``plateau_losses``,
    the number the plateau criterion compared with its tolerance."""
    if not isinstance(losses, list) or len(losses) < 2 or not losses[-2]:
        return None
    return (float(losses[-2]) - float(losses[-1])) / abs(float(losses[-2]))


def learning_rate_label(base_lr: object, source: object) -> str:
    """``0.001 (fixed)``: a fine-tuning's base learning rate and where it came from; empty
    for models that are not fine-tuned (or budgets written before the source was recorded)."""
    if base_lr is None or (isinstance(base_lr, float) and math.isnan(base_lr)):
        return ""
    where = source if isinstance(source, str) and source else "source not recorded"
    return f"{float(base_lr):.3g} ({where})"


def _budget_table(results: PairResults) -> pd.DataFrame:
    budgets = results.budgets
    if budgets.empty:
        return budgets
    table = budgets.sort_values(["fold", "model"]).rename(columns={"model": "shorthand"}).reset_index(drop=True)
    labels = [learning_rate_label(lr, source) for lr, source in zip(table["base_lr"], table["base_lr_source"])]
    table = table.drop(columns=["base_lr", "base_lr_source"])
    if any(labels):
        table["fine-tuning base LR (source)"] = labels
    if table["plateau_losses"].notna().any():
        table["last-epoch probe-loss improvement"] = [_last_improvement(v) for v in table["plateau_losses"]]
        table["plateau reached"] = table["plateau_reached"]
    else:
        table = table.drop(columns=["plateau_reached"])
    return table.drop(columns=["loss_per_epoch", "plateau_losses", "plateau_reached"], errors="ignore")


def _biobjective_table(results: PairResults, by_fold: bool) -> pd.DataFrame:
    means = mean_table(results.cases, by_fold=by_fold)
    if means.empty:
        return means
    index = ["model"] + (["fold"] if by_fold else [])
    wide = means.pivot_table(index=index, columns="test_party", values=["dice", "hd95", "n_cases"], sort=False)
    wide.columns = [f"{metric} on {party}'s test" if metric != "n_cases" else f"cases of {party}"
                    for metric, party in wide.columns]
    order = [c for m in ("dice", "hd95", "cases") for c in wide.columns if c.startswith(m)]
    table = wide.loc[:, order].reset_index()
    for column in (c for c in order if c.startswith("cases")):
        table[column] = table[column].astype("Int64")
    rank = {m: i for i, m in enumerate(results.models["model"])}
    table["_order"] = table["model"].map(rank)
    return table.sort_values(["_order", *index[1:]]).drop(columns="_order").reset_index(drop=True)


def _family(results: PairResults, party: str) -> list[str]:
    models = results.models
    return [m for m, p, known, kind in zip(models["model"], models["perspective"], models["known"], models["role"])
            if known and kind == "approach" and feasible_from(party, p)]


def _common_folds(results: PairResults, party: str, family: list[str]) -> list[int]:
    test = results.cases[(results.cases["test_party"] == party) & results.cases["model"].isin(family)]
    folds = [set(test.loc[test["model"] == m, "fold"]) for m in family if (test["model"] == m).any()]
    return sorted(set.intersection(*folds)) if folds else []


def _stats(results: PairResults) -> tuple[pd.DataFrame, dict[str, str]]:
    """The own-data Wilcoxon/Holm tables of both perspectives; notes per perspective."""
    tables, notes = [], {}
    for party in PARTIES:
        family = _family(results, party)
        if party not in family or len(family) < 2:
            notes[party] = NOT_AVAILABLE + f" (needs the own-data model {party} and another model feasible from it)"
            continue
        folds = _common_folds(results, party, family)
        cases = results.cases[(results.cases["test_party"] == party) & results.cases["fold"].isin(folds)]
        try:
            tables.append(perspective_tests(cases, party, feasible=family))
        except ValueError as err:
            notes[party] = f"not computed: {err}"
            continue
        dropped = sorted(set(results.cases.loc[results.cases["test_party"] == party, "fold"]) - set(folds))
        notes[party] = (f"family: {', '.join(m for m in family if m != party)} against {party}, on {party}'s test "
                        f"set, folds {folds}" + (f" (folds {dropped} left out: not every model has them)"
                                                 if dropped else ""))
    stats = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["perspective", "metric", "model", "n_pairs", "n_zero", "statistic", "p", "p_holm",
                 "median_difference", "n_dice_zero", "direction"])
    return stats, notes


def _selection_table(results: PairResults) -> pd.DataFrame:
    rows = []
    for row in results.selections.itertuples():
        rows.append({"stitch-ensemble": row.label, "fold": row.fold, "strategy": row.strategy, "k": row.k,
                     "relative position": row.relative_position,
                     "matches after the last skip": row.from_last_merge, "note": row.note})
    positions = results.positions
    if "selected" in positions.columns:  # the stage's own selection, when no selection.json exists
        chosen = positions[positions["selected"].astype(str).str.lower() == "true"]
        for row in chosen.itertuples():
            if not ((results.selections["slug"] == row.slug) & (results.selections["fold"] == row.fold)).any():
                rows.append({"stitch-ensemble": row.label, "fold": row.fold,
                             "strategy": "current_fold (positions.csv)", "k": row.k,
                             "relative position": getattr(row, "relative_position", None),
                             "matches after the last skip": getattr(row, "from_last_merge", None), "note": ""})
    return pd.DataFrame(rows)


def _ablation_table(results: PairResults) -> pd.DataFrame:
    """One row per ablated stitch-ensemble, fold and variant: the selected and the best position, the
    Dice on both test sets at each, the gap closed on c's test set and the stitches' distance from
    their least-squares optimum at each."""
    ablation = results.ablation
    if ablation.empty:
        return pd.DataFrame()
    rows = []
    for (c, method, fold, variant), table in ablation.groupby(["c", "method", "fold", "variant"], sort=False):
        at = {row.position: row for row in table.itertuples()}
        first = table.iloc[0]
        row = {"stitch-ensemble": model_label("stitch", f"via_{c}_{method}"), "fold": fold, "variant": variant,
               "init": first["init"], "steps": first["steps"], "selected k": first["selected_k"],
               "best k": first["best_k"]}
        for position in ("selected", "best"):
            chosen = at.get(position)
            row[f"Dice on a's test ({position})"] = chosen.dice_a if chosen else None
            row[f"Dice on b's test ({position})"] = chosen.dice_b if chosen else None
        for position in ("selected", "best"):
            chosen = at.get(position)
            row[f"gap closed ({position})"] = chosen.gap_closed if chosen else None
        for position in ("selected", "best"):
            chosen = at.get(position)
            row[f"distance from LS optimum ({position})"] = chosen.distance if chosen else None
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figures


def _figures(results: PairResults, stats_families: dict[str, list[str]], out: Path) -> list[tuple[str, Path]]:
    """Draw every figure the inputs allow; (caption, path) in report order."""
    made: list[tuple[str, Path]] = []
    unit, pair = results.hd95_unit, results.pair
    means = mean_table(results.cases)
    if not means.empty:
        made.append(("Bi-objective, averaged over folds",
                     figures.biobjective(means, out / "biobjective_mean.png", unit, f"{pair}: averaged over folds")))
        per_fold = mean_table(results.cases, by_fold=True)
        for fold, table in per_fold.groupby("fold"):
            made.append((f"Bi-objective, fold {fold}",
                         figures.biobjective(table, out / f"biobjective_fold{fold}.png", unit, f"{pair}: fold {fold}")))
    for party in PARTIES:
        family = stats_families.get(party, [])
        own = results.cases[(results.cases["test_party"] == party) & results.cases["model"].isin(family)]
        if not own.empty:
            order = [party] + [m for m in family if m != party]
            made.append((f"Own data of {party}: per-case Dice and HD95 on {party}'s test set",
                         figures.own_data(own, order, out / f"own_data_{party}.png", unit,
                                          f"{pair}: approaches feasible from {party}, on {party}'s test set")))
    if not results.positions.empty:
        for c, table in results.positions.groupby("c"):
            made.append((f"Position trend, stitches trained on {c}'s images",
                         figures.position_trend(table, results.no_stitch, out / f"positions_{c}.png", unit,
                                                f"{pair}: stitch-ensembles a←[{c}]→b on {c}'s validation cases")))
    curves = results.budgets[results.budgets["loss_per_epoch"].notna()] if not results.budgets.empty else None
    if curves is not None and not curves.empty:
        made.append(("Stitch training and probe loss per epoch",
                     figures.training_curves(curves, out / "stitch_training.png", f"{pair}: stitch training")))
    plottable = results.ablation.dropna(subset=["gap_closed", "distance"]) if not results.ablation.empty else None
    if plottable is not None and not plottable.empty:
        made.append(("Ablation: gap closed vs distance of the stitch from its least-squares optimum",
                     figures.ablation(plottable, out / "ablation.png",
                                      f"{pair}: gap closed on c's test set vs the stitches' distance from their "
                                      f"least-squares optimum")))
    if not results.rq1.empty:
        for (c, fold), table in results.rq1.groupby(["c", "fold"]):
            made.append((f"RQ1, stitches trained on {c}'s images, fold {fold}",
                         figures.rq1(table, out / f"rq1_{c}_fold{fold}.png", unit,
                                     f"{pair}: RQ1, a←[{c}]→b, fold {fold}, {c}'s validation cases")))
    return made


# ---------------------------------------------------------------- rendering


def _html_table(table: pd.DataFrame) -> str:
    if table is None or table.empty:
        return f'<p class="na">{NOT_AVAILABLE}</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for values in table.itertuples(index=False):
        cells = []
        for value in values:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td{" class=num" if numeric else ""}>{html.escape(_fmt(value))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _md_table(table: pd.DataFrame) -> str:
    if table is None or table.empty:
        return f"*{NOT_AVAILABLE}*\n"
    escape = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(c) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(escape(_fmt(v)) for v in values) + " |" for values in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _findings_table(findings: Sequence[Finding]) -> pd.DataFrame:
    return pd.DataFrame([{"#": f.number, "finding": f.claim, "verdict": str(f.verdict), "numbers": f.numbers}
                         for f in findings])


def _verdict_class(verdict: Verdict) -> str:
    return {Verdict.HELD: "held", Verdict.NOT_HELD: "not-held"}.get(verdict, "not-testable")


def _stats_view(stats: pd.DataFrame, party: str) -> pd.DataFrame:
    view = stats[stats["perspective"] == party]
    if view.empty:
        return view
    return view.loc[:, ["metric", "model", "n_pairs", "n_zero", "n_dice_zero", "statistic", "p", "p_holm",
                        "median_difference", "direction"]].rename(
        columns={"n_dice_zero": "cases with Dice 0", "median_difference": "median difference (model − own)"})


@dataclass
class _Section:
    title: str
    intro: str
    tables: list[tuple[str, pd.DataFrame]]
    figures: list[tuple[str, Path]]
    outro: str = ""
    """Plain text after the tables (escaped when rendered)."""


def _sections(results: PairResults, stats: pd.DataFrame, notes: dict[str, str], findings: list[Finding],
              made: list[tuple[str, Path]], params: Params | None) -> list[_Section]:
    unit = results.hd95_unit
    by_caption = lambda prefix: [(c, p) for c, p in made if c.startswith(prefix)]  # noqa: E731
    folds = sorted(results.cases["fold"].unique().tolist()) if not results.cases.empty else []
    stitch_note = ("DB = double-batched, DM = direct matching (stitch training methods). "
                   if any(results.models["approach"] == "stitch") else "")
    sections = [
        _Section("Findings of the paper", (
            "Each finding of the paper (DESIGN.md) judged on this run by an explicit rule "
            "(<code>stitch_ops/evaluation/findings.py</code>): D(m, t) is model m's mean Dice on party t's test set "
            f"over all folds; 'about as well' = within {NEAR}, 'notably' = by more than {NOTABLE} Dice. "
            "Small test sets and short schedules make many findings fragile; read the numbers."),
            [("", _findings_table(findings))], [], outro=ablation_statement(results.ablation)),
        _Section("Approaches and operating conditions", (
            f"Every evaluated model of this run, with the paper's shorthand. {stitch_note}"
            "Online: the parties must train together."), [("", _approach_table(results))], []),
        _Section("Training budgets", (
            "From each trained model's <code>budget.json</code>: optimizer steps per party, samples seen, wall "
            "time (measured on whatever machine ran the stage). Fine-tuning: the base learning rate it used and "
            "where it came from (<code>fixed</code>: <code>finetune.base_lr</code>; <code>sweep</code>: the Optuna "
            "sweep's best validation Dice; <code>rule</code>: the smallest power of ten whose validation Dice beat "
            "the starting model's; both selected on the fine-tuning party's validation cases). Stitch training: "
            "the relative improvement in the last epoch of the probe loss (the objective on fixed held-out "
            "batches, which the plateau criterion judges; dashed in the figure, beside the training loss) and whether it "
            "fell below the plateau tolerance."),
            [("", _budget_table(results))], by_caption("Stitch training")),
        _Section("Bi-objective results", (
            f"Mean Dice and HD95 [{unit}] on each party's test set (HD95: lower is better), averaged over "
            f"folds {folds}."), [("Averaged over folds", _biobjective_table(results, by_fold=False))]
            + ([("Per fold", _biobjective_table(results, by_fold=True))] if len(folds) > 1 else []),
            by_caption("Bi-objective")),
        _Section("Own-data comparison: Wilcoxon signed-rank + Holm", (
            "Per perspective p: every approach feasible from p against p's own-data model on p's own test set, "
            "two-sided Wilcoxon signed-rank tests paired by (test case, fold), Holm–Bonferroni over the family "
            f"of that perspective and metric; significance at p_holm &lt; {ALPHA}. Pairs with a zero difference "
            "are left out of the ranking (n_zero); all-zero differences give p = 1. Empty-mask cases keep their "
            "policy values (Dice 0, HD95 = image diagonal) and are counted (cases with Dice 0). Fewer than 6 "
            "non-zero pairs can never reach p &lt; 0.05."),
            [(f"Perspective {p}: {notes.get(p, NOT_AVAILABLE)}", _stats_view(stats, p)) for p in PARTIES],
            by_caption("Own data")),
        _Section("Stitch positions and selection strategies", (
            "Positions scored on the stitching party's validation cases only; the selected position of each "
            "selection strategy (1: current fold, 2: all folds, 3: rule of thumb). "
            + ("With one fold, strategy 2 equals strategy 1. " if len(folds) == 1 else "")
            + "Relative position = k / number of matches."),
            [("Selected positions", _selection_table(results))], by_caption("Position trend")),
        _Section("RQ1: number of stitches", (
            "Sampled networks with 0 to all stitches active (switches drawn uniformly without replacement), "
            "both stitch training methods, validation Dice/HD95 of the stitching party."),
            [], by_caption("RQ1")),
    ]
    if not by_caption("RQ1"):
        sections[-1].tables.append(("", pd.DataFrame()))
    if not by_caption("Position trend"):
        sections[-2].figures = []
    sections.append(_Section("Ablation: how the stitches are trained", (
        "Ours, not the paper's (<code>stitching.ablation</code>, stage <code>stitch_ablation</code>): the "
        "stitch-ensemble a←[c]→b as the pipeline trains it (<code>default</code>: "
        "<code>stitching.training</code>) against its stitches trained again on the same images from their "
        "least-squares fit on the same schedule (<code>least_squares</code>) and from the default initialisation "
        "for 2× / 4× the epochs (<code>schedule_x2</code>, <code>schedule_x4</code>). Each is scored at every "
        "position the pipeline scored on c's validation cases; <em>selected</em>: strategy 1's position, "
        "<em>best</em>: the best validation Dice. Gap closed = (Dice − Dice of a&amp;b) / (Dice of c's own model − "
        "Dice of a&amp;b) on c's test set (0: no better than the plain ensemble, 1: as good as the own model). "
        "Distance = ||M − M<sub>ls</sub>|| / ||M<sub>ls</sub>|| of the stitches' affine maps M = [W | b] at that "
        "position (the stitch into A and the one into B, averaged), M<sub>ls</sub> the least-squares fit on the "
        "batches the least_squares variant starts from."),
        [("", _ablation_table(results))], by_caption("Ablation"), outro=ablation_statement(results.ablation)))
    if results.problems:
        sections.append(_Section("Unreadable inputs", "Files that exist but could not be read:",
                                 [("", pd.DataFrame({"problem": results.problems}))], []))
    return sections


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _header(results: PairResults, params: Params | None) -> str:
    profile = f"profile <code>{html.escape(params.profile)}</code>, " if params is not None else ""
    return (f"<p>{profile}pair <code>{html.escape(results.pair)}</code>: {results.cases['model'].nunique()} "
            f"models, {len(results.cases)} per-case rows. HD95 in {html.escape(results.hd95_unit)}.</p>")


def render_html(results: PairResults, sections: list[_Section], findings: list[Finding],
                params: Params | None) -> str:
    """The self-contained HTML page (figures inlined, no script, no external resource)."""
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
             f"<meta name=viewport content='width=device-width, initial-scale=1'>"
             f"<title>stitch_ops report: {html.escape(results.pair)}</title><style>{CSS}</style></head><body>",
             f"<p><a href='index.html'>all pairs</a></p><h1>stitch_ops report: {html.escape(results.pair)}</h1>",
             _header(results, params)]
    verdicts = "".join(f"<li><span class='{_verdict_class(f.verdict)}'>{f.verdict}</span>: {f.number}. "
                       f"{html.escape(f.claim)}</li>" for f in findings)
    parts.append(f"<ul>{verdicts}</ul>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2><p>{section.intro}</p>")
        for caption, table in section.tables:
            if caption:
                parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(_html_table(table))
        if section.outro:
            parts.append(f"<p>{html.escape(section.outro)}</p>")
        for caption, path in section.figures:
            parts.append(f"<figure><img src='{_data_uri(path)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(results: PairResults, sections: list[_Section], findings: list[Finding],
                    figure_dir: str) -> str:
    """The Markdown version; figures linked relative to ``reports/``."""
    lines = [f"# stitch_ops report: {results.pair}", "",
             f"HD95 in {results.hd95_unit}.", ""]
    lines += [f"- **{f.verdict}**: {f.number}. {f.claim}" for f in findings] + [""]
    for section in sections:
        intro = section.intro
        for tag, text in (("<code>", "`"), ("</code>", "`"), ("<em>", "*"), ("</em>", "*"), ("<sub>", "_"),
                          ("</sub>", ""), ("&lt;", "<"), ("&amp;", "&")):
            intro = intro.replace(tag, text)
        lines += [f"## {section.title}", "", intro, ""]
        for caption, table in section.tables:
            if caption:
                lines += [f"### {caption}", ""]
            lines += [_md_table(table)]
        if section.outro:
            lines += [section.outro, ""]
        for caption, path in section.figures:
            lines += [f"![{caption}]({figure_dir}/{path.name})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- metrics and MLflow


def _slug_of(results: PairResults) -> dict[str, str]:
    return {m: f"{a}_{t}" for m, a, t in zip(results.models["model"], results.models["approach"],
                                              results.models["trained_on"])}


def _ablation_means(results: PairResults) -> dict[str, dict[str, float]]:
    """``{variant}/{position}`` -> the ablation's mean gap closed and distance over its rows (where defined)."""
    ablation = results.ablation.dropna(subset=["gap_closed", "distance"])
    if ablation.empty:
        return {}
    means = ablation.groupby(["variant", "position"], sort=False)[["gap_closed", "distance"]].mean()
    return {f"{variant}/{position}": {"gap_closed": round(float(row.gap_closed), 4),
                                      "distance": round(float(row.distance), 4)}
            for (variant, position), row in zip(means.index, means.itertuples())}


def headline(results: PairResults, stats: pd.DataFrame, findings: Sequence[Finding]) -> dict:
    """Numbers for ``dvc metrics show``: findings counts and verdicts, mean Dice/HD95 per
    model and test set, the number of significant own-data tests, the ablation's mean gap closed
    and distance per variant and position (where it ran)."""
    slug = _slug_of(results)
    means = mean_table(results.cases)
    models: dict[str, dict[str, float]] = {}
    for row in means.itertuples():
        entry = models.setdefault(slug.get(row.model, row.model), {})
        entry[f"test_{row.test_party}_dice"] = round(float(row.dice), 4)
        entry[f"test_{row.test_party}_hd95"] = round(float(row.hd95), 4)
    count = lambda v: sum(f.verdict == v for f in findings)  # noqa: E731
    return {
        "findings": {"held": count(Verdict.HELD), "not_held": count(Verdict.NOT_HELD),
                     "not_testable": count(Verdict.NOT_TESTABLE),
                     "verdicts": {str(f.number): str(f.verdict) for f in findings}},
        "wilcoxon": {"tests": int(len(stats)), "significant": int((stats["p_holm"] < ALPHA).sum())
                     if not stats.empty else 0},
        "models": models,
        "ablation": _ablation_means(results),
    }


def mlflow_metrics(results: PairResults, stats: pd.DataFrame, findings: Sequence[Finding]) -> dict[str, float]:
    """Flat MLflow metrics: ``wilcoxon/{p}/{approach}_{trained_on}/{metric}_{p,p_holm,median_difference}``,
    ``findings/{n}`` (1 held, 0 not held; not testable left out) and the mean Dice/HD95."""
    slug = _slug_of(results)
    metrics: dict[str, float] = {}
    for row in stats.itertuples():
        base = f"wilcoxon/{row.perspective}/{slug.get(row.model, row.model)}/{row.metric}"
        metrics[f"{base}_p"] = float(row.p)
        metrics[f"{base}_p_holm"] = float(row.p_holm)
        metrics[f"{base}_median_difference"] = float(row.median_difference)
        metrics[f"{base}_n_pairs"] = float(row.n_pairs)
    for finding in findings:
        if finding.verdict is not Verdict.NOT_TESTABLE:
            metrics[f"findings/{finding.number}"] = 1.0 if finding.verdict is Verdict.HELD else 0.0
    for key, values in _ablation_means(results).items():
        for name, value in values.items():
            metrics[f"ablation/{key}/{name}_mean"] = value
    for row in mean_table(results.cases).itertuples():
        metrics[f"test_{row.test_party}/{slug.get(row.model, row.model)}/dice_mean"] = float(row.dice)
        metrics[f"test_{row.test_party}/{slug.get(row.model, row.model)}/hd95_mean"] = float(row.hd95)
    return metrics


def _log_to_mlflow(pair: str, params: Params | None, metrics: dict[str, float], artifacts: list[Path],
                   root: Path) -> str:
    from stitch_ops import tracking

    tracking.configure(root)
    return tracking.log_run(experiment=tracking.experiment_name(pair), tags={"pair": pair, "kind": "report"},
                            params={"profile": params.profile if params else "unknown",
                                    "alpha": ALPHA, "near": NEAR, "notable": NOTABLE},
                            metrics=metrics, artifacts=artifacts, run_name=f"report:{pair}",
                            dvc_stage=dvc_stage("report", pair))


def run(pair: str, root: Path = Path("."), out: Path = REPORTS, params: Params | None = None,
        log_mlflow: bool = True) -> PairReport:
    """Write the report of ``pair`` (see the module docstring); returns what was written.

    Args:
        pair: the pair's name (``metrics/{pair}/`` under ``root``).
        root: the repository root holding ``metrics/``, ``data/`` and the MLflow store.
        out: the reports folder (relative paths are taken under ``root``).
        params: the loaded params (profile shown in the report), or ``None``.
        log_mlflow: log the report as one MLflow run (``False`` in tests of the rendering).
    """
    root = Path(root)
    out = out if out.is_absolute() else root / out
    results = load_pair(pair, root)
    stats, notes = _stats(results)
    families = {p: _family(results, p) for p in PARTIES}
    findings = judge(results, stats)
    with scratch_dir(out / f".{pair}") as staging:  # every file complete before any is swapped in
        (staging / pair / "tables").mkdir(parents=True)
        made = _figures(results, families, staging / pair / "figures")
        (staging / pair / "figures").mkdir(exist_ok=True)
        sections = _sections(results, stats, notes, findings, made, params)
        tables = {"findings": _findings_table(findings), "approaches": _approach_table(results),
                  "budgets": _budget_table(results), "biobjective": _biobjective_table(results, by_fold=False),
                  "biobjective_per_fold": _biobjective_table(results, by_fold=True), "wilcoxon_holm": stats,
                  "selected_positions": _selection_table(results), "ablation": _ablation_table(results)}
        for name, table in tables.items():
            write_table(staging / pair / "tables" / f"{name}.csv", table)
        write_text(staging / f"{pair}.html", render_html(results, sections, findings, params))
        write_text(staging / f"{pair}.md", render_markdown(results, sections, findings, f"{pair}/figures"))
        write_json(staging / "metrics.json", headline(results, stats, findings), ensure_ascii=False)
        (out / "metrics").mkdir(parents=True, exist_ok=True)
        (out / pair).mkdir(parents=True, exist_ok=True)
        # the report's own files and folders, one by one: anything else in ``out`` (or in
        # ``out/<pair>``) is not the report's and is kept
        for name in (f"{pair}/tables", f"{pair}/figures", f"{pair}.md", f"{pair}.html"):
            swap_in(staging / name, out / name)
        swap_in(staging / "metrics.json", out / "metrics" / f"{pair}.json")
    figure_paths = tuple(out / pair / "figures" / p.name for _, p in made)
    run_id = None
    if log_mlflow:
        run_id = _log_to_mlflow(pair, params, mlflow_metrics(results, stats, findings),
                                [out / f"{pair}.html", out / f"{pair}.md", out / pair / "figures",
                                 out / pair / "tables"], root)
    logger.info("%s: wrote %s (%d figures; findings %s)", pair, out / f"{pair}.html", len(made),
                ", ".join(f"{f.number} {f.verdict}" for f in findings))
    return PairReport(pair, out / f"{pair}.html", out / f"{pair}.md", out / "metrics" / f"{pair}.json",
                      figure_paths, tuple(findings), run_id)


def write_index(pairs: Sequence[str], out: Path = REPORTS) -> Path:
    """``index.html``: each pair's findings verdicts and headline counts, linking its report."""
    rows, verdicts = [], {}
    for pair in pairs:
        metrics_file = out / "metrics" / f"{pair}.json"
        if not metrics_file.is_file():
            rows.append(f"<tr><td>{html.escape(pair)}</td><td colspan=4 class=na>{NOT_AVAILABLE}</td></tr>")
            continue
        data = read_json(metrics_file, hint=f"rerun `dvc repro report@{pair}`")
        found = data.get("findings", {})
        verdicts[pair] = found.get("verdicts", {})
        wilcoxon = data.get("wilcoxon", {})
        rows.append(f"<tr><td><a href='{html.escape(pair)}.html'>{html.escape(pair)}</a></td>"
                    f"<td class=num>{found.get('held', 0)}</td><td class=num>{found.get('not_held', 0)}</td>"
                    f"<td class=num>{found.get('not_testable', 0)}</td>"
                    f"<td class=num>{wilcoxon.get('significant', 0)} of {wilcoxon.get('tests', 0)}</td></tr>")
    from stitch_ops.evaluation.findings import CLAIMS

    head = "".join(f"<th>{html.escape(p)}</th>" for p in verdicts)
    finding_rows = []
    for number, claim in CLAIMS.items():
        cells = []
        for pair in verdicts:
            verdict = verdicts[pair].get(str(number), "")
            css = {"held": "held", "not held": "not-held"}.get(verdict, "not-testable")
            cells.append(f"<td class='{css}'>{html.escape(verdict or NOT_AVAILABLE)}</td>")
        finding_rows.append(f"<tr><td>{number}. {html.escape(claim)}</td>{''.join(cells)}</tr>")
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>stitch_ops reports</title>"
            f"<style>{CSS}</style></head><body><h1>stitch_ops reports</h1>"
            "<table><thead><tr><th>pair</th><th>findings held</th><th>not held</th><th>not testable here</th>"
            f"<th>significant own-data tests</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<h2>The paper's findings, per pair</h2>"
            f"<table><thead><tr><th>finding</th>{head}</tr></thead><tbody>{''.join(finding_rows)}</tbody></table>"
            "</body></html>")
    write_text(out / "index.html", page)
    logger.info("wrote %s (%d pairs)", out / "index.html", len(pairs))
    return out / "index.html"


# ---------------------------------------------------------------- command line


def _report(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.outputs import check_out_folder

    check_out_folder(args.out)
    pairs = list(args.pair) if args.pair else list(params.pairs)
    unknown = [p for p in pairs if p not in params.pairs]
    if unknown:
        raise UnknownNameError(f"unknown pair(s) {unknown}; params.yaml has pairs {list(params.pairs)}")
    if not args.index:
        for pair in pairs:
            if not any(PairPaths(pair).metrics_root.glob("*/*/fold_*/cases.csv")):
                message = f"pair {pair!r} has no results yet (no cases.csv under metrics/{pair}/); run `make run` first"
                if args.pair:  # asked for by name: nothing to report is an error
                    raise InputFileError(message)
                logger.warning("%s: skipped", message)
                continue
            run(pair, Path("."), args.out, params, log_mlflow=args.mlflow)
    if args.index or not args.pair:
        write_index(list(params.pairs), args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common_options()])
    parser.add_argument("--pair", action="append", help="pair to report (repeatable; default: every pair "
                                                        "of params.yaml, then the index)")
    parser.add_argument("--index", action="store_true", help="write only reports/index.html")
    parser.add_argument("--out", type=Path, default=REPORTS, help="reports folder (default: %(default)s)")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    parser.set_defaults(command="report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"report": _report})


if __name__ == "__main__":
    sys.exit(stage_main(main))
