"""A bundle received from another party is checked before anything in it runs."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from stitch_ops.bundle.verify import BundleError, verify_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    target = tmp_path / "local"
    shutil.copytree(REPO / "bundles" / "local", target)
    return target


def edit_config(bundle: Path, name: str, key: str, value) -> None:
    path = bundle / "configs" / name
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))


def test_the_repository_bundle_verifies(bundle: Path):
    report = verify_bundle(bundle)
    assert report.configs == ["inference.json", "train.json"]
    assert report.code == [] and report.models == []


def test_expressions_are_refused_unless_trusted(bundle: Path):
    edit_config(bundle, "inference.json", "output_dir", "$__import__('os').system('echo pwned')")
    with pytest.raises(BundleError, match="carries code"):
        verify_bundle(bundle)
    assert verify_bundle(bundle, trust=True).code


def test_foreign_targets_are_refused_unless_trusted(bundle: Path):
    edit_config(bundle, "train.json", "training", {"_target_": "subprocess.call", "args": ["ls"]})
    with pytest.raises(BundleError, match="subprocess.call"):
        verify_bundle(bundle)


def test_missing_licence_is_named(bundle: Path):
    (bundle / "LICENSE").unlink()
    with pytest.raises(BundleError, match="LICENSE"):
        verify_bundle(bundle)


def test_broken_metadata_is_refused(bundle: Path):
    (bundle / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        verify_bundle(bundle)


def test_a_model_that_is_code_not_weights_is_refused(bundle: Path):
    model = bundle / "models" / "fold_0"
    model.mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "model.json"):
        (model / name).write_text("{}")
    torch.save({"payload": shutil.rmtree}, model / "weights.pth")  # pickles a callable
    with pytest.raises(BundleError, match="plain weights"):
        verify_bundle(bundle)


def test_not_a_bundle(tmp_path: Path):
    with pytest.raises(BundleError, match="no bundle folder"):
        verify_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(tmp_path)
