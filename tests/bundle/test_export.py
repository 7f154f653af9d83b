"""Exported bundles: MONAI-complete metadata with the versions that ran, MONAI's own
verify_net_in_out on every kind of network, and no patient-level data in any file."""

from __future__ import annotations

import filecmp
import json
import shutil
import zipfile
from importlib.metadata import version
from pathlib import Path

import monai
import numpy
import pytest
import torch

import stitch_ops
from stitch_ops.bundle.__main__ import main as bundle_main
from stitch_ops.bundle.export import ExportInfo, export_bundle
from stitch_ops.bundle.sources import open_model
from stitch_ops.bundle.verify import SCHEMA_FILE, verify_bundle
from stitch_ops.config import load_params
from stitch_ops.nnunet.model import NnUNetModel
from stitch_ops.outputs import read_json, write_json
from tests.bundle.institutions import Institution

KINDS = ("nnunet", "folds", "ensemble", "stitch_ensemble")


def _model(kind: str, a: Institution, b: Institution, scratch: Path) -> NnUNetModel:
    from stitch_ops.stitching import ParentSpec, StitchedNetwork, TwoModelEnsemble, extract_stitch_ensemble

    own, other = open_model(a.results), open_model(b.results)
    if kind == "nnunet":
        return own
    if kind == "folds":
        results = scratch / a.results.name
        shutil.copytree(a.results, results)
        shutil.copytree(results / "fold_0", results / "fold_1")
        return open_model(results)
    if kind == "ensemble":
        spec = {"kind": "ensemble", "members": [ParentSpec.of_model(m).to_dict() for m in (own, other)]}
        return NnUNetModel(TwoModelEnsemble(own.network, other.network), own.plans, own.dataset_json,
                           own.configuration, None, "plain ensemble", spec)
    network = StitchedNetwork.from_models(own, other)
    ensemble = extract_stitch_ensemble(network, len(network.matches) // 2)
    return NnUNetModel(ensemble, own.plans, own.dataset_json, own.configuration, None, "stitch-ensemble",
                       {"kind": "stitch_ensemble", "ensemble": ensemble.description.to_dict()})


@pytest.fixture(scope="module")
def exported(institution_a: Institution, institution_b: Institution,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    info = ExportInfo(approach="local", trained_on="party a's synthetic frames", eval_metrics={"val/dice": 0.5})
    return {kind: export_bundle(_model(kind, institution_a, institution_b, root), root / kind, info)
            for kind in KINDS}


def test_metadata_holds_every_mandatory_key_with_the_versions_that_ran(exported: dict[str, Path]):
    meta = json.loads((exported["nnunet"] / "configs" / "metadata.json").read_text())
    assert set(json.loads(SCHEMA_FILE.read_text())["required"]) <= set(meta)
    assert (meta["monai_version"], meta["pytorch_version"], meta["numpy_version"]) == (
        monai.__version__, torch.__version__, numpy.__version__)
    assert meta["required_packages_version"] == {"nnunetv2": version("nnunetv2"), "stitch_ops": stitch_ops.__version__}
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 3 and image["channel_def"] == {"0": "R", "1": "G", "2": "B"}
    assert image["spacing"] == [1.0, 1.0] and image["spatial_shape"] == ["8*n", "8*n"]  # 2 x total stride 4
    assert pred["num_channels"] == 2 and pred["channel_def"] == {"0": "background", "1": "polyp"}
    assert meta["eval_metrics"] == {"val/dice": 0.5}
    readme = (exported["nnunet"] / "docs" / "README.md").read_text()
    assert "party a's synthetic frames" in readme and "folds [0]" in readme and "val/dice" in readme


@pytest.mark.parametrize("kind", KINDS)
def test_monai_verify_net_in_out_passes(exported: dict[str, Path], kind: str):
    from monai.bundle import verify_net_in_out

    bundle = exported[kind]
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), device="cpu",
                      bundle_root=str(bundle))
    report = verify_bundle(bundle.with_name(bundle.name + ".zip"))
    assert report.output_shape == (1, 2, 8, 8) and report.files_checked == 8


