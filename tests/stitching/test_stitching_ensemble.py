"""Stitch-ensembles: exactness, output convention, standalone extraction, save/load, nnU-Net's predictor."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from tiny_nets import tiny_parent

from stitch_ops.stitching import (
    StitchedNetwork,
    TwoModelEnsemble,
    extract_stitch_ensemble,
    load_stitch_ensemble,
    log_mean_softmax,
    save_stitch_ensemble,
)


@pytest.fixture(scope="module")
def two_copies_of_a():
    """A combined with an exact copy of itself, every stitch the identity."""
    spec, network = tiny_parent(seed=0, features=(4, 8, 16), patch_size=(32, 32))
    combined = StitchedNetwork.from_parents(spec, network, spec, network)
    for switch in combined.switches():
        switch.stitch.set_identity_()
    return spec, network, combined


def test_identity_stitches_between_two_copies_give_a_at_every_position(two_copies_of_a):
    _, network, combined = two_copies_of_a
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.log_softmax(network(x), dim=1)
        for k in range(len(combined.matches)):
            output = extract_stitch_ensemble(combined, k)(x)
            assert torch.allclose(output, expected, atol=1e-6), f"position {k} ({combined.matches[k].node_a})"
            assert torch.equal(output.argmax(1), expected.argmax(1))


def test_ensembles_return_the_log_of_the_averaged_softmax():
    generator = torch.Generator().manual_seed(0)
    logits_a, logits_b = torch.randn(2, 3, 4, 4, generator=generator) * 5, torch.randn(2, 3, 4, 4, generator=generator) * 5
    averaged = (logits_a.softmax(1) + logits_b.softmax(1)) / 2
    assert torch.allclose(log_mean_softmax(logits_a, logits_b).softmax(1), averaged, atol=1e-6)
    net_a, net_b = torch.nn.Conv2d(1, 3, 1), torch.nn.Conv2d(1, 3, 1)
    x = torch.randn(2, 1, 4, 4, generator=generator)
    expected = (net_a(x).softmax(1) + net_b(x).softmax(1)) / 2
    assert torch.allclose(TwoModelEnsemble(net_a, net_b)(x).exp(), expected, atol=1e-6)


def test_extracted_ensemble_holds_only_the_stitches_of_its_match(two_copies_of_a):
    combined = copy.deepcopy(two_copies_of_a[2])  # changed below: the module's fixture stays as it is
    ensemble = extract_stitch_ensemble(combined, 3)
    stitch_keys = sorted(key for key in ensemble.state_dict() if key.startswith("switch"))
    assert stitch_keys == [f"switch_{side}.stitch.layer.{p}" for side in "ab" for p in ("bias", "weight")]
    assert ensemble.parent_a is not combined.parent_a  # its own copy
    with torch.no_grad():
        combined.switches_a[3].stitch.layer.weight.add_(1.0)
    assert not torch.equal(ensemble.switch_a.stitch.layer.weight, combined.switches_a[3].stitch.layer.weight)
    with pytest.raises(IndexError, match="match k should be in"):
        extract_stitch_ensemble(combined, len(combined.matches))


def test_save_and_load_with_weights_only(tmp_path, two_copies_of_a):
    _, _, combined = two_copies_of_a
    ensemble = extract_stitch_ensemble(combined, 7)
    with torch.no_grad():
        ensemble.switch_b.stitch.layer.weight.mul_(0.5)
    save_stitch_ensemble(ensemble, tmp_path / "ensemble.pt")
    weights = torch.load(tmp_path / "ensemble.pt", weights_only=True)
    assert weights.keys() == ensemble.state_dict().keys()  # a plain state_dict, what a bundle's model.pt holds
    description = json.loads((tmp_path / "ensemble.json").read_text())
    assert description["k"] == 7 and description["match"]["node_a"] == combined.matches[7].node_a
    assert description["stitch_b"] == [ensemble.switch_b.stitch.in_channels, ensemble.switch_b.stitch.out_channels, 4]
    loaded = load_stitch_ensemble(tmp_path / "ensemble.pt")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), ensemble(x))


def test_a_foreign_description_naming_other_code_is_refused(tmp_path, two_copies_of_a):
    _, _, combined = two_copies_of_a
    save_stitch_ensemble(extract_stitch_ensemble(combined, 0), tmp_path / "ensemble.pt")
    description = json.loads((tmp_path / "ensemble.json").read_text())
    architecture = description["parents"][0]["plans"]["configurations"]["2d"]["architecture"]
    architecture["arch_kwargs"]["nonlin"] = "os.system"
    (tmp_path / "ensemble.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="names nonlin='os.system'.*data, not code"):
        load_stitch_ensemble(tmp_path / "ensemble.pt")


def test_weights_without_their_description_are_refused(tmp_path, two_copies_of_a):
    _, _, combined = two_copies_of_a
    save_stitch_ensemble(extract_stitch_ensemble(combined, 0), tmp_path / "ensemble.pt")
    (tmp_path / "ensemble.json").unlink()
    with pytest.raises(ValueError, match="is not a saved stitch-ensemble: its description ensemble.json is missing"):
        load_stitch_ensemble(tmp_path / "ensemble.pt")


def _predict(spec, model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation and probabilities from nnU-Net's sliding-window predictor, as for any nnU-Net model."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    plans = PlansManager(dict(spec.plans))
    predictor.manual_initialization(
        model, plans, plans.get_configuration(spec.configuration), [model.state_dict()], dict(spec.dataset_json), "nnUNetTrainer", None
    )
    return predictor.predict_single_npy_array(image, {"spacing": [999.0, 1.0, 1.0]}, None, None, True)


def test_stitch_ensemble_runs_through_nnunet_predictor_like_its_parent(two_copies_of_a):
    """Sliding windows over a 48x40 image; the predictor's float16 logit buffer bounds the agreement."""
    spec, network, combined = two_copies_of_a
    image = np.random.default_rng(0).normal(size=(1, 1, 48, 40)).astype(np.float32)
    segmentation_a, probabilities_a = _predict(spec, network, image)
    segmentation_e, probabilities_e = _predict(spec, extract_stitch_ensemble(combined, 10), image)
    assert probabilities_e.shape == (2, 1, 48, 40)
    np.testing.assert_allclose(probabilities_e, probabilities_a, atol=1e-2)
    assert (segmentation_e == segmentation_a).mean() > 0.99


