"""params.yaml validation and profile switching."""

from pathlib import Path

import pytest
import yaml

from stitch_ops.config import ConfigError, apply_profile, load_params, parse_params, profile_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text())
    return target


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid_and_default_to_quick():
    params = load_params(REPO / "params.yaml")
    assert params.profile == "quick"
    assert params.pairs == ("polyp", "pelvis")
    assert params.nnunet.configuration == "2d"


def test_every_profile_sets_the_same_keys():
    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    overlays = {name: yaml.safe_load((REPO / "stitch_ops" / "profiles" / f"{name}.yaml").read_text())
                for name in profile_names()}
    assert set(overlays) == {"smoke", "quick", "paper"}
    key_sets = {name: keys(tree) for name, tree in overlays.items()}
    assert key_sets["smoke"] == key_sets["quick"] == key_sets["paper"]


def test_apply_profile_rewrites_values_and_keeps_comments(params_file: Path):
    params = apply_profile("smoke", params_file)
    assert params.profile == "smoke" and params.nnunet.epochs == 2
    assert "# Every knob of the stitch_ops pipeline" in params_file.read_text()
    back = apply_profile("quick", params_file)
    assert params_file.read_text() == (REPO / "params.yaml").read_text()
    assert back.nnunet.epochs == load_params(REPO / "params.yaml").nnunet.epochs


def test_paper_profile_keeps_nnunet_default_schedule(params_file: Path):
    params = apply_profile("paper", params_file)
    assert (params.nnunet.epochs, params.nnunet.iterations_per_epoch) == (1000, 250)
    assert params.folds == (0, 1, 2, 3, 4)


def test_unknown_profile_suggests_the_nearest(params_file: Path):
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        apply_profile("smok", params_file)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["nnunet"].update(epochs=0), "nnunet.epochs' must be a positive integer"),
    (lambda p: p["nnunet"].update(epoch=3), "did you mean 'epochs'"),
    (lambda p: p.update(folds=[5]), "fold indices in 0..4"),
    (lambda p: p.update(pairs=["polyp", "knee"]), "no entry under 'data'"),
    (lambda p: p["data"]["polyp"].update(cases={"a": 10}), "needs a count for each party"),
    (lambda p: p["data"]["polyp"].update(source={"a": "x"}), "one raw dataset per party"),
    (lambda p: p["data"].update(knee={"source": "synthetic"}), "generator only knows"),
    (lambda p: p["nnunet"].update(device="tpu"), "auto, cpu or cuda"),
])
def test_invalid_params_are_refused_with_the_key_named(edit, message):
    raw = raw_params()
    edit(raw)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_missing_params_file_says_where_it_looked(tmp_path: Path):
    with pytest.raises(ConfigError, match="no params file"):
        load_params(tmp_path / "params.yaml")
