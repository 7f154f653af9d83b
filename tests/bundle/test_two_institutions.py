"""End to end: two institutions in separate folders that share nothing but one file.

Institution A trains an nnU-Net and publishes it (a bundle exported by stitch-ops, or the
zip nnU-Net's own ``nnUNetv2_export_model_to_zip`` writes); then A's folder is deleted, so
B can only use what it received. B verifies it, stitches it with its own nnU-Net results
folder on its own images, gets a verified stitch-ensemble bundle, segments its test images
with it and evaluates them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from stitch_ops.cli import main as cli_main
from stitch_ops.evaluation.evaluate import evaluate_folder
from tests.bundle.institutions import Institution, add_validation_summary, make_institution

pytestmark = pytest.mark.slow

TINY = ["--epochs", "1", "--iterations-per-epoch", "3", "--batch-size", "2", "--max-positions", "2", "--no-progress"]


def receive(outbox_file: Path, b_root: Path, a_root: Path) -> Path:
    """Copy the one shared file into B's inbox and remove everything else A had."""
    inbox = b_root / "inbox"
    inbox.mkdir(parents=True)
    received = Path(shutil.copy(outbox_file, inbox))
    shutil.rmtree(a_root)
    return received


def institution_b_uses(received: Path, b_root: Path, capsys, *, labels: bool) -> Institution:
    """B's whole side: its own model, stitch with the received one, verify, predict, evaluate."""
    b = make_institution("b", b_root / "own", seed=1)
    unlabeled = shutil.copytree(b.raw / "imagesTr", b_root / "unlabeled")  # images only, no labels beside them
    out = b_root / "stitched"
    argv = ["stitch", "--own", str(b.results), "--other", str(received), "--images", str(unlabeled),
            "--out", str(out), *TINY] + (["--labels", str(b.raw / "labelsTr")] if labels else [])
    assert cli_main(argv) == 0, capsys.readouterr().err
    summary = capsys.readouterr().out
    assert ("held-out labelled image(s)" in summary) if labels else ("strategy 3 (no --labels)" in summary)
    assert "\nrecommendation: " in summary

    assert cli_main(["bundle", "verify", str(out / "bundle.zip")]) == 0
    assert "network loads as plain weights" in capsys.readouterr().out
    segmentations = b_root / "segmentations"
    assert cli_main(["predict", "--model", str(out / "bundle.zip"), "--input", str(b.raw / "imagesTs"),
                     "--out", str(segmentations), "--no-progress"]) == 0
    scores = evaluate_folder(segmentations, b.raw / "labelsTs", ".png", pair="polyp", test_party="b",
                             approach="stitch", trained_on="via_b", fold=0, progress=False)
    assert len(scores) == len(list((b.raw / "labelsTs").glob("*.png"))) > 0
    assert scores["dice"].between(0, 1).all()

    with zipfile.ZipFile(out / "bundle.zip") as archive:
        shipped = b"".join(archive.read(name) for name in archive.namelist())
    assert not [case for case in b.case_ids if case.encode() in shipped]  # B's data stays at B too
    return b


def test_a_bundle_from_institution_a_stitched_at_institution_b(tmp_path: Path, capsys):
    started = time.monotonic()
    a_root, b_root = tmp_path / "A", tmp_path / "B"
    a = make_institution("a", a_root, seed=0)
    assert cli_main(["bundle", "export", "--model", str(a.results), "--out", str(a_root / "outbox" / "model_a"),
                     "--trained-on", "institution A's colonoscopy frames"]) == 0
    capsys.readouterr()
    a_cases = a.case_ids
    received = receive(a_root / "outbox" / "model_a.zip", b_root, a_root)
    with zipfile.ZipFile(received) as archive:
        shipped = b"".join(archive.read(name) for name in archive.namelist())
    assert len(a_cases) == 10 and not [case for case in a_cases if case.encode() in shipped]

    assert cli_main(["bundle", "verify", str(received)]) == 0
    institution_b_uses(received, b_root, capsys, labels=False)
    print(f"two-institution test (bundle): {time.monotonic() - started:.0f} s wall time")


def test_an_nnunet_export_zip_from_institution_a_stitched_at_institution_b(tmp_path: Path, capsys):
    started = time.monotonic()
    a_root, b_root = tmp_path / "A", tmp_path / "B"
    a = make_institution("a", a_root, seed=0)
    add_validation_summary(a.results)
    env = {**os.environ, "nnUNet_results": str(a_root / "results"), "nnUNet_raw": str(a_root / "nnUNet_raw"),
           "nnUNet_preprocessed": str(a_root / "nnUNet_preprocessed")}
    subprocess.run([str(Path(sys.executable).with_name("nnUNetv2_export_model_to_zip")), "-d", a.raw.name,
                    "-o", str(a_root / "model_a.zip"), "-c", "2d", "-tr", "ScheduledTrainer", "-f", "0"],
                   check=True, env=env, capture_output=True)
    received = receive(a_root / "model_a.zip", b_root, a_root)

    b = institution_b_uses(received, b_root, capsys, labels=True)
    summary = json.loads((b_root / "stitched" / "summary.json").read_text())
    assert set(summary["held_out_scores"]) == {"own", "other", "plain ensemble", "stitch-ensemble"}
    assert summary["held_out_images"] == round(0.5 * len(list((b.raw / "labelsTr").glob("*.png"))))
    # nnU-Net's zip carries A's dataset_fingerprint.json; B's bundle must not pass it on
    with zipfile.ZipFile(b_root / "stitched" / "bundle.zip") as archive:
        assert not [n for n in archive.namelist() if "fingerprint" in n or n.endswith(".pth")]
    print(f"two-institution test (nnU-Net zip): {time.monotonic() - started:.0f} s wall time")
