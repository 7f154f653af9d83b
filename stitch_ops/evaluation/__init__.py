"""Evaluation: per-case metrics, evaluation of prediction folders, statistics, selection, plots.

Re-exports the metric functions and the folder evaluation; importing this package does
not import torch or MONAI (they load on the first metric computed).
"""

from stitch_ops.evaluation.evaluate import (
    CASE_COLUMNS,
    GROUP_COLUMNS,
    evaluate_folder,
    summarize,
    summary_key,
    summary_metrics,
    write_evaluation,
)
from stitch_ops.evaluation.metrics import EMPTY_MASK_POLICY, EmptyCase, EmptyMaskPolicy, dice, hd95

__all__ = [
    "CASE_COLUMNS",
    "EMPTY_MASK_POLICY",
    "GROUP_COLUMNS",
    "EmptyCase",
    "EmptyMaskPolicy",
    "dice",
    "evaluate_folder",
    "hd95",
    "summarize",
    "summary_key",
    "summary_metrics",
    "write_evaluation",
]
