"""Selecting k by mean rank of Dice and HD95 on validation data, hand-checkable."""

import pandas as pd
import pytest

from stitch_ops.evaluation.selection import rank_positions, select_position


def table(rows):
    return pd.DataFrame(rows, columns=["fold", "k", "dice", "hd95"])


def test_ranks_are_dice_descending_and_hd95_ascending():
    ranked = rank_positions(table([(0, 0, 0.8, 5.0), (0, 1, 0.9, 7.0), (0, 2, 0.7, 3.0)]))
    assert list(ranked["dice_rank"]) == [2, 1, 3]
    assert list(ranked["hd95_rank"]) == [2, 3, 1]
    assert list(ranked["mean_rank"]) == [2, 2, 2]


def test_lowest_mean_rank_wins_and_ties_go_to_higher_dice():
    # all three tie on mean rank 2 -> the best Dice (k=1)
    assert select_position(table([(0, 0, 0.8, 5.0), (0, 1, 0.9, 7.0), (0, 2, 0.7, 3.0)])) == 1
    # k=2 is best on both metrics
    assert select_position(table([(0, 0, 0.8, 5.0), (0, 1, 0.7, 7.0), (0, 2, 0.9, 3.0)])) == 2


def test_current_fold_uses_only_that_fold_and_all_folds_averages():
    rows = table([(0, 0, 0.9, 1.0), (0, 1, 0.5, 9.0),    # fold 0 prefers k=0
                  (1, 0, 0.6, 8.0), (1, 1, 0.7, 2.0),    # fold 1 prefers k=1
                  (2, 0, 0.55, 8.5), (2, 1, 0.75, 1.5)])  # fold 2 prefers k=1
    assert select_position(rows, "current_fold", fold=0) == 0
    assert select_position(rows, "current_fold", fold=1) == 1
    assert select_position(rows, "all_folds") == 1
    with pytest.raises(ValueError, match="needs the fold"):
        select_position(rows, "current_fold")


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="missing"):
        rank_positions(pd.DataFrame({"k": [0], "dice": [1.0]}))
    with pytest.raises(ValueError, match="no positions"):
        select_position(table([]))
    with pytest.raises(ValueError, match="'best_guess' is not a valid SelectionStrategy"):
        select_position(table([(0, 0, 1.0, 0.0)]), "best_guess")
