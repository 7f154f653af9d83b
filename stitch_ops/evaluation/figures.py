"""The report's figures (matplotlib, Agg backend, PNG).

- :func:`biobjective`: performance on a's test set against performance on b's, one point
  per model (Dice, higher is better; HD95, lower is better), per fold or fold-averaged;
- :func:`position_trend`: validation Dice/HD95 of the stitch-ensemble at each scored
  position against its relative position (k / number of matches), the no-stitch
  reference (both parents on c's preprocessing, no stitch) dashed;
- :func:`rq1`: validation Dice/HD95 against the number of active stitches, one line per
  stitch training method (mean of the sampled networks, samples as dots);
- :func:`training_curves`: the stitch training and probe losses per epoch (how far they got to a plateau);
- :func:`own_data`: violin + box plots of the per-case Dice/HD95 on one party's test set,
  one per approach feasible from that party;
- :func:`ablation`: the gap a stitch-ensemble closes on c's test set against its stitches' distance
  from their least-squares optimum, one point per variant of the stitch training and position choice.

Each function takes tidy tables, writes one PNG and returns its path; models are labelled
with the paper's shorthands, HD95 axes carry the pair's unit (mm or px).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stitch_ops.approaches import StitchMethod

logger = logging.getLogger(__name__)

__all__ = ["ablation", "biobjective", "hd95_unit", "own_data", "position_trend", "rq1", "training_curves"]

DPI = 110
METHOD_NAMES = {m.value: m.label for m in StitchMethod}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str) -> Path:
    """Title the figure, fit its layout and write it as a PNG at ``path``."""
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    logger.debug("wrote %s", path)
    return path


def _colours(names: Sequence[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def hd95_unit(file_ending: str) -> str:
    """HD95's unit for a dataset's ``file_ending``: pixels for 2-D frames (PNG carries no
    spacing), millimetres for volumes (nnU-Net reads their spacing)."""
    return "px" if file_ending.lower() == ".png" else "mm"


def _hd95_label(unit: str, where: str = "") -> str:
    return f"HD95{where} [{unit}] (lower is better)"


def biobjective(means: pd.DataFrame, path: Path, unit: str, title: str) -> Path:
    """Dice on a's test set vs on b's, and HD95 likewise, one point per model.

    Args:
        means: columns ``model, test_party, dice, hd95`` (one fold, or averaged over folds).
        path: the PNG to write.
        unit: HD95's unit.
        title: the figure's title (pair, fold).
    """
    plt = _pyplot()
    wide = means.pivot_table(index="model", columns="test_party", values=["dice", "hd95"], sort=False)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    colours = _colours(list(wide.index))
    for ax, metric in zip(axes, ("dice", "hd95")):
        if ("a" not in wide[metric].columns) or ("b" not in wide[metric].columns):
            ax.text(0.5, 0.5, "needs results on both test sets", ha="center", va="center", transform=ax.transAxes)
            continue
        for model, row in wide[metric].iterrows():
            if pd.isna(row["a"]) or pd.isna(row["b"]):
                continue
            ax.scatter(row["a"], row["b"], s=60, color=colours[model], edgecolor="black", linewidth=0.5,
                       label=model, zorder=3)
            ax.annotate(model, (row["a"], row["b"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if metric == "dice":
            ax.set_xlabel("Dice on a's test set (higher is better)")
            ax.set_ylabel("Dice on b's test set (higher is better)")
        else:
            ax.set_xlabel(_hd95_label(unit, " on a's test set"))
            ax.set_ylabel(_hd95_label(unit, " on b's test set"))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return _save(fig, path, title)


def position_trend(positions: pd.DataFrame, no_stitch: pd.DataFrame, path: Path, unit: str, title: str) -> Path:
    """Validation Dice and HD95 against the relative position of the stitch.

    Args:
        positions: rows ``slug, label, fold, k, dice, hd95`` (``relative_position``
            when written; otherwise ``k / (max k + 1)``), optionally ``selected``.
        no_stitch: rows ``slug, fold, dice, hd95``: the dashed reference lines.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = list(positions.groupby(["slug", "fold"], sort=True))
    colours = _colours([f"{slug} fold {fold}" for (slug, fold), _ in groups])
    for (slug, fold), table in groups:
        table = table.sort_values("k")
        if "relative_position" in table.columns and table["relative_position"].notna().all():
            x = table["relative_position"].astype(float)
        else:
            x = table["k"].astype(float) / (table["k"].max() + 1)
        name = f"{slug} fold {fold}"
        first = table.iloc[0]
        label = f"{first['label']}, fold {fold}" if "label" in table.columns else f"{slug}, fold {fold}"
        reference = no_stitch[(no_stitch["slug"] == slug) & (no_stitch["fold"] == fold)]
        for ax, metric in zip(axes, ("dice", "hd95")):
            ax.plot(x, table[metric], marker="o", markersize=3, color=colours[name], label=label)
            if "selected" in table.columns:
                chosen = table["selected"].astype(str).str.lower() == "true"
                ax.scatter(x[chosen.to_numpy()], table.loc[chosen, metric], s=90, facecolors="none",
                           edgecolors=colours[name], linewidths=1.5, zorder=4)
            if not reference.empty and pd.notna(reference[metric].iloc[0]):
                ax.axhline(float(reference[metric].iloc[0]), color=colours[name], linestyle="--", linewidth=1)
    axes[0].set_ylabel("validation Dice (higher is better)")
    axes[1].set_ylabel(_hd95_label(unit, " on validation"))
    for ax in axes:
        ax.set_xlabel("relative position of the stitch (k / number of matches)")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8,
                   frameon=False)
    return _save(fig, path, f"{title}\n(dashed: no-stitch reference; circled: selected position)")


