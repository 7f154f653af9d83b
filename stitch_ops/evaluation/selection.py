"""Choosing the stitch position k from validation results (never from the test set).

DESIGN.md, "Selecting k": a position's rank is the mean of its Dice rank (higher is
better) and its HD95 rank (lower is better); the position with the lowest mean rank wins.

- ``current_fold`` (strategy 1): ranks within the fold being evaluated;
- ``all_folds`` (strategy 2): ranks averaged over every fold's validation results, so all
  folds use one position (positions are comparable across folds because the folds of a
  party share plans, hence architecture and matches). With one fold it *is* strategy 1;
  :func:`select_strategies` says so in its result rather than hiding it.
- ``rule_of_thumb`` (strategy 3): one position r for every network, given in a coordinate
  that means the same place in every network, the one with the best mean rank pooled over
  every scored table (pairs, stitching parties, training methods, parent variants, folds).
  The pipeline measures it on the networks' structure: ``from_last_merge`` = k minus the k of
  the first match after the last skip concatenation
  (:func:`~stitch_ops.graph.matching.last_merge_match`), so "4 matches after the last skip"
  is the same layer of a deeper or shallower nnU-Net; the paper's ``relative_position`` = k /
  number of matches is the other coordinate (a fixed share such as 0.8 falls before the last
  skip concatenation on our networks, where the other network's encoder features bypass the
  stitch). Tables differ in their number of matches and scored positions, so each table's
  mean ranks are first scaled to [0, 1] (0 = best position of that table, 1 = worst); a
  candidate r scores, in each table, the scaled rank of the scored position nearest to r; the
  candidates are every scored value of the coordinate; the lowest mean over tables wins
  (ties: the lower r). Each network then uses its scored position nearest to r.

Ties go to the higher Dice, then the lower k, so the choice is deterministic. Selection only
ever sees validation means (the ``positions`` tables): no function here reads a test case.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


RELATIVE = "relative_position"
"""Strategy 3's coordinate as the paper gives it: k / number of matches."""
STRUCTURAL = "from_last_merge"
"""Strategy 3's coordinate in the pipeline: matches after the last skip concatenation."""


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


def nearest_position(table: pd.DataFrame, position: float, coordinate: str = RELATIVE) -> int:
    """The scored k of ``table`` (columns ``k`` and ``coordinate``) nearest to ``position``
    (ties: the lower k)."""
    distance = (table[coordinate] - position).abs().round(12)
    order = table.assign(distance=distance).sort_values(["distance", "k"])
    return int(order.iloc[0]["k"])


def rule_of_thumb(positions: pd.DataFrame, by: list[str], coordinate: str = RELATIVE) -> tuple[float, pd.DataFrame]:
    """Strategy 3: the position with the best mean scaled rank pooled over all tables.

    Args:
        positions: validation means, columns ``k, dice, hd95``, ``coordinate`` and the
            columns ``by`` that identify one table (one network at one fold), e.g.
            ``["pair", "slug", "fold"]``.
        by: the identifying columns.
        coordinate: the column that places a position alike in every network:
            :data:`RELATIVE` (the paper's share of the matches) or :data:`STRUCTURAL`.

    Returns:
        ``(r, candidates)``: the chosen position (in ``coordinate``) and the table of
        candidates with their pooled score (``coordinate, mean_scaled_rank, tables``), best first.
    """
    missing = {"k", coordinate, "dice", "hd95", *by} - set(positions.columns)
    if missing:
        raise ValueError(f"rule_of_thumb needs columns k, {coordinate}, dice, hd95 and {by}; "
                         f"missing {sorted(missing)}")
    if positions.empty:
        raise ValueError("no positions to select from")
    tables = [_scaled_ranks(group) for _, group in positions.groupby(by, sort=True)]
    candidates = sorted({round(float(r), 12) for r in positions[coordinate]})
    scores = []
    for r in candidates:
        per_table = [float(t.loc[t["k"] == nearest_position(t, r, coordinate), "scaled_rank"].iloc[0])
                     for t in tables]
        scores.append({coordinate: r, "mean_scaled_rank": float(np.mean(per_table)), "tables": len(tables)})
    pooled = pd.DataFrame(scores).sort_values(["mean_scaled_rank", coordinate], ignore_index=True)
    return float(pooled.iloc[0][coordinate]), pooled


