"""The stitch_strategies stage on a hand-made scores/ tree: the contract files, and no test case read
while choosing (the stage scores the chosen ensembles afterwards; the smoke pipeline tests that)."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pandas as pd
import pytest

from stitch_ops.config import load_params
from stitch_ops.stitching import strategies as stage

REPO = Path(__file__).resolve().parents[2]
SLUG = "via_a_double_batched"


def scores_tree(root: Path) -> None:
    """One network of 8 matches at fold 0 (k=4 is best on both metrics), its last skip concatenation
    at k=5, and an unrelated one (20 matches, last skip at k=14, k=10 best)."""
    folder = root / "scores" / "polyp" / "stitch" / SLUG / "fold_0"
    folder.mkdir(parents=True)
    table = pd.DataFrame({"k": [0, 4, 7], "dice": [0.6, 0.9, 0.7], "hd95": [8.0, 2.0, 5.0]})
    table.assign(relative_position=table["k"] / 8, from_last_merge=table["k"] - 5, matches=8).to_csv(
        folder / "positions.csv", index=False)
    other = root / "scores" / "pelvis" / "stitch" / SLUG / "fold_0"
    other.mkdir(parents=True)
    table = pd.DataFrame({"k": [0, 10, 19], "dice": [0.5, 0.8, 0.7], "hd95": [9.0, 3.0, 4.0]})
    table.assign(relative_position=table["k"] / 20, from_last_merge=table["k"] - 14, matches=20).to_csv(
        other / "positions.csv", index=False)
    reference = root / "metrics" / "polyp" / "stitch" / "no_stitch_via_a" / "fold_0"
    reference.mkdir(parents=True)
    (reference / "summary.json").write_text(json.dumps({"val_a/dice_mean": 0.75, "val_a/hd95_mean": 4.5,
                                                        "test_a/dice_mean": 0.1}))
    predictions = root / "predictions" / "polyp" / "stitch" / SLUG / "fold_0"
    for name in ("test_a", "test_b", "val"):
        (predictions / name).mkdir(parents=True)
        (predictions / name / "case_000.png").write_bytes(b"segmentation")


def test_strategies_write_the_contract_files_and_reuse_predictions_without_reading_test_cases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    scores_tree(tmp_path)
    # test labels that would favour k=7: selection must never see them
    poisoned = tmp_path / "metrics" / "polyp" / "stitch" / SLUG / "fold_0"
    poisoned.mkdir(parents=True)
    (poisoned / "cases.csv").write_text("pair,test_party,approach,trained_on,fold,case,dice,hd95\n")
    read: list[str] = []
    real_open, real_read_csv, real_read_text = builtins.open, pd.read_csv, Path.read_text

    def reading_open(file, mode="r", *args, **kwargs):
        if "r" in mode:
            read.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", reading_open)
    monkeypatch.setattr(pd, "read_csv", lambda path, *a, **k: (read.append(str(path)), real_read_csv(path, *a, **k))[1])
    monkeypatch.setattr(Path, "read_text", lambda path, *a, **k: (read.append(str(path)), real_read_text(path, *a, **k))[1])

    selection = stage.choose_and_predict(load_params(REPO / "params.yaml"), "polyp", "a", "double_batched", 0,
                                         progress=False, root=tmp_path)

    relative = {str(Path(p).relative_to(tmp_path)) for p in read if p.startswith(str(tmp_path))}
    inputs = {p for p in relative if not p.startswith("predictions/")}  # predictions: copied, not read for selection
    assert inputs == {f"scores/polyp/stitch/{SLUG}/fold_0/positions.csv", f"scores/pelvis/stitch/{SLUG}/fold_0/positions.csv",
                      "metrics/polyp/stitch/no_stitch_via_a/fold_0/summary.json"}
    assert not [p for p in relative if "labelsTs" in p or "imagesTs" in p or "cases.csv" in p]
    out = tmp_path / "metrics" / "polyp" / "stitch" / SLUG / "fold_0"
    assert json.loads((out / "selection.json").read_text()) == selection
    assert selection["current_fold"] == {"k": 4, "relative_position": 0.5, "from_last_merge": -1}
    assert selection["all_folds"]["k"] == 4 and selection["all_folds"]["equals_current_fold"] is True
    assert "strategy 1" in selection["all_folds"]["note"]
    assert selection["rule_of_thumb"]["k"] == 4 and selection["rule_of_thumb"]["pooled_tables"] == 2
    assert selection["rule_of_thumb"]["coordinate"] == "from_last_merge"
    assert selection["rule_of_thumb"]["pooled_position"] == -1  # 1 before the last skip: both networks' best
    assert selection["rule_of_thumb"]["same_k_as"] == "current_fold"
    assert json.loads((out / "no_stitch.json").read_text()) == {"dice": 0.75, "hd95": 4.5}
    positions = pd.read_csv(out / "positions.csv")
    assert list(positions["selected"]) == [False, True, False]
    assert list(positions["selected_rule_of_thumb"]) == [False, True, False]
    for strategy in ("all_folds", "rule_of_thumb"):
        copied = tmp_path / "predictions" / "polyp" / "stitch" / f"{SLUG}_{strategy}" / "fold_0"
        assert sorted(p.name for p in copied.iterdir()) == ["test_a", "test_b", "val"]


def test_strategies_refuse_a_missing_scores_tree(tmp_path: Path):
    from stitch_ops.errors import InputFileError

    with pytest.raises(InputFileError, match="run the stitch_select stages first"):
        stage.strategies(load_params(REPO / "params.yaml"), "polyp", "a", "double_batched", 0, root=tmp_path)
