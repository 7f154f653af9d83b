"""The bundle definitions' ``configs/metadata.json`` come from one template and their
``configs/train.json`` values from the default profile (``stitch-ops bundle definitions``); the
committed files must be what it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stitch_ops.bundle.__main__ import main as bundle_main
from stitch_ops.bundle.definitions import TEXTS, Plan, metadata, stale
from stitch_ops.bundle.verify import SCHEMA_FILE
from stitch_ops.config import DEFAULT_PROFILE, apply_profile, profile_params
from stitch_ops.outputs import read_json
from stitch_ops.stages.plugin import planned_schedules

REPO = Path(__file__).resolve().parents[2]


def default_plan(root: Path) -> Plan:
    params = profile_params(DEFAULT_PROFILE, root / "params.yaml")
    return Plan(params, planned_schedules(params))


def checkout_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "bundles", tmp_path / "bundles")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_the_committed_definitions_are_what_the_template_writes():
    assert stale(REPO, default_plan(REPO)) == [], "run `stitch-ops bundle definitions` and commit bundles/"
    assert sorted(p.name for p in (REPO / "bundles").iterdir() if p.is_dir()) == sorted(TEXTS)


def test_train_values_are_the_default_profiles_schedules():
    """A hospital that trains from a definition gets the schedule the pipeline's results come from."""
    params = profile_params(DEFAULT_PROFILE, REPO / "params.yaml")
    local = read_json(REPO / "bundles" / "local" / "configs" / "train.json")
    assert (local["schedule"]["epochs"], local["schedule"]["iterations_per_epoch"]) == (
        params.nnunet.epochs, params.nnunet.iterations_per_epoch)
    finetune = planned_schedules(params)["finetune"]
    for approach in ("finetune", "ensemble"):  # a&b→a's train.json runs the fine-tuning
        train = read_json(REPO / "bundles" / approach / "configs" / "train.json")
        assert {key: train[key] for key in finetune} == finetune, approach
    federated = read_json(REPO / "bundles" / "federated" / "configs" / "train.json")
    assert federated["rounds"] == planned_schedules(params)["federated"]["rounds"]


def test_a_changed_setting_makes_the_definitions_stale_but_switching_profile_does_not(tmp_path: Path, capsys):
    root = checkout_copy(tmp_path)
    apply_profile("smoke", root / "params.yaml")  # the values come from the default profile, whatever is active
    assert bundle_main(["definitions", "--check", "--root", str(root)]) == 0
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("base_lr: 0.001 ", "base_lr: 0.002 ", 1))  # no profile sets it
    assert bundle_main(["definitions", "--check", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "finetune/configs/train.json" in err and "ensemble/configs/train.json" in err and "merged" not in err
    assert bundle_main(["definitions", "--root", str(root)]) == 0
    assert read_json(root / "bundles" / "finetune" / "configs" / "train.json")["base_lr"] == 0.002


def test_check_names_an_edited_definition_and_writing_restores_it(tmp_path: Path, capsys):
    checkout_copy(tmp_path)
    edited = tmp_path / "bundles" / "merged" / "configs" / "metadata.json"
    edited.write_text(json.dumps({**metadata("merged"), "name": "edited by hand"}, indent=4) + "\n")
    assert bundle_main(["definitions", "--check", "--root", str(tmp_path)]) == 2
    assert str(edited) in capsys.readouterr().err
    assert bundle_main(["definitions", "--root", str(tmp_path)]) == 0
    assert json.loads(edited.read_text()) == metadata("merged") and stale(tmp_path, default_plan(tmp_path)) == []


def test_every_definition_has_the_specification_keys_the_schema_requires():
    required = json.loads(SCHEMA_FILE.read_text())["required"]
    for approach in TEXTS:
        assert set(required) <= set(metadata(approach)), approach
