"""The `stitch-ops` command as a user meets it: help everywhere, clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from stitch_ops.approaches import Approach

REPO = Path(__file__).resolve().parents[1]
APPROACH_CHOICES = f"--approach {{{','.join(Approach)}}}"
"""Every approach of the table, as argparse shows the choices (an added approach among them)."""


def stitch_ops(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitch_ops.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_stage():
    from stitch_ops.cli import STAGES

    result = stitch_ops("--help")
    assert result.returncode == 0
    shown = " ".join(result.stdout.split())  # argparse wraps long lines
    for stage, summary in {**STAGES, "profile": "switch params.yaml to the smoke, quick or paper profile",
                           "repro": "the whole pipeline: dvc repro, independent stages side by side (what `make run` runs)"}.items():
        assert f"{stage} {summary}" in shown, stage


# each subcommand's help must show the options a user needs, with their choices
HELP = [
    (["data", "prepare"], ["--pair PAIR", "--params PARAMS", "--no-progress"]),
    (["data", "split"], ["--pair PAIR"]),
    (["data", "convert"], ["{kvasir,cvc-clinicdb,nifti}", "source", "target", "--labels LABELS",
                           "--video-table VIDEO_TABLE", "--image-size IMAGE_SIZE"]),
    (["nnunet"], ["{plan,train,predict}"]),
    (["nnunet", "plan"], ["--pair PAIR", "--party {a,b}"]),
    (["nnunet", "train"], ["--pair PAIR", "--party {a,b}", "--fold {0,1,2,3,4}"]),
    (["nnunet", "predict"], ["--pair PAIR", APPROACH_CHOICES, "--trained-on TRAINED_ON",
                             "--fold {0,1,2,3,4}", "--sets {test_a,test_b,val}"]),
    (["evaluation"], ["--pair PAIR", APPROACH_CHOICES,
                      "--trained-on TRAINED_ON", "--fold {0,1,2,3,4}"]),
    (["bundle", "export"], ["--model MODEL", "--out OUT", "--pair PAIR", "--approach APPROACH",
                            "--trained-on TRAINED_ON", "--fold FOLD"]),
    (["stitch"], ["--own OWN", "--other OTHER", "--images IMAGES", "--out OUT",
                  "--method {double_batched,direct_matching} how the stitches are trained (default: double_batched)",
                  "--seed SEED", "(default: 0)", "--holdout HOLDOUT", "(default: 0.5)", "--quick", "--overwrite",
                  *[f"{option} {option[2:].upper().replace('-', '_')}" for option in
                    ("--epochs", "--iterations-per-epoch", "--batch-size", "--lr", "--max-positions")]]),
    (["predict"], ["--model MODEL", "--input INPUT", "--out OUT", "--save-probabilities", "--overwrite"]),
    (["bundle", "verify"], ["bundle", "--trust"]),
    (["profile"], ["{paper,quick,smoke}", "smoke: CI"]),
    (["repro"], ["--jobs JOBS", "default 2: one per core of a 2-core machine; 1 = one plain `dvc repro`", "--root ROOT"]),
    (["stitching", "train"], ["--pair PAIR", "--c {a,b}", "--method {double_batched,direct_matching}", "--fold {0,1,2,3,4}"]),
    (["stitching", "select"], ["--pair PAIR", "--c {a,b}", "--method {double_batched,direct_matching}", "--fold {0,1,2,3,4}"]),
    (["baselines"], ["transfer-plans", "joint-plans", "finetune", "ensemble", "federated", "merged", "sweep"]),
    (["report"], ["--pair PAIR", "--index", "--out OUT", "--no-mlflow"]),
    (["dvc-yaml"], ["--check", "--file FILE"]),
    (["stitching", "rq1"], ["--pair PAIR", "--c {a,b}"]),
    (["baselines", "finetune"], ["--pair PAIR", "--trained-on {a_to_b,b_to_a}", "--fold {0,1,2,3,4}", "--base-lr BASE_LR"]),
]


@pytest.mark.parametrize("command, expected", HELP, ids=[" ".join(c) for c, _ in HELP])
def test_every_subcommand_explains_itself(command, expected):
    result = stitch_ops(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: stitch-ops {' '.join(command)}")
    shown = " ".join(result.stdout.split())  # argparse wraps long lines
    missing = [text for text in expected if text not in shown]
    assert not missing, f"`stitch-ops {' '.join(command)} --help` does not show {missing}:\n{result.stdout}"


def test_unknown_pair_is_a_one_line_error():
    result = stitch_ops("data", "prepare", "--pair", "knee")
    assert result.returncode == 2
    assert "pair 'knee' is not in params 'data'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_params_file_is_a_clear_error(tmp_path: Path):
    result = stitch_ops("nnunet", "train", "--pair", "polyp", "--party", "a", "--fold", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "no params file" in result.stderr


def test_stitch_help_shows_every_schedule_default_and_the_trial_run():
    from stitch_ops.commands import SCHEDULE_OPTIONS, stitch_schedules

    default, trial = stitch_schedules()
    shown = " ".join(stitch_ops("stitch", "--help").stdout.split())
    def value(setting: object) -> str:  # epochs may map each method to its own
        if isinstance(setting, dict):
            return ", ".join(f"{epochs} {method}" for method, epochs in setting.items())
        return "every position" if setting is None else str(setting)

    for key in SCHEDULE_OPTIONS:
        assert f"(default: {value(default[key])}; with --quick: {value(trial[key])})" in shown, key
