"""Every command fails cleanly on bad input: one line on stderr that says what is wrong
and how to fix it, exit status 2, no traceback (``--debug`` shows it).

The table runs each case through ``stitch_ops.cli.main(argv)`` in a scratch folder (the
same code as ``stitch-ops ...`` and ``python -m stitch_ops.<stage> ...``); a few run as
real subprocesses. No case trains anything: each fails before any work starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from stitch_ops import cli
from stitch_ops.bundle.export import write_manifest
from stitch_ops.errors import UserError
from stitch_ops.paths import PairPaths

REPO = Path(__file__).resolve().parents[1]
GARBAGE = b"\x00\x01 this is not what the file claims to be \xff" * 8


# ---- building blocks of the scratch folders ------------------------------------------------

def write_params(root: Path, **changes: Any) -> None:
    """The repository's params.yaml with dotted keys changed (``None`` removes a key)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(key)
        else:
            node[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def write(path: Path, content: bytes | str = GARBAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def png(path: Path, value: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return path


def raw_dataset(root: Path, party: str, pair: str = "polyp") -> Path:
    """A working raw dataset with one test label, enough for the evaluation to start."""
    folder = PairPaths(pair, root).raw_dataset(party)
    write(folder / "dataset.json", '{"channel_names": {"0": "R"}, "labels": {"background": 0, "polyp": 1}, '
                                   '"numTraining": 1, "file_ending": ".png"}')
    png(folder / "labelsTs" / "case_1.png")
    return folder


def local_predictions(root: Path) -> Path:
    """The (empty) prediction folder of party a's basis model, fold 0."""
    folder = PairPaths("polyp", root).predictions("local", "a", 0)
    folder.mkdir(parents=True)
    return folder


def exported_model(folder: Path, *, weights: bytes = GARBAGE, model_json: str = '{"configuration": "2d"}') -> Path:
    """A folder that looks like an exported nnU-Net model, with whatever file contents a case needs."""
    write(folder / "weights.pth", weights)
    write(folder / "plans.json", "{}")
    write(folder / "dataset.json", "{}")
    write(folder / "model.json", model_json)
    return folder


def _weights() -> bytes:
    """A valid, empty state_dict as ``torch.save`` writes it."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({}, buffer)
    return buffer.getvalue()


def basis_models(root: Path) -> None:
    """Valid exports of two tiny nnU-Nets as polyp's basis models of fold 0 (a case that must get past them)."""
    from tests.stitching.tiny_nets import tiny_parent

    from stitch_ops.nnunet.model import export_model

    for seed, party in enumerate("ab"):
        spec, network = tiny_parent(seed, features=(4, 8, 16))
        export_model(network, dict(spec.plans), dict(spec.dataset_json), configuration=spec.configuration,
                     target=root / PairPaths("polyp").model_dir("local", party, 0) / "export", mirroring_axes=None,
                     provenance={"trained_on": party})


def bundle(root: Path, metadata: str | None = None,
           config: str = '{"network": {"_target_": "stitch_ops.bundle.workflows.bundle_network"}}') -> Path:
    folder = root / "received_bundle"
    write(folder / "LICENSE", "MIT")
    write(folder / "docs" / "README.md", "a bundle")
    write(folder / "configs" / "inference.json", config)
    if metadata is not None:
        write(folder / "configs" / "metadata.json", metadata)
    return folder


METADATA = (REPO / "bundles" / "local" / "configs" / "metadata.json").read_text()  # complete, as exported
LOCAL_A = PairPaths("polyp").model_dir("local", "a", 0) / "export"
STITCH_NETWORK = PairPaths("polyp").model_dir("stitch", "via_a_double_batched", 0) / "network" / "stitched_network.pt"


@dataclass
class Case:
    """One bad input: the command line, what to put in the scratch folder first, and the
    phrase the one-line error must contain."""

    argv: list[str]
    phrase: str
    setup: Callable[[Path], object] = field(default=lambda root: write_params(root))


CASES: dict[str, Case] = {
    # ---- task commands: models as people share them ------------------------------------------
    "predict with a model that does not exist": Case(["predict", "--model", "nowhere", "--input", "imgs", "--out", "o"],
                                                     "no model at nowhere: expected a bundle", setup=lambda root: None),
    "predict with a folder that is not a model": Case(
        ["predict", "--model", "empty", "--input", "imgs", "--out", "o"], "empty is not a model: expected a bundle",
        setup=lambda root: (root / "empty").mkdir()),
    "predict with a corrupt zip": Case(["predict", "--model", "m.zip", "--input", "imgs", "--out", "o"],
                                       "m.zip is a file but not a zip archive", setup=lambda root: write(root / "m.zip")),
    "stitch with a folder that is not a model": Case(
        ["stitch", "--own", "empty", "--other", "nowhere", "--images", "imgs", "--out", "o"], "is not a model",
        setup=lambda root: (root / "empty").mkdir()),
    "stitch with an unknown method": Case(
        ["stitch", "--own", "a", "--other", "b", "--images", "i", "--out", "o", "--method", "direct"],
        "argument --method: invalid choice: 'direct'", setup=lambda root: None),
    # ---- params.yaml --------------------------------------------------------------------
    "missing params file": Case(["nnunet", "train", "--pair", "polyp", "--party", "a", "--fold", "0"],
                                "no params file at", setup=lambda root: None),
    "params not YAML": Case(["data", "prepare", "--pair", "polyp"], "is not valid YAML",
                            setup=lambda root: write(root / "params.yaml", "seed: [0,\nfolds: {")),
    "misspelled params key names the nearest": Case(
        ["data", "prepare", "--pair", "polyp"], "'epoch' (did you mean 'epochs'?)",
        setup=lambda root: write_params(root, **{"nnunet.epoch": 3})),
    "missing top-level params key": Case(
        ["stitching", "train", "--pair", "polyp", "--c", "a", "--fold", "0"],
        "missing the top-level key 'folds'", setup=lambda root: write_params(root, folds=None)),
    "out-of-range params value": Case(["nnunet", "train", "--pair", "polyp", "--party", "a", "--fold", "0"],
                                      "'nnunet.epochs' must be a positive integer, got 0",
                                      setup=lambda root: write_params(root, **{"nnunet.epochs": 0})),
    "out-of-range fold in params": Case(["data", "split", "--pair", "polyp"], "fold indices in 0..4",
                                        setup=lambda root: write_params(root, folds=[7])),
    "unknown device in params": Case(["nnunet", "plan", "--pair", "polyp", "--party", "a"],
                                     "'nnunet.device' must be auto, cpu or cuda",
                                     setup=lambda root: write_params(root, **{"nnunet.device": "gpu"})),
    "misspelled baseline params key": Case(
        ["baselines", "finetune", "--pair", "polyp", "--trained-on", "a_to_b", "--fold", "0"],
        "'baselr' (did you mean 'base_lr'?)",
        setup=lambda root: write_params(root, **{"finetune.baselr": 0.001, "finetune.base_lr": None})),
    "out-of-range warm-up": Case(
        ["baselines", "finetune", "--pair", "polyp", "--trained-on", "a_to_b", "--fold", "0"],
        "'finetune.warmup_epochs' must be an integer in [0, epochs",
        setup=lambda root: write_params(root, **{"finetune.warmup_epochs": 9})),
    "base_lr sweep on a route the sweep does not cover": Case(
        ["baselines", "finetune", "--pair", "polyp", "--trained-on", "b_to_a", "--fold", "0"],
        "the sweep does not cover polyp b_to_a: add 'b_to_a' to sweep.routes",
        setup=lambda root: write_params(root, **{"finetune.base_lr": "sweep"})),
    "unknown fine-tuning learning-rate rule": Case(
        ["baselines", "sweep", "--pair", "polyp", "--trained-on", "a_to_b", "--fold", "0"],
        "'finetune.lr_rule' must be null or one of ['smallest_progressing_power_of_ten']",
        setup=lambda root: write_params(root, **{"finetune.lr_rule": "smallest_power"})),
    "misspelled stitch training key": Case(
        ["stitching", "train", "--pair", "polyp", "--c", "a", "--fold", "0"], "'epoch' (did you mean 'epochs'?)",
        setup=lambda root: write_params(root, **{"stitching.training.epoch": 3})),
    "unknown stitch loss term": Case(
        ["stitching", "train", "--pair", "polyp", "--c", "a", "--fold", "0"], "unknown term(s) ['stitched']",
        setup=lambda root: write_params(root, **{"stitching.training.loss_terms": ["stitched"]})),
    "seed not a number": Case(["data", "prepare", "--pair", "polyp"], "'seed' must be a non-negative integer, got 'abc'",
                              setup=lambda root: write_params(root, seed="abc")),
    "missing params section": Case(["baselines", "federated", "--pair", "polyp", "--fold", "0"],
                                   "no section 'federated'", setup=lambda root: write_params(root, federated=None)),
    # ---- names on the command line --------------------------------------------------------
    "unknown command": Case(["train"], "argument COMMAND: invalid choice: 'train' (choose from"),
    "unknown pair": Case(["data", "prepare", "--pair", "knee"], "pair 'knee' is not in params 'data'; known pairs"),
    "unknown pair (bundle export)": Case(["bundle", "export", "--pair", "knee", "--trained-on", "a", "--fold", "0"],
                                         "pair 'knee' is not in params 'data'"),
    "unknown party": Case(["nnunet", "train", "--pair", "polyp", "--party", "c", "--fold", "0"],
                          "argument --party: invalid choice: 'c' (choose from 'a', 'b')"),
    "out-of-range fold": Case(["evaluation", "--pair", "polyp", "--trained-on", "a", "--fold", "9"],
                              "argument --fold: invalid choice: 9 (choose from 0, 1, 2, 3, 4)"),
    "not a number for fold": Case(["nnunet", "predict", "--pair", "polyp", "--trained-on", "a", "--fold", "x"],
                                  "argument --fold: invalid int value: 'x'"),
    "missing option": Case(["nnunet", "train", "--party", "a", "--fold", "0"],
                           "the following arguments are required: --pair"),
    "unknown stitch method": Case(["stitching", "train", "--pair", "polyp", "--c", "a", "--fold", "0",
                                   "--method", "double-batched"], "argument --method: invalid choice: 'double-batched'"),
    "unknown fine-tuning route": Case(["baselines", "finetune", "--pair", "polyp", "--trained-on", "a_to_c",
                                       "--fold", "0"], "invalid choice: 'a_to_c' (choose from 'a_to_b', 'b_to_a')"),
    "unknown approach": Case(["evaluation", "--pair", "polyp", "--approach", "fine-tune", "--trained-on", "a",
                              "--fold", "0"], "argument --approach: invalid choice: 'fine-tune' (choose from 'local'"),
    "unknown trained-on of an approach": Case(
        ["evaluation", "--pair", "polyp", "--approach", "finetune", "--trained-on", "a", "--fold", "0"],
        "no predictions at predictions/polyp/finetune/a/fold_0: run the stage that predicts this model first "
        "(finetune models are trained on ['b_to_a', 'a_to_b'])"),
    "unknown profile": Case(["profile", "fast"], "invalid choice: 'fast' (choose from 'paper', 'quick', 'smoke')"),
    "unknown converter layout": Case(["data", "convert", "kvasir-seg", "src", "Dataset010_X"],
                                     "invalid choice: 'kvasir-seg' (choose from 'kvasir', 'cvc-clinicdb', 'nifti')"),
    # ---- files and folders ------------------------------------------------------------------
    "profile of a missing params file": Case(["profile", "smoke", "--params", "nowhere.yaml"], "no params file at",
                                             setup=lambda root: None),
    "split before prepare": Case(["data", "split", "--pair", "polyp"], "does not exist; run the prepare stage"),
    "prepare from a missing raw dataset": Case(
        ["data", "prepare", "--pair", "polyp"], "raw dataset folder /nowhere/Dataset010_A does not exist",
        setup=lambda root: write_params(root, **{"data.polyp.source": {"a": "/nowhere/Dataset010_A",
                                                                      "b": "/nowhere/Dataset011_B"}})),
    "prepare from a corrupt dataset.json": Case(
        ["data", "prepare", "--pair", "polyp"], "dataset.json is not valid JSON",
        setup=lambda root: (write_params(root, **{"data.polyp.source": {"a": str(root / "A"), "b": str(root / "B")}}),
                            write(root / "A" / "dataset.json", '{"labels": '))),
    "convert a missing folder": Case(["data", "convert", "kvasir", "nowhere", "Dataset010_X"], "nowhere/images not found"),
    "convert an empty image folder": Case(["data", "convert", "kvasir", "kv", "Dataset010_X"], "holds no images",
                                          setup=lambda root: ((root / "kv" / "images").mkdir(parents=True),
                                                              (root / "kv" / "masks").mkdir())),
    "convert a corrupt JPEG": Case(["data", "convert", "kvasir", "kv", "Dataset010_X"], "kv/images/f1.jpg",
                                   setup=lambda root: (write(root / "kv" / "images" / "f1.jpg"),
                                                       write(root / "kv" / "masks" / "f1.jpg"))),
    "convert with a too small image size": Case(["data", "convert", "kvasir", "kv", "Dataset010_X", "--image-size", "3"],
                                                "--image-size must be at least 16 pixels, got 3",
                                                setup=lambda root: (write(root / "kv" / "images" / "f1.jpg"),
                                                                    write(root / "kv" / "masks" / "f1.jpg"))),
    "convert NIfTI without labels": Case(["data", "convert", "nifti", "imgs", "Dataset010_X"], "needs --labels"),
    "convert a corrupt NIfTI": Case(["data", "convert", "nifti", "imgs", "Dataset010_X", "--labels", "labs"],
                                    "cannot read",
                                    setup=lambda root: (write(root / "imgs" / "c1.nii.gz"),
                                                        write(root / "labs" / "c1.nii.gz"))),
    "plan before split": Case(["nnunet", "plan", "--pair", "polyp", "--party", "a"], "split"),
    "train before plan": Case(["nnunet", "train", "--pair", "polyp", "--party", "a", "--fold", "0"],
                              "run the plan stage"),
    "predict with no model": Case(["nnunet", "predict", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
                                  "no model folder at models/polyp/local/a/fold_0/export"),
    "a folder that is not an nnU-Net model": Case(
        ["nnunet", "predict", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
        "is not an exported nnU-Net model: missing ['weights.pth', 'plans.json', 'dataset.json', 'model.json']",
        setup=lambda root: (write_params(root), write(root / LOCAL_A / "stitch_ensemble.pt"))),
    "corrupt model checkpoint": Case(["nnunet", "predict", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
                                     "weights.pth as plain weights",
                                     setup=lambda root: (write_params(root), exported_model(root / LOCAL_A))),
    "model.json without a configuration": Case(
        ["nnunet", "predict", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
        "model.json names no nnU-Net configuration",
        setup=lambda root: (write_params(root), exported_model(root / LOCAL_A, weights=_weights(), model_json="{}"))),
    "corrupt model JSON": Case(["nnunet", "predict", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
                               "model.json is not valid JSON",
                               setup=lambda root: (write_params(root), exported_model(root / LOCAL_A, model_json="{"))),
    "stitch without basis models": Case(["stitching", "train", "--pair", "polyp", "--c", "a", "--fold", "0"],
                                        "no model folder at models/polyp/local/a/fold_0/export"),
    "corrupt stitched network": Case(["stitching", "select", "--pair", "polyp", "--c", "a", "--fold", "0"],
                                     "as a saved stitched network",
                                     setup=lambda root: (write_params(root), basis_models(root),
                                                         write(root / STITCH_NETWORK))),
    "evaluate before split": Case(["evaluation", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
                                  "dataset.json", setup=lambda root: (write_params(root), local_predictions(root))),
    "evaluate with a corrupt dataset.json": Case(
        ["evaluation", "--pair", "polyp", "--trained-on", "a", "--fold", "0"], "dataset.json is not valid JSON",
        setup=lambda root: (write_params(root), local_predictions(root),
                            write(PairPaths("polyp", root).raw_dataset("a") / "dataset.json", "{"))),
    "evaluate missing predictions": Case(["evaluation", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
                                         "predictions missing in predictions/polyp/local/a/fold_0/test_a",
                                         setup=lambda root: (write_params(root), raw_dataset(root, "a"),
                                                             local_predictions(root))),
    "evaluate a corrupt prediction": Case(
        ["evaluation", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
        "cannot read predictions/polyp/local/a/fold_0/test_a/case_1.png as a label image",
        setup=lambda root: (write_params(root), raw_dataset(root, "a"),
                            write(root / PairPaths("polyp").predictions("local", "a", 0) / "test_a" / "case_1.png"))),
    "ensemble before split": Case(["baselines", "ensemble", "--pair", "polyp", "--fold", "0"],
                                  "dataset.json is missing; run the stage that makes it first"),
    "transfer plans before plan": Case(["baselines", "transfer-plans", "--pair", "polyp"], "is missing"),
    "ablation outside its pairs": Case(["ablation", "--pair", "pelvis", "--c", "b", "--fold", "0"],
                                       "the ablation runs on pairs",
                                       setup=lambda root: write_params(root, **{"stitching.ablation.pairs": ["polyp"]})),
    "code records outside the checkout": Case(["code-digests"], "run from the checkout whose stitch_ops package"),
    "report of an unknown pair": Case(["report", "--pair", "knee", "--no-mlflow"], "unknown pair(s) ['knee']"),
    "report before any results": Case(["report", "--pair", "polyp", "--no-mlflow"],
                                      "pair 'polyp' has no results yet (no cases.csv under metrics/polyp/)"),
    "MLflow UI without a store": Case(["tracking", "ui", "--port", "5999"], "no MLflow store at mlflow.db",
                                      setup=lambda root: None),
    "verify a missing bundle": Case(["bundle", "verify", "nowhere"], "no bundle folder at nowhere",
                                    setup=lambda root: None),
    "a bundle without metadata": Case(["bundle", "verify", "received_bundle"],
                                      "is not a MONAI bundle: missing ['configs/metadata.json']",
                                      setup=lambda root: bundle(root)),
    "a bundle with corrupt metadata": Case(["bundle", "verify", "received_bundle"], "metadata.json is not valid JSON",
                                           setup=lambda root: bundle(root, metadata='{"version": ')),
    "a bundle that runs code": Case(["bundle", "verify", "received_bundle"], "pass --trust only if you trust",
                                    setup=lambda root: bundle(root, METADATA, '{"x": "$__import__(\'os\')"}')),
    "a bundle whose models are not checked": Case(
        ["bundle", "verify", "received_bundle"], "ships models/ but no manifest.sha256",
        setup=lambda root: exported_model(bundle(root, METADATA) / "models" / "fold_0")),
    "a bundle with a corrupt model": Case(
        ["bundle", "verify", "received_bundle"], "weights.pth as plain weights",
        setup=lambda root: (exported_model(bundle(root, METADATA) / "models" / "fold_0"),
                            write_manifest(root / "received_bundle"))),
    "export a bundle with no model": Case(["bundle", "export", "--pair", "polyp", "--trained-on", "a", "--fold", "0"],
                                          "no model at models/polyp/local/a/fold_0/export: expected a bundle"),
}


def run_in(root: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    cwd = Path.cwd()
    os.chdir(root)
    try:
        try:
            status = cli.main(argv)
        except SystemExit as exit_:  # argparse exits by itself
            status = exit_.code
    finally:
        os.chdir(cwd)
    return status, capsys.readouterr().err


def assert_one_clean_line(status: int, stderr: str, phrase: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert status == 2, stderr
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("stitch-ops"), errors
    assert phrase in errors[0], f"expected {phrase!r} in: {errors[0]}"


def test_the_table_has_at_least_30_cases_across_every_command():
    commands = {case.argv[0] for case in CASES.values()}
    assert len(CASES) >= 30
    assert set(cli.TASKS) | set(cli.STAGES) | {"profile"} <= commands


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_with_one_clear_line(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    case = CASES[name]
    case.setup(tmp_path)
    status, stderr = run_in(tmp_path, case.argv, capsys)
    assert_one_clean_line(status, stderr, case.phrase)


# ---- every subcommand, including ones added later ---------------------------------------------

def _command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of a top-level command: a task command's ``<task>_parser()`` in
    ``stitch_ops.commands``, or a stage module's ``build_parser()``."""
    if command in cli.TASKS:
        from stitch_ops import commands

        return getattr(commands, f"{command}_parser")()
    return cli.command_module(command).build_parser()


def _subcommands() -> list[list[str]]:
    """``[command, subcommand]`` for every subcommand of every command (``[command]`` when
    it has none), found from the commands' parsers."""
    found = []
    for command in [*cli.TASKS, *cli.STAGES]:
        parser = _command_parser(command)
        subs = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        found += [[command, name] for action in subs for name in action.choices] if subs else [[command]]
    return found


def _required_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Plausible values for the required arguments: the first choice, 0, or a path that does not exist."""
    argv: list[str] = []
    for action in parser._actions:
        if not (action.required or not action.option_strings) or isinstance(action, argparse._SubParsersAction):
            continue
        if action.nargs == 0:
            continue
        value = str(next(iter(action.choices))) if action.choices else "0" if action.type is int else "polyp" \
            if action.dest == "pair" else "nowhere"
        argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


def _subparser(path: list[str]) -> argparse.ArgumentParser:
    parser = _command_parser(path[0])
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and len(path) > 1:
            return action.choices[path[1]]
    return parser


@pytest.mark.parametrize("command", _subcommands(), ids=" ".join)
def test_every_subcommand_outside_a_checkout_fails_cleanly(command: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    """Run with its required arguments in an empty folder (no params.yaml, no data): each
    subcommand stops with one line, status 2 (no params file, or the missing input)."""
    argv = command + _required_arguments(_subparser(command))
    status, stderr = run_in(tmp_path, argv, capsys)
    assert_one_clean_line(status, stderr, "")


# ---- the traceback only with --debug; the entry points as real processes ----------------------

def test_debug_raises_the_error_with_its_traceback(tmp_path: Path):
    os.chdir(tmp_path)
    try:
        with pytest.raises(UserError, match="no params file at"):
            cli.main(["nnunet", "train", "--pair", "polyp", "--party", "a", "--fold", "0", "--debug"])
    finally:
        os.chdir(REPO)


def _process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("args", "phrase"), [
    (["-m", "stitch_ops.cli", "nnunet", "train", "--pair", "polyp", "--party", "a", "--fold", "0"], "no params file"),
    (["-m", "stitch_ops.nnunet", "train", "--pair", "polyp", "--party", "c", "--fold", "0"],
     "invalid choice: 'c' (choose from 'a', 'b')"),
    (["-m", "stitch_ops.bundle", "verify", "nowhere"], "no bundle folder at nowhere"),
    (["-m", "stitch_ops.evaluation", "--pair", "polyp", "--trained-on", "a", "--fold", "0"], "no params file"),
    (["-m", "stitch_ops.stages.stitch_train", "--pair", "polyp", "--c", "a", "--fold", "0"], "no params file"),
    (["-m", "stitch_ops.stages.finetune", "--pair", "polyp", "--trained-on", "a_to_c", "--fold", "0"],
     "invalid choice: 'a_to_c'"),
], ids=["stitch-ops", "python -m nnunet", "python -m bundle", "python -m evaluation", "python -m stages.stitch_train",
        "python -m stages.finetune"])
def test_entry_points_as_processes(args: list[str], phrase: str, tmp_path: Path):
    result = _process(args, tmp_path)
    assert_one_clean_line(result.returncode, result.stderr, phrase)


def test_debug_shows_the_traceback_in_a_process(tmp_path: Path):
    result = _process(["-m", "stitch_ops.bundle", "verify", "nowhere", "--debug"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "BundleError: no bundle folder at nowhere" in result.stderr


def test_every_entry_point_is_a_command_checked_here():
    """A module runnable as ``python -m stitch_ops....`` must be one of the commands above
    (so the table and the every-subcommand check reach it), or be added to them."""
    runnable = {".".join(path.relative_to(REPO).with_suffix("").parts)
                for path in (REPO / "stitch_ops").rglob("*.py")
                if '__name__ == "__main__"' in path.read_text()}
    modules = [cli.command_module(command) for command in cli.STAGES]
    # a stage's own entry module (python -m stitch_ops.stages.<stage>) is its package's subcommand
    offered = {command.run.__module__ for module in modules for command in getattr(module, "COMMANDS", ())}
    checked = {"stitch_ops.cli"} | {module.__name__ for module in modules} | offered
    assert runnable <= checked, f"entry points no command reaches: {sorted(runnable - checked)}"
