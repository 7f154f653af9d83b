"""The ablation of the stitch training (issue 22): its variants' schedules, the distance of the
stitches from their least-squares optimum, the gap closed, and its settings."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from stitch_ops.config import ConfigError, apply_profile, load_section, profile_names
from stitch_ops.stitching import StitchedNetwork, StitchMethod, StitchTrainingConfig, train_stitches
from stitch_ops.stitching.ablation import (AblationParams, Variant, best_position, distance_from_optimum, gap_closed,
                                           least_squares_optimum, stitch_affines, variant_config)
from stitch_ops.stitching.settings import StitchingParams

STITCHING = {"c_parties": ["a", "b"], "methods": ["double_batched", "direct_matching"], "selection": "current_fold",
             "training": {"epochs": 3, "iterations_per_epoch": 5, "init": "default"}}


def _batches(images: torch.Tensor, size: int = 8) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, len(images), size)]


@pytest.fixture
def toy_network(toy_pair) -> StitchedNetwork:
    return StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)


def test_variants_change_only_the_start_or_the_epochs_of_the_pipelines_schedule():
    base = load_section({"stitching": STITCHING}, "stitching", StitchingParams).training_config("direct_matching", 7)
    least_squares = variant_config(base, "least_squares")
    assert least_squares.init == "least_squares" and least_squares.epochs == 3
    assert [variant_config(base, v).epochs for v in ("schedule_x2", "schedule_x4")] == [6, 12]
    for variant in Variant:
        config = variant_config(base, variant)
        # everything else is the pipeline's: method, steps per epoch, lr, seed, batches
        unchanged = {k: v for k, v in config.to_dict().items() if k not in ("init", "epochs")}
        assert unchanged == {k: v for k, v in base.to_dict().items() if k not in ("init", "epochs")}
        assert config.method is StitchMethod.DIRECT_MATCHING and config.seed == 7
    assert variant_config(base, "schedule_x2").init == "default"
    # a pipeline that starts from least squares still gives default-initialised longer schedules
    assert variant_config(variant_config(base, "least_squares"), "schedule_x4").init == "default"
    with pytest.raises(ValueError):
        variant_config(base, "schedule_x3")
    # the pipeline's schedule per method (stitching.training.epochs as a mapping): the method's epochs, scaled
    per_method = {**STITCHING, "training": {**STITCHING["training"],
                                            "epochs": {"double_batched": 8, "direct_matching": 12}}}
    section = load_section({"stitching": per_method}, "stitching", StitchingParams)
    for method, epochs in (("direct_matching", 12), ("double_batched", 8)):
        base = section.training_config(method, 0)
        assert [variant_config(base, v).epochs for v in Variant] == [epochs, 2 * epochs, 4 * epochs]


def test_the_least_squares_variant_starts_at_the_least_squares_optimum(toy_pair, toy_network):
    """Trained for one step at a vanishing learning rate, the least_squares variant is still where it
    started: at distance 0 from the optimum fitted on a copy to the same batches, at every k; the
    default initialisation is far from it."""
    batches = _batches(toy_pair.train_images)
    base = StitchTrainingConfig(StitchMethod.DIRECT_MATCHING, epochs=1, iterations_per_epoch=1, batch_size=8,
                                lr=1e-12, weight_decay=0.0, init="default", init_batches=4, probe_batches=1)
    optimum = least_squares_optimum(toy_network, batches[:4])
    untouched = stitch_affines(toy_network)  # the copy was fitted, not the network
    started = copy.deepcopy(toy_network)
    train_stitches(started, batches, variant_config(base, "least_squares"), progress=False)
    default = copy.deepcopy(toy_network)
    train_stitches(default, batches, base, progress=False)
    for k in range(len(toy_network.matches)):
        assert distance_from_optimum(started, optimum, k) < 1e-6
        assert distance_from_optimum(default, optimum, k) > 0.5
        assert all(torch.equal(m, n) for m, n in zip(stitch_affines(toy_network)[k], untouched[k]))


def test_distance_is_relative_to_the_optimum_and_averaged_over_both_stitches(toy_network):
    optimum = stitch_affines(toy_network)
    assert distance_from_optimum(toy_network, optimum, 0) == 0.0  # W == W_ls
    k = len(optimum) - 1
    doubled = copy.deepcopy(toy_network)
    into_a, into_b = doubled.switches_a[k].stitch, doubled.switches_b[k].stitch
    weight, bias = into_a.affine()
    into_a.set_affine_(2 * weight.detach(), 2 * bias.detach())  # ||2M - M|| / ||M|| = 1 for the stitch into A
    assert distance_from_optimum(doubled, optimum, k) == pytest.approx(0.5)  # (1 + 0) / 2
    weight, bias = into_b.affine()
    into_b.set_affine_(torch.zeros_like(weight), torch.zeros_like(bias))  # ||0 - M|| / ||M|| = 1
    assert distance_from_optimum(doubled, optimum, k) == pytest.approx(1.0)
    assert distance_from_optimum(doubled, optimum, 0) == 0.0  # the other positions are untouched
    with pytest.raises(ValueError, match="k should be a match index"):
        distance_from_optimum(doubled, optimum, len(optimum))


def test_gap_closed_and_the_best_position():
    assert gap_closed(0.87, ensemble=0.84, own=0.90) == pytest.approx(0.5)
    assert gap_closed(0.84, ensemble=0.84, own=0.90) == 0.0
    assert gap_closed(0.93, ensemble=0.84, own=0.90) == pytest.approx(1.5)  # better than the own model
    assert math.isnan(gap_closed(0.9, ensemble=0.9, own=0.85))  # no gap to close
    import pandas as pd

    positions = pd.DataFrame({"k": [0, 3, 5, 7], "dice": [0.5, 0.8, 0.8, 0.7], "hd95": [1.0, 9.0, 2.0, 3.0]})
    assert best_position(positions) == 3  # ties: the lower k (selection by rank would take 5)


def _params(ablation: dict, **stitching) -> dict:
    return {"pairs": ["polyp", "pelvis"], "stitching": {**STITCHING, **stitching, "ablation": ablation}}


def test_ablation_settings_validate_themselves_and_against_the_pipeline(monkeypatch):
    from stitch_ops.config import Params

    good = {"pairs": ["polyp"], "c_parties": ["a"], "method": "direct_matching"}
    section = load_section(_params(good), "stitching.ablation", AblationParams)
    assert section.variants == tuple(Variant) and section.method is StitchMethod.DIRECT_MATCHING
    for bad, message in (({**good, "variants": ["schedule_x3"]}, "must be among"),
                         ({**good, "variants": []}, "distinct variants"),
                         ({**good, "method": "sgd"}, "must be one of"),
                         ({**good, "c_parties": ["c"]}, "must list parties"),
                         ({**good, "pair": ["polyp"]}, "did you mean 'pairs'")):
        with pytest.raises(ConfigError, match=message):
            load_section(_params(bad), "stitching.ablation", AblationParams)

    def params(ablation: dict, **stitching) -> Params:
        raw = _params(ablation, **stitching)
        return Params("quick", 0, ("polyp", "pelvis"), (0,), {}, None, raw)

    assert AblationParams.load(params(good)) == section
    with pytest.raises(ConfigError, match=r"'stitching.ablation.method' names \['double_batched'\]"):
        AblationParams.load(params({**good, "method": "double_batched"}, methods=["direct_matching"]))
    with pytest.raises(ConfigError, match=r"'stitching.ablation.pairs' names \['knee'\]"):
        AblationParams.load(params({**good, "pairs": ["knee"]}))
    with pytest.raises(ConfigError, match=r"c_parties' names \['b'\]"):
        AblationParams.load(params({**good, "c_parties": ["b"]}, c_parties=["a"]))


@pytest.mark.parametrize("profile", profile_names())
def test_every_profile_has_a_valid_ablation(tmp_path, profile):
    from pathlib import Path

    params_file = tmp_path / "params.yaml"
    params_file.write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    section = AblationParams.load(apply_profile(profile, params_file))
    if profile == "smoke":  # CI: one pair, one c, the cheap method (params.yaml says why)
        assert section.pairs == ("polyp",) and section.c_parties == ("a",)
    if profile != "paper":  # laptops too: the cheap method, both pairs and both c in quick (issue 22)
        assert section.method is StitchMethod.DIRECT_MATCHING
    if profile == "quick":
        assert section.pairs == ("polyp", "pelvis") and section.c_parties == ("a", "b")


def test_a_finished_variant_is_reused_only_for_the_same_schedule_and_parents(toy_pair, tmp_path, monkeypatch):
    """The stage's variant folders persist between runs: a variant trained with this schedule between
    these parents is read back; another schedule, other parents (by their weights' hash, or refused by
    the saved network's own fingerprint check) train it again from scratch."""
    from types import SimpleNamespace

    from stitch_ops.stitching import ablation, artifacts
    from stitch_ops.stitching.network import save_stitched_network

    trained = []

    def fake_training(model_a, model_b, images, patch, config, out, progress=True):
        network = StitchedNetwork.from_parents(toy_pair.spec_a, model_a.network, toy_pair.spec_b, model_b.network)
        assert not (out / artifacts.NETWORK_FILE).exists()  # nothing of an earlier training is continued
        save_stitched_network(network, out / artifacts.NETWORK_FILE)
        trained.append(config.epochs)
        return network, ()

    monkeypatch.setattr(ablation, "train_stitch_network", fake_training)
    model_a, model_b = SimpleNamespace(network=toy_pair.network_a), SimpleNamespace(network=toy_pair.network_b)
    config = StitchTrainingConfig(StitchMethod.DIRECT_MATCHING, epochs=2, init="least_squares")
    out = tmp_path / "least_squares"

    def variant(config, parents=("a1", "b1"), b=model_b):
        return ablation._trained_variant(model_a, b, list(parents), None, None, config, out, progress=False)

    variant(config)
    network, _ = variant(config)
    assert trained == [2] and len(network.matches) > 0  # read back, not trained again
    variant(variant_config(config, "schedule_x2"))
    assert trained == [2, 4]
    variant(variant_config(config, "schedule_x2"), parents=("a1", "b2"))
    assert trained == [2, 4, 4]
    other_b = copy.deepcopy(toy_pair.network_b)
    with torch.no_grad():
        next(other_b.parameters()).add_(1.0)
    variant(variant_config(config, "schedule_x2"), parents=("a1", "b2"), b=SimpleNamespace(network=other_b))
    assert trained == [2, 4, 4, 4]