def rq1(table: pd.DataFrame, path: Path, unit: str, title: str) -> Path:
    """Validation Dice and HD95 against the number of active stitches, a line per method.

    Args:
        table: rows ``method, n_stitches, dice, hd95`` (one stitching party and fold).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = sorted(table["method"].unique())
    colours = _colours(methods)
    for method in methods:
        rows = table[table["method"] == method]
        mean = rows.groupby("n_stitches")[["dice", "hd95"]].mean().sort_index()
        for ax, metric in zip(axes, ("dice", "hd95")):
            ax.scatter(rows["n_stitches"], rows[metric], s=10, alpha=0.4, color=colours[method])
            ax.plot(mean.index, mean[metric], marker="o", color=colours[method],
                    label=f"{METHOD_NAMES.get(method, method)} (mean of samples)")
    axes[0].set_ylabel("validation Dice (higher is better)")
    axes[1].set_ylabel(_hd95_label(unit, " on validation"))
    for ax in axes:
        ax.set_xlabel("number of active stitches")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def own_data(cases: pd.DataFrame, models: Sequence[str], path: Path, unit: str, title: str) -> Path:
    """Violin + box plots of the per-case Dice and HD95 of ``models`` on one test set.

    Args:
        cases: rows ``model, dice, hd95`` of one party's test set (all folds).
        models: the models to show, in order (the own-data model first).
    """
    plt = _pyplot()
    models = [m for m in models if (cases["model"] == m).any()]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(models) * 2), 4.6))
    for ax, metric in zip(axes, ("dice", "hd95")):
        data = [cases.loc[cases["model"] == m, metric].to_numpy(dtype=float) for m in models]
        positions = np.arange(1, len(models) + 1)
        if data:
            spread = [d for d in data if len(d) > 1 and np.ptp(d) > 0]
            if spread:  # a violin needs some spread; a constant column is shown by its box alone
                where = [p for p, d in zip(positions, data) if len(d) > 1 and np.ptp(d) > 0]
                parts = ax.violinplot(spread, positions=where, showextrema=False, widths=0.8)
                for body in parts["bodies"]:
                    body.set_alpha(0.35)
            ax.boxplot(data, positions=positions, widths=0.25, showfliers=True, flierprops={"markersize": 3})
        ax.set_xticks(positions, models, rotation=30, ha="right")
        ax.set_ylabel("Dice (higher is better)" if metric == "dice" else _hd95_label(unit))
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path, title)


def training_curves(budgets: pd.DataFrame, path: Path, title: str) -> Path:
    """Per stitch training, the mean training loss per epoch (solid) and, dashed, the loss on
    the fixed probe batch that the plateau criterion judges (log scale; budgets without a
    probe curve show the training loss only).

    Args:
        budgets: rows ``model, fold, loss_per_epoch, plateau_losses`` (lists of floats).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [f"{m}, fold {f}" for m, f in zip(budgets["model"], budgets["fold"])]
    colours = _colours(names)
    for name, losses, plateau in zip(names, budgets["loss_per_epoch"], budgets["plateau_losses"]):
        epochs = range(1, len(losses) + 1)
        ax.plot(epochs, losses, marker="o", markersize=3, color=colours[name], label=name)
        if list(plateau) != list(losses):
            ax.plot(range(1, len(plateau) + 1), plateau, linestyle="--", color=colours[name])
    ax.set_xlabel("epoch")
    ax.set_ylabel("stitch loss (MSE, log scale)\nsolid: training, dashed: probe")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def ablation(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Gap closed on c's test set against the distance of the stitches from their least-squares
    optimum, one point per (stitch-ensemble, fold, variant, position choice): filled at the selected
    position, open at the best one; a line joins each variant's two points.

    Args:
        table: rows ``c, fold, variant, position, distance, gap_closed`` (an ablation table; rows
            without a gap closed are left out).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    table = table.dropna(subset=["distance", "gap_closed"])
    variants = list(dict.fromkeys(table["variant"]))
    colours = _colours(variants)
    for (c, fold, variant), rows in table.groupby(["c", "fold", "variant"], sort=False):
        rows = rows.set_index("position")
        ax.plot(rows["distance"], rows["gap_closed"], color=colours[variant], linewidth=0.8, alpha=0.6)
        for position, filled in (("selected", True), ("best", False)):
            if position in rows.index:
                point = rows.loc[position]
                ax.scatter(point["distance"], point["gap_closed"], s=60, zorder=3, edgecolors=[colours[variant]],
                           facecolors=[colours[variant]] if filled else "none", linewidths=1.5)
        ax.annotate(f"{variant} (c = {c}, fold {fold})", (rows["distance"].iloc[0], rows["gap_closed"].iloc[0]),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("relative distance of the stitches from their least-squares optimum ||M - M_ls|| / ||M_ls||")
    ax.set_ylabel("gap closed on c's test set\n(0: a&b, 1: c's own model)")
    ax.grid(alpha=0.3)
    return _save(fig, path, f"{title}\n(filled: selected position; open: best validation position)")