def test_no_patient_level_data_leaves(exported: dict[str, Path], institution_a: Institution,
                                      institution_b: Institution):
    case_ids = institution_a.case_ids + institution_b.case_ids
    assert len(case_ids) == 20
    forbidden = [c.encode() for c in case_ids] + [b"splits_final", b"dataset_fingerprint", b"shapes_after_crop"]
    for bundle in exported.values():
        files = {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
        with zipfile.ZipFile(bundle.with_name(bundle.name + ".zip")) as archive:
            files |= {f"zip:{name}": archive.read(name) for name in archive.namelist()}
        assert not [name for name in files if name.endswith((".png", ".nii.gz", ".pkl", ".npz", ".csv"))]
        leaks = [(name, word) for name, data in files.items() for word in forbidden if word in data]
        assert leaks == []


def test_export_command_writes_folder_and_zip(institution_a: Institution, tmp_path: Path, capsys):
    assert bundle_main(["export", "--model", str(institution_a.results), "--out", str(tmp_path / "mine"),
                        "--trained-on", "our synthetic frames"]) == 0
    assert "MONAI bundle of nnU-Net" in capsys.readouterr().out
    assert verify_bundle(tmp_path / "mine.zip").metadata["data_source"] == "our synthetic frames"
    assert not list(tmp_path.glob("*.partial*"))


@pytest.mark.parametrize("approach, trained_on, kind", [("local", "a", "nnunet"),
                                                        ("ensemble", "a_and_b", "ensemble")])
def test_pipeline_export_of_an_approach(institution_a: Institution, institution_b: Institution, tmp_path: Path,
                                        monkeypatch, approach: str, trained_on: str, kind: str):
    repo = Path(__file__).resolve().parents[2]
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(repo / "bundles", tmp_path / "bundles")  # the definitions, as in the repository
    for party, institution in (("a", institution_a), ("b", institution_b)):
        shutil.copytree(institution.root / "results" / "export", tmp_path / "models" / "polyp" / "local" / party
                        / "fold_0" / "export")
    # what the basis model's training recorded (its budget): the bundle's train.json must say it
    write_json(tmp_path / "metrics" / "polyp" / "local" / "a" / "fold_0" / "budget.json",
               {"epochs": 3, "iterations": 21, "samples_seen": 84, "wall_time_s": 1.0, "iterations_per_epoch": 7})
    monkeypatch.chdir(tmp_path)
    assert bundle_main(["export", "--pair", "polyp", "--approach", approach, "--trained-on", trained_on,
                        "--fold", "0", "--no-zip"]) == 0
    bundle = tmp_path / "exports" / "polyp" / f"{approach}_{trained_on}_fold0"
    report = verify_bundle(bundle)
    assert report.metadata["stitch_ops"]["kind"] == kind and report.output_shape == (1, 2, 8, 8)
    assert not bundle.with_name(bundle.name + ".zip").exists()
    params = load_params(tmp_path / "params.yaml")
    schedule = read_json(bundle / "configs" / "train.json")["schedule"] if approach == "local" else None
    if schedule is not None:  # the budget's schedule, the profile's configuration and learning rate
        assert (schedule["epochs"], schedule["iterations_per_epoch"]) == (3, 7)
        assert (schedule["configuration"], schedule["initial_lr"]) == (params.nnunet.configuration,
                                                                       params.nnunet.initial_lr)
    else:  # an ensemble trained nothing: its definition's fine-tuning config, at the profile's values
        train = read_json(bundle / "configs" / "train.json")
        assert train["seed"] == params.seed and train["source_initial_lr"] == params.nnunet.initial_lr
    # one model's weights are the export's file itself (a hard link: stored once); an ensemble's are its own
    export = tmp_path / "models" / "polyp" / "local" / "a" / "fold_0" / "export" / "weights.pth"
    assert (bundle / "models" / "model.pt").samefile(export) == (approach == "local")


def test_a_bundle_of_an_exported_model_holds_its_weights_file_byte_for_byte(
        institution_a: Institution, institution_b: Institution, tmp_path: Path):
    """The bundle's model.pt is a byte copy of the export's weights (an nnU-Net export's
    weights.pth, a stitch-ensemble's stitch_ensemble.pt)."""
    from stitch_ops.stitching import StitchedNetwork, extract_stitch_ensemble
    from stitch_ops.stitching.artifacts import ENSEMBLE_FILE, export_ensemble

    own, other = open_model(institution_a.results), open_model(institution_b.results)
    stitch_export = tmp_path / "stitch_export"
    export_ensemble(extract_stitch_ensemble(StitchedNetwork.from_models(own, other), 1), own, stitch_export, k=1,
            method="direct_matching", c="a", selection="current_fold")
    for model, weights in ((institution_a.root / "results" / "export", "weights.pth"), (stitch_export, ENSEMBLE_FILE)):
        bundle = tmp_path / "bundles" / model.name
        assert bundle_main(["export", "--model", str(model), "--out", str(bundle), "--no-zip"]) == 0
        assert filecmp.cmp(bundle / "models" / "model.pt", model / weights, shallow=False), model.name
        assert not (bundle / "models" / "model.pt").samefile(model / weights)  # a copy: the user's file may change
        assert verify_bundle(bundle).output_shape == (1, 2, 8, 8)


def test_monai_bundle_run_segments_with_an_exported_bundle(exported: dict[str, Path], institution_a: Institution,
                                                          tmp_path: Path):
    from monai.bundle import run

    bundle, images = exported["stitch_ensemble"], institution_a.raw / "imagesTs"
    run(run_id="run", config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
        input_dir=str(images), output_dir=str(tmp_path / "seg"), progress=False, device="cpu")
    assert sorted(p.name for p in (tmp_path / "seg").glob("*.png")) == sorted(
        p.name[: -len("_0000.png")] + ".png" for p in images.glob("*.png"))