def select_strategies(positions: pd.DataFrame, network: Hashable, fold: int,
                      by: tuple[str, str] = ("pair", "slug"), coordinate: str = RELATIVE) -> dict[str, Any]:
    """Strategies 1, 2 and 3 for one network (``by`` values ``network``) at ``fold``.

    ``positions`` holds every scored table (columns ``k, relative_position, dice, hd95, fold``,
    ``by`` and strategy 3's ``coordinate``); strategy 3 pools over all of them, strategy 2 over
    this network's folds, strategy 1 uses this fold only. Returns the ``selection.json``
    record: per strategy ``k``, ``relative_position`` (and ``from_last_merge`` where the table
    has it), plus what each pooled over; strategy 3 also its pooled ``position`` and ``coordinate``.
    """
    columns = list(by)
    key = network if isinstance(network, tuple) else (network,)
    mine = positions[(positions[columns] == pd.Series(dict(zip(columns, key)))).all(axis=1)]
    current = mine[mine["fold"] == fold]
    if current.empty:
        raise ValueError(f"no positions of {dict(zip(columns, key))} at fold {fold}")

    def entry(k: int, **extra: Any) -> dict[str, Any]:
        row = current.loc[current["k"] == k].iloc[0]
        where = {column: float(row[column]) for column in (RELATIVE, STRUCTURAL) if column in current.columns}
        return {"k": int(k), **where, **extra}

    folds = sorted(int(f) for f in mine["fold"].unique())
    k1 = select_position(current, SelectionStrategy.CURRENT_FOLD)
    k2 = select_position(mine, SelectionStrategy.ALL_FOLDS)
    r, pooled = rule_of_thumb(positions, [*columns, "fold"], coordinate)
    k3 = nearest_position(current, r, coordinate)
    all_folds = entry(k2, folds=folds, equals_current_fold=len(folds) == 1)
    if len(folds) == 1:
        all_folds["note"] = "one fold scored: strategy 2 (all folds) is strategy 1 (current fold)"
    return {
        SelectionStrategy.CURRENT_FOLD.value: entry(k1),
        SelectionStrategy.ALL_FOLDS.value: all_folds,
        SelectionStrategy.RULE_OF_THUMB.value: entry(k3, coordinate=coordinate, pooled_position=r,
                                                     pooled_tables=int(pooled.iloc[0]["tables"])),
    }


@dataclass(frozen=True)
class RuleOfThumb:
    """Strategy 3's pooled position as a pipeline measured it, for a network with no labelled
    validation images (``stitch-ops stitch`` without ``--labels``).

    Attributes:
        from_last_merge: matches after the last skip concatenation (:data:`STRUCTURAL`).
        source: where the value comes from (a pipeline run's ``selection.json``, or the file
            this package ships and what that was measured on).
    """

    from_last_merge: int
    source: str

    def position(self, num_matches: int, last_merge: int) -> int:
        """The k of a network with ``num_matches`` matches whose last merge is match
        ``last_merge``, clipped to the matches."""
        return min(num_matches - 1, max(0, last_merge + self.from_last_merge))


PACKAGED_RULE_OF_THUMB = "rule_of_thumb.json"
"""The rule of thumb this package ships (``stitch_ops/evaluation/rule_of_thumb.json``)."""


def read_rule_of_thumb(path: Path | None = None) -> RuleOfThumb:
    """Strategy 3's position from a pipeline's ``selection.json`` (its ``rule_of_thumb`` entry,
    pooled over every network of that run) or, with no ``path``, the packaged one.

    Raises:
        ValueError: if the file holds no structural rule of thumb (a ``selection.json``
            written before strategy 3 was measured from the last skip concatenation).
    """
    if path is None:
        record = json.loads(resources.files("stitch_ops.evaluation").joinpath(PACKAGED_RULE_OF_THUMB).read_text())
        return RuleOfThumb(int(record[STRUCTURAL]), record["source"])
    record = json.loads(Path(path).read_text()).get(SelectionStrategy.RULE_OF_THUMB.value, {})
    if record.get("coordinate") != STRUCTURAL or "pooled_position" not in record:
        raise ValueError(f"{path} holds no rule of thumb measured from the last skip concatenation (expected a "
                         f"stitch_strategies selection.json with rule_of_thumb.coordinate = {STRUCTURAL!r}); "
                         f"rerun the pipeline's stitch_strategies stages")
    return RuleOfThumb(int(round(record["pooled_position"])), f"{path} (pooled over {record.get('pooled_tables')} "
                                                              f"scored networks)")
