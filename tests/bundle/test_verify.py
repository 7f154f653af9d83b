"""A bundle received from another party is checked before anything in it runs; each
refusal is its own one-line error."""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from stitch_ops.bundle.__main__ import main as bundle_main
from stitch_ops.bundle.export import ExportInfo, export_bundle, write_manifest
from stitch_ops.bundle.sources import open_model
from stitch_ops.bundle.verify import BundleError, verify_bundle
from tests.bundle.institutions import Institution

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    target = tmp_path / "local"
    shutil.copytree(REPO / "bundles" / "local", target)
    return target


@pytest.fixture(scope="module")
def trained_bundle(institution_a: Institution, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(open_model(institution_a.results), tmp_path_factory.mktemp("trained") / "model",
                         ExportInfo(), make_zip=False)


@pytest.fixture
def received(trained_bundle: Path, tmp_path: Path) -> Path:
    return shutil.copytree(trained_bundle, tmp_path / "received")


def edit_config(bundle: Path, name: str, key: str, value) -> None:
    path = bundle / "configs" / name
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))


def refused_in_one_line(bundle: Path, capsys, *extra: str) -> str:
    """Run `stitch-ops bundle verify` like a user: exit status 2 and one line on stderr."""
    assert bundle_main(["verify", str(bundle), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stitch-ops bundle verify: error: ")
    return err


def test_the_repository_bundle_verifies(bundle: Path):
    report = verify_bundle(bundle)
    assert report.configs == ["inference.json", "train.json"]
    assert report.code == [] and report.models == []


def test_a_trained_bundle_verifies(received: Path, capsys):
    assert bundle_main(["verify", str(received)]) == 0
    assert "8 file(s) match the manifest" in capsys.readouterr().out


def test_a_tampered_file_is_refused(received: Path, capsys):
    weights = received / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"models/model.pt does not match its SHA-256 in manifest.sha256"):
        verify_bundle(received)
    refused_in_one_line(received, capsys)


def test_an_added_file_is_refused(received: Path):
    (received / "models" / "extra.py").write_text("print('hi')")
    with pytest.raises(BundleError, match=r"models/extra.py is not in manifest.sha256"):
        verify_bundle(received)


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(received: Path, tmp_path: Path, capsys):
    sentinel = tmp_path / "sentinel"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {sentinel}",)

    torch.save({"weight": Payload()}, received / "models" / "model.pt")
    write_manifest(received)  # a consistent forgery: the manifest alone cannot catch it
    with pytest.raises(BundleError, match=r"model.pt is not plain data: loading it would run (posix|os)\.system"):
        verify_bundle(received)
    err = refused_in_one_line(received, capsys)
    assert "not plain data" in err and "PyTorch" not in err
    assert not sentinel.exists()


def test_expressions_are_refused_unless_trusted(bundle: Path, capsys):
    edit_config(bundle, "inference.json", "output_dir", "$__import__('os').system('echo pwned')")
    with pytest.raises(BundleError, match=r"carries code that would run when its configs are parsed "
                                          r"\(inference.json#output_dir: \$__import__"):
        verify_bundle(bundle)
    refused_in_one_line(bundle, capsys)
    assert verify_bundle(bundle, trust=True).code


def test_foreign_targets_are_refused_unless_trusted(bundle: Path):
    edit_config(bundle, "train.json", "training", {"_target_": "subprocess.call", "args": ["ls"]})
    with pytest.raises(BundleError, match=r"carries code .*train.json#training#_target_: subprocess.call"):
        verify_bundle(bundle)
    edit_config(bundle, "train.json", "training", {"_target_": "torch.nn.Identity"})  # torch, but not a workflow
    with pytest.raises(BundleError, match=r"train.json#training#_target_: torch.nn.Identity"):
        verify_bundle(bundle)
    edit_config(bundle, "train.json", "training", {"_target_": "stitch_ops.bundle.workflows.train_on_own_data"})
    assert verify_bundle(bundle).code == []


def test_a_missing_mandatory_key_is_named(received: Path, capsys):
    path = received / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    del meta["numpy_version"]
    path.write_text(json.dumps(meta))
    write_manifest(received)
    with pytest.raises(BundleError, match=r"lacks mandatory key\(s\) \['numpy_version'\] of the MONAI bundle"):
        verify_bundle(received)
    refused_in_one_line(received, capsys)


def test_metadata_not_matching_the_schema_is_named(bundle: Path):
    edit_config(bundle, "metadata.json", "version", "one")
    with pytest.raises(BundleError, match=r"metadata.json: version: 'one' does not match"):
        verify_bundle(bundle)


def test_zip_slip_is_refused(trained_bundle: Path, tmp_path: Path, capsys):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in trained_bundle.rglob("*"):
            if path.is_file():
                handle.write(path, f"model/{path.relative_to(trained_bundle).as_posix()}")
        handle.writestr("model/../../escaped.txt", "gotcha")
    with pytest.raises(BundleError, match=r"entry 'model/\.\./\.\./escaped.txt' would be written outside"):
        verify_bundle(archive)
    refused_in_one_line(archive, capsys)
    assert not (tmp_path / "escaped.txt").exists()


def test_a_symlink_entry_or_link_outside_is_refused(received: Path, tmp_path: Path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("model/LICENSE")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(BundleError, match="entry 'model/LICENSE' is a symbolic link; refused"):
        verify_bundle(archive)
    (received / "LICENSE").unlink()
    (received / "LICENSE").symlink_to("/etc/hostname")
    with pytest.raises(BundleError, match=r"LICENSE is a symbolic link to /etc/hostname, outside"):
        verify_bundle(received)


def test_a_network_not_matching_its_declared_output_is_refused(received: Path):
    path = received / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    path.write_text(json.dumps(meta))
    write_manifest(received)
    with pytest.raises(BundleError, match=r"maps \(1, 3, 8, 8\) to \(1, 2, 8, 8\), but metadata.json declares "
                                          r"\(1, 3, 8, 8\)"):
        verify_bundle(received)


def test_missing_licence_is_named(bundle: Path):
    (bundle / "LICENSE").unlink()
    with pytest.raises(BundleError, match="missing \\['LICENSE'\\]"):
        verify_bundle(bundle)


def test_broken_metadata_is_refused(bundle: Path):
    (bundle / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(BundleError, match="metadata.json is not valid JSON .*ask its sender"):
        verify_bundle(bundle)


def test_models_without_a_manifest_are_refused(bundle: Path):
    (bundle / "models" / "fold_0").mkdir(parents=True)
    with pytest.raises(BundleError, match="ships models/ but no manifest.sha256"):
        verify_bundle(bundle)


def test_not_a_bundle(tmp_path: Path):
    with pytest.raises(BundleError, match="no bundle folder at .*expected a MONAI bundle"):
        verify_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(tmp_path)
