"""Every model a user has opens as data: results folders, several folds, nnU-Net export zips."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from stitch_ops.bundle.archive import UnsafeArchiveError, safe_extract
from stitch_ops.bundle.sources import open_model
from stitch_ops.nnunet.model import ModelError
from tests.bundle.institutions import Institution, add_validation_summary

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def copy_results(institution: Institution, target: Path) -> Path:
    shutil.copytree(institution.results, target)
    return target


def checkpoint(results: Path, fold: int = 0) -> Path:
    return results / f"fold_{fold}" / "checkpoint_final.pth"


def test_results_folder_opens_without_importing_its_trainer(institution_a: Institution, tmp_path: Path):
    results = copy_results(institution_a, tmp_path / "CustomTrainer__nnUNetPlans__2d")
    saved = torch.load(checkpoint(results), weights_only=False)  # our own file, in the test
    saved["trainer_name"] = "CustomTrainerNobodyElseHas"
    torch.save(saved, checkpoint(results))

    model = open_model(results)
    assert model.folds == [0] and model.configuration == "2d" and model.mirroring_axes == (0, 1)
    state = model.network.state_dict()
    assert state.keys() == saved["network_weights"].keys()
    assert all(torch.equal(state[k], v) for k, v in saved["network_weights"].items())
    # the dataset folder holding it opens too
    assert open_model(tmp_path).folds == [0]


def test_several_folds_are_averaged_like_nnunet(institution_a: Institution, tmp_path: Path):
    results = copy_results(institution_a, tmp_path / institution_a.results.name)
    shutil.copytree(results / "fold_0", results / "fold_1")
    saved = torch.load(checkpoint(results, 1), weights_only=False)
    saved["network_weights"] = {k: v + 0.05 if v.is_floating_point() else v for k, v in saved["network_weights"].items()}
    torch.save(saved, checkpoint(results, 1))

    both, fold0, fold1 = open_model(results), open_model(results, 0), open_model(results, 1)
    assert both.folds == [0, 1] and fold1.folds == [1]
    with torch.no_grad():
        assert torch.allclose(both.network(X), (fold0.network(X) + fold1.network(X)) / 2, atol=1e-6)
        assert not torch.allclose(fold0.network(X), fold1.network(X))
    with pytest.raises(ModelError, match=r"no checkpoint_final.pth for fold\(s\) \[3\]; available folds: \[0, 1\]"):
        open_model(results, 3)


def test_a_zip_from_nnunet_export_opens(institution_a: Institution, tmp_path: Path):
    root = tmp_path / "nnUNet_results"
    dataset = institution_a.results.parent.name
    copy_results(institution_a, root / dataset / institution_a.results.name)
    add_validation_summary(root / dataset / institution_a.results.name)
    env = {**os.environ, "nnUNet_results": str(root), "nnUNet_raw": str(tmp_path), "nnUNet_preprocessed": str(tmp_path)}
    exporter = Path(sys.executable).with_name("nnUNetv2_export_model_to_zip")
    subprocess.run([str(exporter), "-d", dataset, "-o", str(tmp_path / "model.zip"), "-c", "2d",
                    "-tr", "ScheduledTrainer", "-f", "0"], check=True, env=env, capture_output=True)

    from_zip, from_folder = open_model(tmp_path / "model.zip"), open_model(institution_a.results)
    with torch.no_grad():
        assert torch.equal(from_zip.network(X), from_folder.network(X))
    assert from_zip.description.endswith("from model.zip")


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(institution_a: Institution, tmp_path: Path):
    results = copy_results(institution_a, tmp_path / institution_a.results.name)
    sentinel = tmp_path / "sentinel"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {sentinel}",)

    torch.save({"network_weights": Payload()}, checkpoint(results))
    with pytest.raises(ModelError, match=r"is not plain data: loading it would run (posix|os)\.system; refused") as err:
        open_model(results)
    assert "\n" not in str(err.value)
    assert not sentinel.exists()


def test_a_checkpoint_without_weights_is_named(institution_a: Institution, tmp_path: Path):
    results = copy_results(institution_a, tmp_path / institution_a.results.name)
    torch.save({"something": 1}, checkpoint(results))
    with pytest.raises(ModelError, match="is not an nnU-Net checkpoint: it has no 'network_weights'"):
        open_model(results)


def test_plans_naming_foreign_code_are_refused(institution_a: Institution, tmp_path: Path):
    import json

    results = copy_results(institution_a, tmp_path / institution_a.results.name)
    plans = json.loads((results / "plans.json").read_text())
    plans["configurations"]["2d"]["architecture"]["network_class_name"] = "os.system"
    (results / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="names network_class_name='os.system', which is not one of nnU-Net's "
                                         "architectures .*nothing was imported"):
        open_model(results)


def test_zip_slip_is_refused(tmp_path: Path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("bundle/configs/metadata.json", "{}")
        handle.writestr("../escaped.txt", "gotcha")
    with pytest.raises(UnsafeArchiveError, match=r"entry '\.\./escaped.txt' would be written outside the target "
                                                 r"folder \(zip-slip\)"):
        safe_extract(archive, tmp_path / "out" / "inside")
    assert not (tmp_path / "out" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    with pytest.raises(UnsafeArchiveError, match="zip-slip"):
        open_model(archive)


def test_symlinks_are_refused(tmp_path: Path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("bundle/models/model.pt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="entry 'bundle/models/model.pt' is a symbolic link; refused"):
        safe_extract(archive, tmp_path / "out")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "plans.json").symlink_to("/etc/hostname")
    with pytest.raises(UnsafeArchiveError, match=r"plans.json is a symbolic link to /etc/hostname, outside"):
        open_model(folder)


def test_not_a_model(tmp_path: Path):
    with pytest.raises(ModelError, match="no model at .*nothing: expected a bundle"):
        open_model(tmp_path / "nothing")
    with pytest.raises(ModelError, match="is not a model: expected a bundle"):
        open_model(tmp_path)
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(ModelError, match="is a file but not a zip archive"):
        open_model(tmp_path / "file.txt")
