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


# ---- strategies 1-3 on a hand-made set of tables whose answers are worked out below ----
#
# X (pair p, 10 matches) fold 0: mean ranks k0=3, k5=1, k9=2  -> scaled 1, 0, .5   (strategy 1: k=5)
# X fold 1:                      mean ranks k0=3, k5=2, k9=1  -> scaled 1, .5, 0
#   over both folds: k5 and k9 tie at 1.5, k9 has the higher mean Dice (.85 vs .75)  (strategy 2: k=9)
# Y (pair q, 20 matches) fold 0: mean ranks k0=3, k10=2, k18=1 -> scaled 1, .5, 0
# Z (pair q, 20 matches) fold 0: the same as Y
# pooled scaled rank at r=0: (1+1+1+1)/4 = 1; r=.5: (0+.5+.5+.5)/4 = .375; r=.9: (.5+0+0+0)/4 = .125
#   -> rule of thumb r=.9: X uses k=9, Y and Z k=18                                (strategy 3)
def strategy_tables() -> pd.DataFrame:
    rows = [("p", "x", 0, 0, 10, 0.5, 9.0), ("p", "x", 0, 5, 10, 0.9, 2.0), ("p", "x", 0, 9, 10, 0.8, 4.0),
            ("p", "x", 1, 0, 10, 0.5, 9.0), ("p", "x", 1, 5, 10, 0.6, 8.0), ("p", "x", 1, 9, 10, 0.9, 1.0)]
    for slug in ("y", "z"):
        rows += [("q", slug, 0, 0, 20, 0.5, 9.0), ("q", slug, 0, 10, 20, 0.8, 4.0), ("q", slug, 0, 18, 20, 0.9, 2.0)]
    table = pd.DataFrame(rows, columns=["pair", "slug", "fold", "k", "matches", "dice", "hd95"])
    table["relative_position"] = table["k"] / table["matches"]
    return table


def test_the_three_strategies_give_the_worked_out_positions():
    from stitch_ops.evaluation.selection import select_strategies

    x = select_strategies(strategy_tables(), ("p", "x"), fold=0)
    assert x["current_fold"] == {"k": 5, "relative_position": 0.5}
    assert x["all_folds"]["k"] == 9 and x["all_folds"]["folds"] == [0, 1]
    assert x["all_folds"]["equals_current_fold"] is False and "note" not in x["all_folds"]
    assert x["rule_of_thumb"]["k"] == 9 and x["rule_of_thumb"]["pooled_position"] == pytest.approx(0.9)
    assert x["rule_of_thumb"]["coordinate"] == "relative_position"
    assert x["rule_of_thumb"]["pooled_tables"] == 4
    assert select_strategies(strategy_tables(), ("p", "x"), fold=1)["current_fold"]["k"] == 9


def test_all_folds_with_one_fold_is_current_fold_and_says_so():
    from stitch_ops.evaluation.selection import select_strategies

    y = select_strategies(strategy_tables(), ("q", "y"), fold=0)
    assert y["all_folds"]["k"] == y["current_fold"]["k"] == 18
    assert y["all_folds"]["equals_current_fold"] is True
    assert "strategy 1" in y["all_folds"]["note"]
    assert y["rule_of_thumb"]["k"] == 18 and y["rule_of_thumb"]["relative_position"] == pytest.approx(0.9)


def test_rule_of_thumb_scores_every_candidate_and_picks_the_nearest_scored_position():
    from stitch_ops.evaluation.selection import nearest_position, rule_of_thumb

    r, pooled = rule_of_thumb(strategy_tables(), ["pair", "slug", "fold"])
    assert r == pytest.approx(0.9)
    assert list(pooled["mean_scaled_rank"]) == pytest.approx([0.125, 0.375, 1.0])
    odd = pd.DataFrame({"k": [0, 3, 6], "relative_position": [0.0, 3 / 7, 6 / 7]})
    assert nearest_position(odd, 0.9) == 6
    assert nearest_position(odd, 0.5) == 3
    assert nearest_position(pd.DataFrame({"k": [2, 4], "relative_position": [0.2, 0.4]}), 0.3) == 2  # tie: lower k
    with pytest.raises(ValueError, match="missing"):
        rule_of_thumb(strategy_tables().drop(columns="relative_position"), ["pair", "slug", "fold"])
    with pytest.raises(ValueError, match="rule_of_thumb pools"):
        select_position(strategy_tables(), "rule_of_thumb")


def test_structural_rule_of_thumb_finds_the_same_layer_in_networks_of_different_depth():
    """X has 10 matches and its last skip concatenation at k=6, Y 20 and k=17: both are best two
    matches after it (k=8, k=19). As shares of the matches these are 0.8 and 0.95: no one share
    hits both; measured from the last merge, one value does."""
    from stitch_ops.evaluation.selection import STRUCTURAL, select_strategies

    def network(pair, slug, matches, landmark, best, scored):
        return [(pair, slug, 0, k, matches, landmark, 0.9 if k == best else 0.5 + 0.01 * k,
                 2.0 if k == best else 9.0 - 0.1 * k) for k in scored]

    rows = network("p", "x", 10, 6, 8, (0, 3, 6, 7, 8, 9)) + network("q", "y", 20, 17, 19, (0, 8, 16, 17, 18, 19))
    table = pd.DataFrame(rows, columns=["pair", "slug", "fold", "k", "matches", "landmark", "dice", "hd95"])
    table["relative_position"] = table["k"] / table["matches"]
    table[STRUCTURAL] = table["k"] - table["landmark"]
    structural = [select_strategies(table, network, 0, coordinate=STRUCTURAL)["rule_of_thumb"]
                  for network in (("p", "x"), ("q", "y"))]
    assert [choice["k"] for choice in structural] == [8, 19]
    assert all(choice["pooled_position"] == 2 and choice["from_last_merge"] == 2 for choice in structural)
    relative = [select_strategies(table, network, 0)["rule_of_thumb"]["k"] for network in (("p", "x"), ("q", "y"))]
    assert relative != [8, 19]


def test_the_rule_of_thumb_comes_from_a_pipelines_selection_or_the_packaged_file(tmp_path):
    import json

    from stitch_ops.evaluation.selection import STRUCTURAL, read_rule_of_thumb, select_strategies

    table = strategy_tables().assign(**{STRUCTURAL: lambda t: t["k"] - t["matches"] + 1})
    selection = select_strategies(table, ("p", "x"), 0, coordinate=STRUCTURAL)
    (tmp_path / "selection.json").write_text(json.dumps(selection))
    rule = read_rule_of_thumb(tmp_path / "selection.json")
    assert rule.from_last_merge == selection["rule_of_thumb"]["pooled_position"]
    assert str(tmp_path) in rule.source and "4 scored networks" in rule.source
    assert rule.position(num_matches=63, last_merge=55) == 55 + rule.from_last_merge
    assert rule.position(num_matches=10, last_merge=20) == 9 and rule.position(10, -20) == 0  # clipped
    packaged = read_rule_of_thumb()
    assert isinstance(packaged.from_last_merge, int) and packaged.source
    (tmp_path / "old.json").write_text(json.dumps(select_strategies(table, ("p", "x"), 0)))
    with pytest.raises(ValueError, match="no rule of thumb measured from the last skip"):
        read_rule_of_thumb(tmp_path / "old.json")