@pytest.fixture(scope="module")
def two_different_parents():
    """Two differently shaped parents (other widths, other depth, other weights) joined by
    random, non-identity stitches."""
    spec_a, network_a = tiny_parent(seed=0, features=(4, 8, 16), patch_size=(32, 32))
    spec_b, network_b = tiny_parent(seed=1, features=(6, 12, 16, 24), patch_size=(32, 32))
    combined = StitchedNetwork.from_parents(spec_a, network_a, spec_b, network_b)
    generator = torch.Generator().manual_seed(3)
    for switch in combined.switches():
        weight, bias = switch.stitch.affine()
        switch.stitch.set_affine_(torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5,
                                  torch.randn(bias.shape, generator=generator) * 0.1)
    return network_a, network_b, combined


def test_stitch_ensemble_of_different_parents_averages_each_stitched_parent(two_different_parents):
    """At every k: the softmax average of A with the stitch b_k→a_k averaged in at a_k (the
    combined network, one switch on average, output A) and of B likewise at b_k."""
    from stitch_ops.stitching.network import Parent, SwitchConfiguration
    from stitch_ops.stitching.switch import SwitchMode

    network_a, network_b, combined = two_different_parents
    combined = copy.deepcopy(combined)  # reconfigured below: the module's fixture stays as it is
    n = len(combined.matches)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    plain = TwoModelEnsemble(network_a, network_b)(x)

    def stitched_parent(k: int, output: Parent) -> torch.Tensor:
        modes = [SwitchMode.ORIGINAL] * n
        averaged = tuple(SwitchMode.AVERAGE if i == k else m for i, m in enumerate(modes))
        switches_a, switches_b = (averaged, tuple(modes)) if output is Parent.A else (tuple(modes), averaged)
        combined.configure(SwitchConfiguration(switches_a, switches_b, output))
        return combined(x)

    with torch.no_grad():
        for k in range(n):
            logits_a, logits_b = stitched_parent(k, Parent.A), stitched_parent(k, Parent.B)
            expected = torch.log((logits_a.softmax(1) + logits_b.softmax(1)) / 2)
            output = extract_stitch_ensemble(combined, k)(x)
            assert torch.allclose(output, expected, atol=1e-5), f"position {k} ({combined.matches[k].node_a})"
            assert not torch.allclose(output, plain, atol=1e-4), f"the stitches at k={k} changed nothing"


