"""Choosing the stitch position k from validation results (never from the test set).

DESIGN.md, "Selecting k": a position's rank is the mean of its Dice rank (higher is
better) and its HD95 rank (lower is better); the position with the lowest mean rank wins.

- ``current_fold`` (strategy 1): ranks within the fold being evaluated;
- ``all_folds`` (strategy 2): ranks averaged over every fold's validation results, so all
  folds use one position (positions are comparable across folds because the folds of a
  party share plans, hence architecture and matches).

Ties go to the higher Dice, then the lower k, so the choice is deterministic.
"""

from __future__ import annotations

from enum import StrEnum

import pandas as pd


class SelectionStrategy(StrEnum):
    CURRENT_FOLD = "current_fold"
    ALL_FOLDS = "all_folds"


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
