"""params.yaml validation and profile switching."""

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from stitch_ops.baselines.config import FinetuneParams, MergedParams
from stitch_ops.config import ConfigError, apply_profile, load_params, load_section, parse_params, profile_names
from stitch_ops.stitching.settings import StitchingParams

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
    (lambda p: p.update(parties=["a", "b", "c"]), "the method is pairwise.*remove the key"),
])
def test_invalid_params_are_refused_with_the_key_named(edit, message):
    raw = raw_params()
    edit(raw)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_missing_params_file_says_where_it_looked(tmp_path: Path):
    with pytest.raises(ConfigError, match="no params file"):
        load_params(tmp_path / "params.yaml")


# ---- load_section: one params section -> a frozen, validated dataclass ----


def test_load_section_builds_a_frozen_record_with_yaml_numbers_and_tuples():
    raw = {"finetune": {"base_lr": "1e-3", "warmup_epochs": 1, "epochs": 3, "iterations_per_epoch": 5},
           "stitching": {"c_parties": ["a"], "methods": ["direct_matching"], "selection": "current_fold",
                         "training": {"epochs": 1}}}
    finetune = load_section(raw, "finetune", FinetuneParams)
    assert finetune == FinetuneParams(base_lr=0.001, warmup_epochs=1, epochs=3, iterations_per_epoch=5)
    stitching = load_section(raw, "stitching", StitchingParams)
    assert stitching.c_parties == ("a",) and stitching.methods == ("direct_matching",)
    with pytest.raises(FrozenInstanceError, match="cannot assign"):
        stitching.max_positions = 3  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "section", "cls", "message"), [
    ({"merged": {"epochs": 2, "iterations_per_epch": 3}}, "merged", MergedParams,
     r"unknown key\(s\) in params section 'merged': 'iterations_per_epch' \(did you mean 'iterations_per_epoch'\?\)"),
    ({"stitching": {"data_parties": ["a"], "methods": ["double_batched"], "selection": "current_fold",
                    "training": {}}}, "stitching", StitchingParams,
     r"'data_parties' \(did you mean 'c_parties'\?\)"),
    ({"stitching": {"methods": ["double_batched"], "selection": "current_fold", "training": {}}},
     "stitching", StitchingParams, r"params section 'stitching' is missing the key\(s\) \['c_parties'\]"),
    ({"mergd": {}}, "merged", MergedParams, r"params.yaml has no section 'merged'.*known: \['mergd'\]"),
    ({"finetune": {"base_lr": "fast"}}, "finetune", FinetuneParams, r"'finetune.base_lr' must be a number"),
    ({"merged": {"epochs": 0}}, "merged", MergedParams, r"'merged.epochs' must be a positive integer"),
    ({"stitching": {"c_parties": ["c"], "methods": ["double_batched"], "selection": "current_fold",
                    "training": {}}}, "stitching", StitchingParams, r"'stitching.c_parties' must list parties"),
])
def test_load_section_names_the_bad_key_and_the_nearest_valid_one(raw, section, cls, message):
    with pytest.raises(ConfigError, match=message):
        load_section(raw, section, cls)


def test_load_section_reads_nested_sections_with_fixed_fields():
    from stitch_ops.config import PairData

    raw = {"data": {"polyp": {"cases": {"a": 12, "b": 6}}}}
    assert load_section(raw, "data.polyp", PairData, name="polyp").cases == {"a": 12, "b": 6}
    with pytest.raises(ConfigError, match=r"data has no section 'polyps' \(did you mean 'polyp'\?\)"):
        load_section(raw, "data.polyps", PairData, name="polyps")


def test_training_plans_state_the_batch_size_the_schedule_trains_with():
    """What a model exports and its budget.json reads: the profile's batch, not the planner's."""
    from stitch_ops.config import NnUNetSchedule

    planned = {"configurations": {"2d": {"batch_size": 68, "patch_size": [64, 64]}}}
    assert NnUNetSchedule(batch_size=4).training_plans(planned)["configurations"]["2d"]["batch_size"] == 4
    assert NnUNetSchedule(batch_size=None).training_plans(planned) == planned
    assert planned["configurations"]["2d"]["batch_size"] == 68  # the planner's plans are left as they are


def test_training_plans_narrow_the_network_by_nnunets_own_rule():
    """base_features / max_features rewrite features_per_stage as the planner would have
    (min(max, base * 2**stage)), and nnU-Net builds that network from the plans."""
    from stitch_ops.config import ConfigError, NnUNetSchedule
    from stitch_ops.nnunet.model import build_network

    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv2d",
                            "kernel_sizes": [[3, 3]] * 4, "strides": [[1, 1]] + [[2, 2]] * 3,
                            "n_conv_per_stage": [2] * 4, "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    planned = {"plans_name": "nnUNetPlans", "configurations": {"2d": {"batch_size": 12, "patch_size": [64, 64],
                                                                       "architecture": arch}}}

    def widths(**knobs):
        plans = NnUNetSchedule(**knobs).training_plans(planned)
        return plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"], plans

    assert widths()[0] == [32, 64, 128, 256]
    assert widths(base_features=16)[0] == [16, 32, 64, 128]
    assert widths(base_features=16, max_features=48)[0] == [16, 32, 48, 48]
    assert arch["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256]  # the planner's plans are left as they are
    network = build_network(widths(base_features=8)[1], {"channel_names": {"0": "x"}, "labels": {"background": 0, "fg": 1}},
                            "2d")
    assert network.encoder.stages[0][0].convs[0].conv.out_channels == 8
    assert network.encoder.stages[-1][0].convs[0].conv.out_channels == 64
    with pytest.raises(ConfigError, match="base_features"):
        NnUNetSchedule(base_features=0)
    with pytest.raises(ConfigError, match="intensity_samples"):
        NnUNetSchedule(intensity_samples=0)
