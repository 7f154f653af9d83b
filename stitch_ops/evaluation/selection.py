"""Choosing the stitch position k from validation results (never from the test set).

DESIGN.md, "Selecting k": a position's rank is the mean of its Dice rank (higher is
better) and its HD95 rank (lower is better); the position with the lowest mean rank wins.

- ``current_fold`` (strategy 1): ranks within the fold being evaluated;
- ``all_folds`` (strategy 2): ranks averaged over every fold's validation results, so all
  folds use one position (positions are comparable across folds because the folds of a
  party share plans, hence architecture and matches). With one fold it *is* strategy 1;
  :func:`select_strategies` says so in its result rather than hiding it.
- ``rule_of_thumb`` (strategy 3): one *relative* position r = k / number of matches for every
  network, the one with the best mean rank pooled over every scored table (pairs, stitching
  parties, training methods, parent variants, folds). Tables differ in their number of
  matches and scored positions, so each table's mean ranks are first scaled to [0, 1]
  (0 = best position of that table, 1 = worst); a candidate r scores, in each table, the
  scaled rank of the scored position nearest to r; the candidates are every scored relative
  position; the lowest mean over tables wins (ties: the lower r). Each network then uses its
  scored position nearest to r.

Ties go to the higher Dice, then the lower k, so the choice is deterministic. Selection only
ever sees validation means (the ``positions`` tables): no function here reads a test case.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd


class SelectionStrategy(StrEnum):
    CURRENT_FOLD = "current_fold"
    ALL_FOLDS = "all_folds"
    RULE_OF_THUMB = "rule_of_thumb"


def rank_positions(positions: pd.DataFrame) -> pd.DataFrame:
    """Add ``dice_rank``, ``hd95_rank`` and ``mean_rank`` to a table with columns ``k, dice, hd95``
    (one row per position; ties share the average rank)."""
    missing = {"k", "dice", "hd95"} - set(positions.columns)
    if missing:
        raise ValueError(f"a positions table needs columns k, dice, hd95; missing {sorted(missing)}")
    ranked = positions.copy()
    ranked["dice_rank"] = ranked["dice"].rank(ascending=False, method="average")
    ranked["hd95_rank"] = ranked["hd95"].rank(ascending=True, method="average")
    ranked["mean_rank"] = (ranked["dice_rank"] + ranked["hd95_rank"]) / 2
    return ranked


def _best(ranked: pd.DataFrame) -> int:
    order = ranked.sort_values(["mean_rank", "dice", "k"], ascending=[True, False, True])
    return int(order.iloc[0]["k"])


def select_position(positions: pd.DataFrame, strategy: SelectionStrategy | str = SelectionStrategy.CURRENT_FOLD,
                    fold: int | None = None) -> int:
    """The selected k.

    Args:
        positions: rows ``fold, k, dice, hd95`` of validation means (``fold`` may be absent
            for ``current_fold`` when the table holds one fold).
        strategy: see the module docstring.
        fold: the fold being evaluated (``current_fold`` with a multi-fold table).
    """
    strategy = SelectionStrategy(strategy)
    if strategy is SelectionStrategy.RULE_OF_THUMB:
        raise ValueError("rule_of_thumb pools over many networks: use rule_of_thumb() and nearest_position()")
    if positions.empty:
        raise ValueError("no positions to select from")
    if strategy is SelectionStrategy.CURRENT_FOLD:
        if "fold" in positions.columns and positions["fold"].nunique() > 1:
            if fold is None:
                raise ValueError("current_fold selection over several folds needs the fold")
            positions = positions[positions["fold"] == fold]
        return _best(rank_positions(positions))
    per_fold = [rank_positions(group) for _, group in positions.groupby("fold")]
    merged = pd.concat(per_fold).groupby("k", as_index=False)[["mean_rank", "dice"]].mean()
    return _best(merged)


def _scaled_ranks(table: pd.DataFrame) -> pd.DataFrame:
    """One table's positions with ``scaled_rank`` in [0, 1]: 0 for its best mean rank, 1 for its worst."""
    ranked = rank_positions(table)
    spread = ranked["mean_rank"].max() - ranked["mean_rank"].min()
    ranked["scaled_rank"] = (ranked["mean_rank"] - ranked["mean_rank"].min()) / spread if spread > 0 else 0.0
    return ranked


