"""Scoring stitch-ensembles on validation cases: one model, or every position k of a
stitched network in one sliding window (the parents' layers before each stitch run once).

What ``select``, the search, RQ1 and ``stitch-ops stitch`` score candidates with; the test
cases are never scored here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stitch_ops.evaluation.evaluate import evaluate_folder
from stitch_ops.nnunet.model import NnUNetModel
from stitch_ops.nnunet.predict import predict_preprocessed, predict_preprocessed_stacked
from stitch_ops.stitching.positions import PositionEnsembles

def score_on_validation(model: Any, preprocessed: Any, labels: Path, scratch: Path, device: str,
                        **identity: Any) -> pd.DataFrame:
    """Predict preprocessed validation cases with ``model`` into ``scratch`` and score them
    against ``labels``: one row per case (``dice``, ``hd95``), ``identity`` as
    :func:`~stitch_ops.evaluation.evaluate.evaluate_folder` takes it (pair, test_party, ...)."""
    predict_preprocessed(model, preprocessed, scratch, save_probabilities=False, device=device, progress=False)
    return evaluate_folder(scratch, labels, model.dataset_json["file_ending"], progress=False, **identity)


POSITIONS_MEMORY = 2**30
"""Bytes the stacked logits of one case may take when positions are scored together (the
predictor accumulates them in float32); more positions are scored in several passes."""

KEPT_LOGITS_MEMORY = 2**31
"""Bytes of validation logits :func:`~stitch_ops.stitching.stages.select` keeps from its scoring run, so that the selected
position's validation predictions are exported from them instead of predicted again. Cases
whose logits do not fit are predicted again with the selected stitch-ensemble: the same
computation, so the same files either way."""


@dataclass
class ScoringRun:
    """What :func:`score_positions_and_reference` gives.

    Attributes:
        positions: each k's per-case table (as :func:`score_positions` returns them).
        no_stitch: the no-stitch reference's per-case table (``None`` unless asked for).
        logits: per k, case id -> the sliding window's logits of that stitch-ensemble for the
            case (``K X Y [Z]``, CPU), for the cases kept within the memory given.
    """

    positions: dict[int, pd.DataFrame]
    no_stitch: pd.DataFrame | None = None
    logits: dict[int, dict[str, Any]] = field(default_factory=dict)


def score_positions(network: Any, positions: Sequence[int], own: Any, preprocessed: Sequence[Any], labels: Path,
                    scratch: Path, device: str, **identity: Any) -> dict[int, pd.DataFrame]:
    """The stitch-ensembles of ``network`` at ``positions`` scored like
    :func:`score_on_validation` scores one (``own``'s plans, nnU-Net's sliding window, the
    same evaluation), with the parents' work before each stitch shared: every patch runs
    :class:`~stitch_ops.stitching.positions.PositionEnsembles` once for all positions of a
    pass, one logits accumulator per position. Returns each k's per-case table; ``scratch/k{k}``
    holds its predictions."""
    return score_positions_and_reference(network, positions, own, preprocessed, labels, scratch, device,
                                         identity=identity).positions


def score_positions_and_reference(network: Any, positions: Sequence[int], own: Any, preprocessed: Sequence[Any],
                                  labels: Path, scratch: Path, device: str, *, identity: Mapping[str, Any],
                                  no_stitch: bool = False, keep_logits: int = 0) -> ScoringRun:
    """:func:`score_positions`, and with ``no_stitch`` the no-stitch reference in the same run
    (stacked after the positions of the first pass: :class:`~stitch_ops.stitching.positions.PositionEnsembles` runs both parents
    anyway; its predictions in ``scratch/no_stitch``), scored as :func:`score_on_validation`
    scores ``TwoModelEnsemble(network.parent_a, network.parent_b)``: the same layers on the same
    tiles, so the same segmentations. ``keep_logits``: bytes of the positions' logits to keep
    for the caller (:attr:`ScoringRun.logits`), case by case while they fit."""
    positions = list(positions)
    classes = len(own.dataset_json["labels"])  # an upper bound of nnU-Net's segmentation heads
    voxels = max((int(np.prod(case.data.shape[1:])) for case in preprocessed), default=1)
    per_pass = max(1, POSITIONS_MEMORY // (4 * classes * voxels) - no_stitch)
    run = ScoringRun({}, logits={k: {} for k in positions} if keep_logits else {})
    kept, room = set(), keep_logits  # the first cases whose logits (every pass) fit in keep_logits
    for case in preprocessed:
        room -= 4 * classes * int(np.prod(case.data.shape[1:])) * (len(positions) + no_stitch)
        if room < 0:
            break
        kept.add(case.case)

    def keep(group: list[int], reference: bool):
        def keep_case(case: Any, logits: Any) -> None:
            if case.case in kept:
                for k, part in zip(group, logits.chunk(len(group) + reference)):
                    run.logits[k][case.case] = part
        return keep_case

    for start in range(0, len(positions), per_pass):
        group = positions[start:start + per_pass]
        reference = no_stitch and start == 0
        ensembles = PositionEnsembles(network, group, reference=reference)
        model = NnUNetModel(ensembles, own.plans, own.dataset_json, own.configuration, None,
                            f"stitch-ensembles k={group}" + (" and the no-stitch reference" if reference else ""))
        folders = [scratch / f"k{k}" for k in group] + [scratch / "no_stitch"] * reference
        predict_preprocessed_stacked(model, preprocessed, folders, save_probabilities=False, device=device,
                                     progress=False, keep=keep(group, reference) if keep_logits else None)
        for k, folder in zip(group, folders):
            run.positions[k] = evaluate_folder(folder, labels, own.dataset_json["file_ending"], progress=False,
                                               **identity)
        if reference:
            run.no_stitch = evaluate_folder(folders[-1], labels, own.dataset_json["file_ending"], progress=False,
                                            **identity)
    return run


def evaluated_positions(num_matches: int, max_positions: int | None) -> list[int]:
    """Every k, or ``max_positions`` of them spread evenly from the first to the last match."""
    if max_positions is None or max_positions >= num_matches:
        return list(range(num_matches))
    return sorted({int(round(k)) for k in np.linspace(0, num_matches - 1, max_positions)})
