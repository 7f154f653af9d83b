"""`stitch-ops stitch` and `stitch-ops predict` on models as users have them: incompatible
inputs are refused before any work, one line naming both models; a run resumes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stitch_ops.bundle.sources import open_model
from stitch_ops.bundle.verify import verify_bundle
from stitch_ops.cli import main as cli_main
from stitch_ops.nnunet.model import NnUNetModel
from stitch_ops.stitch_task import IncompatibleModels, check_compatible
from tests.bundle.institutions import Institution

TINY = ["--epochs", "1", "--iterations-per-epoch", "2", "--batch-size", "2", "--no-progress"]


def edited(model: NnUNetModel, dataset: dict | None = None, configuration: dict | None = None) -> NnUNetModel:
    """``model`` with its dataset.json / plans configuration entries replaced (network untouched)."""
    plans = copy.deepcopy(model.plans)
    plans["configurations"][model.configuration].update(configuration or {})
    return NnUNetModel(model.network, plans, {**model.dataset_json, **(dataset or {})}, model.configuration)


@pytest.fixture(scope="module")
def models(institution_a: Institution, institution_b: Institution) -> tuple[NnUNetModel, NnUNetModel]:
    return open_model(institution_b.results), open_model(institution_a.results)


@pytest.mark.parametrize("change, phrase", [
    ({"dataset": {"labels": {"background": 0, "lesion": 1}}}, "segment different labels"),
    ({"dataset": {"channel_names": {"0": "T2"}}}, "read 3 vs 1 input channels: both must read the same images"),
    ({"dataset": {"channel_names": {"0": "B", "1": "G", "2": "R"}}}, "read different channels"),
    ({"configuration": {"patch_size": [32, 32, 32]}}, "are 2-D and 3-D networks"),
    ({"configuration": {"spacing": [8.0, 8.0]}}, "share no scale along axis 0"),
])
def test_incompatible_models_are_named_with_the_fix(models, change: dict, phrase: str):
    own, other = models
    with pytest.raises(IncompatibleModels, match=f"own model OWN and other model OTHER {phrase}"):
        check_compatible(own, edited(other, **change), "OWN", "OTHER")
    check_compatible(own, edited(other, configuration={"spacing": [1.3, 1.3]}), "OWN", "OTHER")  # close enough


def stitch(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        status = cli_main(["stitch", *argv])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_bad_inputs_fail_in_one_line_before_any_work(institution_a: Institution, institution_b: Institution,
                                                     tmp_path: Path, capsys):
    own, other, images = institution_b.results, institution_a.results, institution_b.raw / "imagesTr"
    base = ["--own", str(own), "--other", str(other), "--out", str(tmp_path / "out"), *TINY]

    labels = shutil.copytree(own, tmp_path / "relabelled" / own.name)
    dataset = json.loads((labels / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "lesion": 1}
    (labels / "dataset.json").write_text(json.dumps(dataset))
    gray, empty = tmp_path / "gray", tmp_path / "empty"
    gray.mkdir(), empty.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(gray / "case_0000.png")
    broken = shutil.copytree(images, tmp_path / "broken")
    next(broken.glob("*.png")).write_bytes(b"not a png")
    cases = [
        (["--own", str(labels), "--other", str(other), "--images", str(images), "--out", str(tmp_path / "o")],
         f"own model {labels} and other model {other} segment different labels"),
        (["--images", str(empty)], f"{empty} holds no images named {{case}}_0000.png"),
        (["--images", str(tmp_path / "nowhere")], "no images folder at"),
        (["--images", str(gray)], f"case case of {gray} has 1 channel(s), but own model {own} and other model "
                                  f"{other} read 3"),
        (["--images", str(broken)], "cannot read case"),
        (["--images", str(images), "--labels", str(empty)], f"no label in {empty} is named like an image case"),
        (["--images", str(images), "--other", str(tmp_path / "nothing")], "no model at"),
        (["--images", str(images), "--epochs", "0"], "argument --epochs: expected a whole number >= 1, got '0'"),
    ]
    for extra, phrase in cases:
        argv = base + extra if extra[0] != "--own" else extra + TINY
        status, out, err = stitch(capsys, *argv)
        assert status == 2 and err.count("\n") == 1 and phrase in err, (extra, err)
        assert err.startswith("stitch-ops stitch: error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_stitch_scores_positions_exports_and_resumes(institution_a: Institution, institution_b: Institution,
                                                     tmp_path: Path, capsys):
    own, other, raw = institution_b.results, institution_a.results, institution_b.raw
    argv = ["--own", str(own), "--other", str(other), "--images", str(raw / "imagesTr"), "--labels",
            str(raw / "labelsTr"), "--out", str(tmp_path / "out"), "--max-positions", "2", *TINY]
    status, out, err = stitch(capsys, *argv)
    assert status == 0, err
    for name in ("own", "other", "plain ensemble", "stitch-ensemble"):
        assert f"  {name} " in out
    assert "(2 position(s) scored)" in out and out.splitlines()[-2].startswith("recommendation: ")
    positions = pd.read_csv(tmp_path / "out" / "positions.csv")
    assert len(positions) == 2 and positions["selected"].sum() == 1
    assert positions["dice"].between(0, 1).all()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["k"] == int(positions.loc[positions["selected"], "k"].iloc[0])
    report = verify_bundle(tmp_path / "out" / "bundle.zip")
    assert report.metadata["stitch_ops"]["kind"] == "stitch_ensemble"

    network = tmp_path / "out" / "work" / "network" / "stitched_network.pt"
    trained_at = network.stat().st_mtime_ns
    status, again, _ = stitch(capsys, *argv)  # a rerun resumes: nothing is trained again
    assert status == 0 and network.stat().st_mtime_ns == trained_at
    assert again.splitlines()[:3] == out.splitlines()[:3]

    # stitches saved in the old format (with their parents): refused, with this command's way out
    saved = network.read_bytes()
    torch.save({"description": json.dumps({"format": "stitch_ops.stitched_network/1"}), "state_dict": {}}, network)
    status, _, err = stitch(capsys, *argv)
    assert status == 2 and f"delete {network.parent} and run the same command again" in err
    network.write_bytes(saved)

    # other settings in the same folder: refused, not mixed
    status, _, err = stitch(capsys, *argv[:-len(TINY)], "--method", "direct_matching", *TINY)
    assert status == 2 and "holds a stitch run with other settings" in err

    # without labels: the rule-of-thumb position, said so (stitches trained on every image: none is held out)
    status, out, _ = stitch(capsys, *[a if a != str(tmp_path / "out") else str(tmp_path / "unlabeled")
                                      for a in argv if a not in (str(raw / "labelsTr"), "--labels")])
    assert status == 0 and "strategy 3 (no --labels): the rule-of-thumb position, +4 matches from the last skip" in out
    assert "recommendation: none without labels" in out
    unlabeled = json.loads((tmp_path / "unlabeled" / "summary.json").read_text())
    assert unlabeled["from_last_merge"] == min(4, unlabeled["matches"] - 1 - unlabeled["last_merge"])

    # ... or the rule of thumb a pipeline run measured (its stitch_strategies selection.json)
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"rule_of_thumb": {"k": 3, "coordinate": "from_last_merge",
                                                       "pooled_position": -1, "pooled_tables": 6}}))
    status, out, _ = stitch(capsys, *[a if a != str(tmp_path / "out") else str(tmp_path / "measured")
                                      for a in argv if a not in (str(raw / "labelsTr"), "--labels")],
                            "--rule-of-thumb", str(selection))
    measured = json.loads((tmp_path / "measured" / "summary.json").read_text())
    assert status == 0 and f"{selection} (pooled over 6 scored networks)" in out
    assert measured["from_last_merge"] == -1 and measured["k"] == measured["last_merge"] - 1
    selection.write_text(json.dumps({"rule_of_thumb": {"k": 3}}))  # written before strategy 3 was structural
    status, _, err = stitch(capsys, *[a if a != str(tmp_path / "out") else str(tmp_path / "old")
                                      for a in argv if a not in (str(raw / "labelsTr"), "--labels")],
                            "--rule-of-thumb", str(selection))
    assert status == 2 and err.startswith(f"stitch-ops stitch: error: --rule-of-thumb: {selection} holds no rule")

    predicted = tmp_path / "seg"
    assert cli_main(["predict", "--model", str(tmp_path / "out" / "bundle.zip"), "--input",
                     str(raw / "imagesTs"), "--out", str(predicted), "--no-progress"]) == 0
    assert sorted(p.name for p in predicted.glob("*.png")) == sorted(
        p.name[: -len("_0000.png")] + ".png" for p in (raw / "imagesTs").glob("*.png"))


def test_help_lists_the_task_commands_first(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    commands = [line.split()[0] for line in capsys.readouterr().out.splitlines()
                if line.startswith("    ") and not line.startswith("     ")]
    assert commands[:3] == ["stitch", "predict", "data"] and "bundle" in commands