def nearest_position(table: pd.DataFrame, relative_position: float) -> int:
    """The scored k of ``table`` (columns ``k, relative_position``) nearest to ``relative_position``
    (ties: the lower k)."""
    distance = (table["relative_position"] - relative_position).abs().round(12)
    order = table.assign(distance=distance).sort_values(["distance", "k"])
    return int(order.iloc[0]["k"])


def rule_of_thumb(positions: pd.DataFrame, by: list[str]) -> tuple[float, pd.DataFrame]:
    """Strategy 3: the relative position with the best mean scaled rank pooled over all tables.

    Args:
        positions: validation means, columns ``k, relative_position, dice, hd95`` and the
            columns ``by`` that identify one table (one network at one fold), e.g.
            ``["pair", "slug", "fold"]``.
        by: the identifying columns.

    Returns:
        ``(r, candidates)``: the chosen relative position and the table of candidates with
        their pooled score (``relative_position, mean_scaled_rank, tables``), best first.
    """
    missing = {"k", "relative_position", "dice", "hd95", *by} - set(positions.columns)
    if missing:
        raise ValueError(f"rule_of_thumb needs columns k, relative_position, dice, hd95 and {by}; "
                         f"missing {sorted(missing)}")
    if positions.empty:
        raise ValueError("no positions to select from")
    tables = [_scaled_ranks(group) for _, group in positions.groupby(by, sort=True)]
    candidates = sorted({round(float(r), 12) for r in positions["relative_position"]})
    scores = []
    for r in candidates:
        per_table = [float(t.loc[t["k"] == nearest_position(t, r), "scaled_rank"].iloc[0]) for t in tables]
        scores.append({"relative_position": r, "mean_scaled_rank": float(np.mean(per_table)),
                       "tables": len(tables)})
    pooled = pd.DataFrame(scores).sort_values(["mean_scaled_rank", "relative_position"], ignore_index=True)
    return float(pooled.iloc[0]["relative_position"]), pooled


def select_strategies(positions: pd.DataFrame, network: Hashable, fold: int,
                      by: tuple[str, str] = ("pair", "slug")) -> dict[str, Any]:
    """Strategies 1, 2 and 3 for one network (``by`` values ``network``) at ``fold``.

    ``positions`` holds every scored table (columns ``k, relative_position, dice, hd95, fold``
    and ``by``); strategy 3 pools over all of them, strategy 2 over this network's folds,
    strategy 1 uses this fold only. Returns the ``selection.json`` record: per strategy
    ``k`` and ``relative_position``, plus what each pooled over.
    """
    columns = list(by)
    key = network if isinstance(network, tuple) else (network,)
    mine = positions[(positions[columns] == pd.Series(dict(zip(columns, key)))).all(axis=1)]
    current = mine[mine["fold"] == fold]
    if current.empty:
        raise ValueError(f"no positions of {dict(zip(columns, key))} at fold {fold}")

    def entry(k: int, **extra: Any) -> dict[str, Any]:
        relative = float(current.loc[current["k"] == k, "relative_position"].iloc[0])
        return {"k": int(k), "relative_position": relative, **extra}

    folds = sorted(int(f) for f in mine["fold"].unique())
    k1 = select_position(current, SelectionStrategy.CURRENT_FOLD)
    k2 = select_position(mine, SelectionStrategy.ALL_FOLDS)
    r, pooled = rule_of_thumb(positions, [*columns, "fold"])
    k3 = nearest_position(current, r)
    all_folds = entry(k2, folds=folds, equals_current_fold=len(folds) == 1)
    if len(folds) == 1:
        all_folds["note"] = "one fold scored: strategy 2 (all folds) is strategy 1 (current fold)"
    return {
        SelectionStrategy.CURRENT_FOLD.value: entry(k1),
        SelectionStrategy.ALL_FOLDS.value: all_folds,
        SelectionStrategy.RULE_OF_THUMB.value: entry(k3, pooled_relative_position=r,
                                                     pooled_tables=int(pooled.iloc[0]["tables"])),
    }