def test_stitch_ensemble_at_the_first_match_by_hand(two_different_parents):
    """Where both parents' first feature maps are matched, the averaged stitched map can be
    written by hand: a_0' = (a_0 + W_ba b_0 + c_ba) / 2, and A continues from a_0'."""
    network_a, network_b, combined = two_different_parents
    ensemble = extract_stitch_ensemble(combined, 0)
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        (a_0, b_0), = combined.matched_maps(x)[:1]
        w_ba, c_ba = combined.switches_a[0].stitch.affine()
        w_ab, c_ab = combined.switches_b[0].stitch.affine()
        by_hand_a = (a_0 + torch.einsum("oc,bchw->bohw", w_ba, b_0) + c_ba.view(1, -1, 1, 1)) / 2
        by_hand_b = (b_0 + torch.einsum("oc,bchw->bohw", w_ab, a_0) + c_ab.view(1, -1, 1, 1)) / 2
        assert not torch.allclose(by_hand_a, a_0, atol=1e-3)
        stitched_a = ensemble.switch_a(a_0, b_0).map
        stitched_b = ensemble.switch_b(b_0, a_0).map
        torch.testing.assert_close(stitched_a, by_hand_a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stitched_b, by_hand_b, atol=1e-5, rtol=1e-5)


class _NearTie(torch.nn.Module):
    """An ensemble's output where the two classes' averaged probabilities differ by 2e-4: the
    pixels a stitch moves are like this."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.tensor([0.5 - 1e-4, 0.5 + 1e-4]).view(1, 2, *([1] * (x.ndim - 2)))
        return torch.log(probabilities).expand(x.shape[0], 2, *x.shape[2:]).clone()


def test_ensembles_accumulate_in_float32_so_near_ties_keep_their_class(two_copies_of_a):
    """The pipeline's predictor keeps class 1 everywhere; nnU-Net's own half-precision
    accumulator rounds the two classes to a tie in many pixels and hands them to background."""
    from stitch_ops.nnunet.model import NnUNetModel
    from stitch_ops.nnunet.predict import predictor_for

    spec = two_copies_of_a[0]
    image = np.zeros((1, 1, 48, 40), dtype=np.float32)
    model = NnUNetModel(_NearTie(), dict(spec.plans), dict(spec.dataset_json), spec.configuration)
    predictor = predictor_for(model, torch.device("cpu"), mirroring=False)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(image))
    assert logits.dtype == torch.float32 and logits.shape == (2, 1, 48, 40)
    assert (logits.argmax(0) == 1).all()
    assert (predictor.predict_single_npy_array(image, {"spacing": [999.0, 1.0, 1.0]}, None, None, False) == 1).all()
    half_precision, _ = _predict(spec, _NearTie(), image)
    assert (half_precision == 0).mean() > 0.1, (half_precision == 0).mean()  # 0.22 here
