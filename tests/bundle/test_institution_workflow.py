"""The institution workflow as a careful user meets it (issue 26; issue 22, items 5-6): no task
command deletes or overwrites a file it did not write, labels it cannot read are never scored
as zeros, selection never reads an image that trained the stitches, and `stitch-ops stitch`
prints only its table and its recommendation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from stitch_ops.bundle.sources import open_model
from stitch_ops.bundle.verify import verify_bundle
from stitch_ops.cli import main as cli_main
from stitch_ops.stitching.network import load_stitched_network
from stitch_ops.stitch_task import PLAIN_ROW, STITCH_ROW, hold_out, recommend, rule_of_thumb_k
from tests.bundle.institutions import Institution

TINY = ["--epochs", "1", "--iterations-per-epoch", "2", "--batch-size", "2", "--no-progress"]


def run(capsys, *argv: object) -> tuple[int, str, str]:
    try:
        status = cli_main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its modification time and content."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- issue 22, items 5 and 6: honest selection, a table and a recommendation -----------------------

def test_hold_out_is_a_seeded_share_of_the_labelled_images():
    labelled = [f"case{i}" for i in range(10)]
    chosen = hold_out(labelled, 0.3, seed=0)
    assert len(chosen) == 3 and set(chosen) <= set(labelled) and chosen == sorted(chosen)
    assert hold_out(list(reversed(labelled)), 0.3, seed=0) == chosen  # the order given does not matter
    assert hold_out(labelled, 0.3, seed=1) != chosen
    assert hold_out(["only"], 0.1, seed=0) == ["only"]  # at least one


def scores(own: float, other: float, plain: float, stitch: float) -> dict[str, dict[str, float]]:
    return {name: {"dice": dice, "hd95": 1.0} for name, dice in
            (("own", own), ("other", other), (PLAIN_ROW, plain), (STITCH_ROW, stitch))}


def test_the_recommendation_takes_the_stitch_ensemble_only_where_it_beats_the_plain_ensemble():
    assert recommend(scores(0.80, 0.60, 0.82, 0.85), 7).startswith(
        "recommendation: use the stitch-ensemble (the exported bundle): Dice 0.8500")
    plain = recommend(scores(0.80, 0.60, 0.85, 0.84), 7)
    assert plain.startswith("recommendation: use the plain ensemble") and "does not beat it" in plain
    own = recommend(scores(0.90, 0.60, 0.85, 0.87), 7)
    assert own.startswith("recommendation: your own model is best on your own held-out images (Dice 0.9000)")
    assert "the stitch-ensemble (k=7, Dice 0.8700" in own and "costs 0.0300 Dice" in own and "robustness" in own


def test_stitch_holds_out_labelled_images_and_prints_the_table_and_a_recommendation(
        institution_a: Institution, institution_b: Institution, tmp_path: Path, capsys):
    own, other, raw = institution_b.results, institution_a.results, institution_b.raw
    masks = tmp_path / "masks"  # saved as 0/255, as public polyp masks are
    masks.mkdir()
    for label in (raw / "labelsTr").glob("*.png"):
        Image.fromarray((np.asarray(Image.open(label)) * 255).astype(np.uint8)).save(masks / label.name)
    masks_before = snapshot(masks)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    status, stdout, stderr = run(capsys, "stitch", "--own", own, "--other", other, "--images", raw / "imagesTr",
                                 "--labels", masks, "--out", out, "--max-positions", "1", "--name", "Polyp stitch",
                                 "--authors", "Hospital B", *TINY)
    assert status == 0, stderr

    # the held-out images never trained a stitch, and they are the only ones scored
    summary = json.loads((out / "summary.json").read_text())
    cases = {p.name[: -len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png")}
    held_out = set(summary["held_out"]["cases"])
    trained = {p.stem for p in (out / "work" / "preprocessed").glob("*.npz")}
    assert held_out and trained and not held_out & trained and held_out | trained == cases
    assert len(held_out) == round(0.5 * len(cases)) and summary["held_out"] == {
        "share": 0.5, "seed": 0, "cases": sorted(held_out)}
    assert "held-out labelled image(s)" in summary["selection"] and "never trained the stitches" in summary["selection"]

    # --max-positions 1: the rule-of-thumb position, not k = 0
    positions = pd.read_csv(out / "positions.csv")
    network = load_stitched_network(out / "work" / "network" / "stitched_network.pt", open_model(own).network,
                                    open_model(other).network, retrain="")
    assert positions["k"].tolist() == [rule_of_thumb_k(network)[0]] == [summary["k"]]
    assert summary["k"] > 0

    # 0/255 masks read as 0/1, said so; the user's files unchanged
    assert snapshot(masks) == masks_before and (out / "notes.txt").read_text() == "mine"
    converted = {p.name: set(np.unique(np.asarray(Image.open(p))).tolist()) for p in (out / "work" / "labels").iterdir()}
    assert sorted(converted) == sorted(f"{c}.png" for c in held_out) and all(v <= {0, 1} for v in converted.values())

    # stdout: the table (title, header, four rows), the note, the recommendation, the bundle; nothing else
    lines = stdout.splitlines()
    assert lines[0].startswith(f"on {len(held_out)} held-out labelled image(s) (never used to train the stitches")
    assert lines[1].split() == ["model", "Dice", "HD95"]
    assert [line[:26].strip() for line in lines[2:6]] == ["own", "other", PLAIN_ROW, f"{STITCH_ROW} (k={summary['k']})"]
    assert lines[6].startswith("note: labels in") and "0/255" in lines[6]
    assert lines[7] == summary["recommendation"] and lines[7].startswith("recommendation: ")
    assert lines[8].startswith("stitch-ensemble bundle: ") and len(lines) == 9
    assert "perform_everything_on_device" not in stdout + stderr and " INFO " not in stderr

    # the bundle says what was stitched: both parents, by dataset, trainer, plans, folds and SHA-256
    meta = verify_bundle(out / "bundle.zip").metadata
    assert meta["name"] == "Polyp stitch" and meta["authors"] == "Hospital B"
    parents = meta["stitch_ops"]["parents"]
    for role, institution in (("own", institution_b), ("other", institution_a)):
        checkpoint = institution.results / "fold_0" / "checkpoint_final.pth"
        assert parents[role]["dataset"] == institution.raw.name
        assert parents[role]["trainer"] == "ScheduledTrainer" and parents[role]["plans"] == "nnUNetPlans"
        assert parents[role]["folds"] == [0]
        assert parents[role]["sha256"] == {"fold_0/checkpoint_final.pth": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    readme = (out / "bundle" / "docs" / "README.md").read_text()
    assert "folds [None]" not in readme and f"dataset `{institution_a.raw.name}`" in readme
    assert "trained on stitches trained on" not in meta["description"] and institution_b.raw.name in meta["description"]


def test_stitch_refuses_before_any_work(institution_a: Institution, institution_b: Institution, tmp_path: Path,
                                        capsys):
    own, other, raw = institution_b.results, institution_a.results, institution_b.raw
    images, labels = raw / "imagesTr", raw / "labelsTr"
    odd = tmp_path / "odd"  # a label value the models do not segment
    odd.mkdir()
    for label in labels.glob("*.png"):
        Image.fromarray((np.asarray(Image.open(label)) * 7).astype(np.uint8)).save(odd / label.name)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "summary.json").write_text("{}")
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    base = ["--own", own, "--other", other, *TINY]
    cases = [
        (["--images", images, "--out", images], f"--out {images} is --images"),
        (["--images", images, "--labels", labels, "--out", labels / "sub"], "lies inside --labels"),
        (["--images", images, "--out", a_file], f"--out {a_file} is an existing file"),
        (["--images", images, "--out", taken], f"--out {taken} already holds 1 file(s) this command would write "
                                               f"(summary.json); choose another --out, or pass --overwrite"),
        (["--images", images, "--labels", odd, "--out", tmp_path / "o"],
         f"labels in {odd} hold values [0, 7]"),
        (["--images", raw, "--out", tmp_path / "o"], f"--images {raw} is an nnU-Net dataset, not a folder of images: "
                                                     f"pass {raw / 'imagesTr'}"),
        (["--images", images, "--out", tmp_path / "o", "--epochs", "0"],
         "argument --epochs: expected a whole number >= 1, got '0'"),
    ]
    for extra, phrase in cases:
        status, _, err = run(capsys, "stitch", *base, *extra)
        assert status == 2 and err.count("\n") == 1 and phrase in err, (extra, err)
    status, _, err = run(capsys, "stitch", "--own", own / "fold_0", "--other", other, "--images", images,
                         "--out", tmp_path / "o", *TINY)
    assert status == 2 and f"--own {own / 'fold_0'} is one fold of an nnU-Net results folder: pass the parent " \
                           f"folder {own} with --own-fold 0" in err
    assert not (tmp_path / "o").exists() and a_file.read_text() == "mine"
    assert sorted(p.name for p in taken.iterdir()) == ["summary.json"]


# ---- issue 26, item 1: --out keeps what it held ------------------------------------------------------

def test_predict_writes_beside_the_files_out_holds(institution_b: Institution, tmp_path: Path, capsys):
    model, images = institution_b.results, institution_b.raw / "imagesTs"
    expected = sorted(p.name[: -len("_0000.png")] + ".png" for p in images.glob("*_0000.png"))
    out = tmp_path / "seg"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    images_before = snapshot(images)
    argv = ["predict", "--model", model, "--input", images, "--out", out, "--no-progress"]
    status, stdout, err = run(capsys, *argv)
    assert status == 0, err
    assert stdout == f"{out}: {len(expected)} file(s) written\n" and " INFO " not in err
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, "notes.txt"])
    first = snapshot(out)

    status, _, err = run(capsys, *argv)  # the same files again: refused, nothing touched
    assert status == 2 and f"already holds {len(expected)} file(s) this command would write" in err
    assert "--overwrite" in err and snapshot(out) == first
    status, _, err = run(capsys, *argv, "--overwrite")
    assert status == 0, err
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == sorted(
        [*expected, "notes.txt"])

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    for target, phrase in ((images, f"--out {images} is --input"), (images / "seg", "lies inside --input"),
                           (a_file, "is an existing file")):
        status, _, err = run(capsys, "predict", "--model", model, "--input", images, "--out", target, "--no-progress")
        assert status == 2 and phrase in err, err
    assert snapshot(images) == images_before and a_file.read_text() == "mine"
    assert not list(tmp_path.glob("*.partial*"))


def test_bundle_export_never_replaces_a_users_files(institution_b: Institution, tmp_path: Path, capsys):
    model = institution_b.results
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("mine")
    export = ["bundle", "export", "--model", model, "--no-progress", "--out"]
    status, _, err = run(capsys, *export, mixed)
    assert status == 2 and "holds files that are not part of a bundle (notes.txt)" in err
    status, _, err = run(capsys, *export, mixed, "--overwrite")
    assert status == 2 and (mixed / "notes.txt").read_text() == "mine"

    bundle = tmp_path / "bundle"
    assert run(capsys, *export, bundle)[0] == 0
    status, _, err = run(capsys, *export, bundle)
    assert status == 2 and f"{bundle}.zip" in err and "pass --overwrite" in err
    status, _, err = run(capsys, *export, bundle, "--overwrite")
    assert status == 0, err
    verify_bundle(bundle.with_name("bundle.zip"))
    status, _, err = run(capsys, *export, model / "exported")
    assert status == 2 and "lies inside --model" in err
    status, _, err = run(capsys, "bundle", "export", "--model", model / "fold_0", "--out", tmp_path / "b2")
    assert status == 2 and f"pass the parent folder {model} with --fold 0" in err


def test_data_convert_writes_beside_the_files_target_holds(tmp_path: Path, capsys):
    from tests.data.test_data_converters import KVASIR_STEMS, _make_kvasir

    source = _make_kvasir(tmp_path / "Kvasir-SEG", KVASIR_STEMS)
    target = tmp_path / "Dataset010_Kvasir"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    convert = ["data", "convert", "kvasir", source, target, "--no-progress"]
    assert run(capsys, *convert)[0] == 0
    assert (target / "notes.txt").read_text() == "mine" and (target / "dataset.json").is_file()
    assert len(list((target / "imagesTr").glob("*.png"))) == len(KVASIR_STEMS)
    status, _, err = run(capsys, *convert)
    assert status == 2 and "already holds 1 file(s) this command would write (dataset.json)" in err
    assert run(capsys, *convert, "--overwrite")[0] == 0 and (target / "notes.txt").read_text() == "mine"
    status, _, err = run(capsys, "data", "convert", "kvasir", source, source / "converted", "--no-progress")
    assert status == 2 and "lies inside source" in err
