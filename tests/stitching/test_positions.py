"""Scoring many positions with shared prefixes gives what scoring each position alone gives.

The shared path (:class:`PositionEnsembles`, :func:`score_positions`) against the path it
replaced (one :func:`extract_stitch_ensemble` per k, predicted and scored on its own), on
two tiny nnU-Nets trained on the toy task with least-squares stitches.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stitch_ops.nnunet.model import NnUNetModel
from stitch_ops.stitching import StitchedNetwork, extract_stitch_ensemble, fit_stitches_least_squares
from stitch_ops.stitching.positions import PositionEnsembles

IDENTITY = {"pair": "toy", "test_party": "val", "approach": "stitch", "trained_on": "toy", "fold": 0}


@pytest.fixture(scope="module")
def combined(toy_pair) -> StitchedNetwork:
    network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
    fit_stitches_least_squares(network, toy_pair.train_images[:32].split(16))
    return network


def test_every_position_equals_its_own_stitch_ensemble(combined, toy_pair):
    positions = list(range(len(combined.matches)))[::-1]  # any order: the output follows it
    ensembles = PositionEnsembles(combined, positions).eval()
    x = toy_pair.val_images[:3]
    with torch.no_grad():
        stacked = ensembles(x)
        assert stacked.shape == (3, 2 * len(positions), 32, 32)
        outputs = ensembles.split(stacked)
        plain = torch.log_softmax(toy_pair.network_a(x), 1)
        for k, output in zip(positions, outputs):
            expected = extract_stitch_ensemble(combined, k).eval()(x)
            torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5, msg=f"position {k}")
        assert not torch.allclose(outputs[-1], outputs[0], atol=1e-3), "the first and last positions should differ"
        assert not torch.allclose(outputs[-1], plain, atol=1e-3)


def test_shared_network_runs_each_parent_once_and_per_position_only_the_layers_after_its_stitch(combined):
    """Layer count of the shared network over every position: each parent's layers once (the
    last match feeds the segmentation layers, so no layer is dead) plus, per position, the
    layers after ``a_k`` in A and after ``b_k`` in B (in a U-Net all of them depend on the stitch)."""
    def layers(graph) -> list[str]:
        return [node.name for node in graph.nodes if node.op == "call_module"]

    def after(module, name: str) -> int:
        names = [node.name for node in module.graph.nodes]
        return sum(node.op == "call_module" for node in list(module.graph.nodes)[names.index(name) + 1:])

    parent_a, parent_b = combined.parent_a, combined.parent_b
    positions = range(len(combined.matches))
    shared = [name for name in layers(PositionEnsembles(combined, positions)._program.graph) if "switch" not in name]
    parents = len(layers(parent_a.graph)) + len(layers(parent_b.graph))
    expected = parents + sum(after(parent_a, m.node_a) + after(parent_b, m.node_b) for m in combined.matches)
    assert len(shared) == expected
    assert expected < 0.7 * len(combined.matches) * parents  # against one full pair of parents per position


def test_positions_are_checked(combined):
    with pytest.raises(ValueError, match="distinct matches k"):
        PositionEnsembles(combined, [1, 1])
    with pytest.raises(ValueError, match="distinct matches k, at least one"):
        PositionEnsembles(combined, [])
    with pytest.raises(IndexError, match=r"positions should be in \[0, "):
        PositionEnsembles(combined, [len(combined.matches)])


@pytest.fixture(scope="module")
def validation_folder(tmp_path_factory, toy_pair) -> Path:
    """Six toy validation cases as an nnU-Net raw folder (``imagesTr/*_0000.png``, ``labelsTr/*.png``),
    40 x 36 pixels so that the sliding window overlaps 32 x 32 patches."""
    root = tmp_path_factory.mktemp("toy_raw")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    from tiny_nets import toy_segmentation

    images, labels = toy_segmentation(6, 40, torch.Generator().manual_seed(7))
    for i, (image, label) in enumerate(zip(images[:, 0, :, :36], labels[:, :, :36])):
        pixels = ((image.clamp(-1, 2) + 1) / 3 * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "imagesTr" / f"case{i}_0000.png")
        Image.fromarray(label.to(torch.uint8).numpy()).save(root / "labelsTr" / f"case{i}.png")
    return root


def _model(network: torch.nn.Module, toy_pair, description: str) -> NnUNetModel:
    spec = toy_pair.spec_a
    return NnUNetModel(network, copy.deepcopy(spec.plans), copy.deepcopy(spec.dataset_json), spec.configuration,
                       None, description)


def test_shared_scoring_through_nnunet_matches_scoring_each_position_alone(combined, toy_pair, validation_folder,
                                                                           tmp_path, monkeypatch):
    """Through nnU-Net's preprocessing, sliding window and export: the same probabilities, Dice
    and HD95 per case at every position; in two passes when memory allows fewer positions at once."""
    from stitch_ops.nnunet.predict import predict_preprocessed, predict_preprocessed_stacked, preprocess_cases
    from stitch_ops.stitching import scoring

    n = len(combined.matches)
    positions = scoring.evaluated_positions(n, 5)
    own = _model(toy_pair.network_a, toy_pair, "own")
    cases = preprocess_cases(own, validation_folder / "imagesTr", progress=False)
    assert cases[0].data.shape[-2:] == (40, 36)
    labels = validation_folder / "labelsTr"

    stacked = _model(PositionEnsembles(combined, positions), toy_pair, "positions")
    folders = [tmp_path / "shared" / f"k{k}" for k in positions]
    predict_preprocessed_stacked(stacked, cases, folders, device="cpu", progress=False)
    per_pass = (40 * 36 * 2 * 4) * 2  # two positions' stacked logits (float32) per pass
    monkeypatch.setattr(scoring, "POSITIONS_MEMORY", per_pass)
    shared = scoring.score_positions(combined, positions, own, cases, labels, tmp_path / "scored", "cpu", **IDENTITY)
    assert sorted(shared) == positions

    dice_by_position = []
    for k, folder in zip(positions, folders):
        alone = _model(extract_stitch_ensemble(combined, k), toy_pair, f"k={k}")
        predict_preprocessed(alone, cases, tmp_path / "alone" / f"k{k}", device="cpu", progress=False)
        for case in cases:
            expected = np.load(tmp_path / "alone" / f"k{k}" / f"{case.case}.npz")["probabilities"]
            np.testing.assert_allclose(np.load(folder / f"{case.case}.npz")["probabilities"], expected, atol=1e-6,
                                       err_msg=f"k={k}, {case.case}")
        scores = scoring.score_on_validation(alone, cases, labels, tmp_path / "scores_alone" / f"k{k}", "cpu",
                                              **IDENTITY)
        assert len(scores) == len(cases)
        np.testing.assert_allclose(shared[k]["dice"].to_numpy(), scores["dice"].to_numpy(), atol=1e-9)
        np.testing.assert_allclose(shared[k]["hd95"].to_numpy(), scores["hd95"].to_numpy(), atol=1e-9)
        assert list(shared[k]["case"]) == list(scores["case"])
        dice_by_position.append(scores["dice"].mean())
    assert max(dice_by_position) > 0.5, f"the toy parents should segment the discs: {dice_by_position}"
    assert len(set(np.round(dice_by_position, 6))) > 1, "the positions should not all score the same"


def test_stacked_prediction_needs_distinct_outputs(toy_pair, tmp_path):
    from stitch_ops.nnunet.predict import predict_preprocessed_stacked

    with pytest.raises(ValueError, match="distinct output folders"):
        predict_preprocessed_stacked(_model(toy_pair.network_a, toy_pair, "a"), [], [tmp_path / "x", tmp_path / "x"])


def test_select_takes_the_reference_and_the_selected_validation_predictions_from_the_scoring_run(
        combined, toy_pair, validation_folder, tmp_path, monkeypatch):
    """What ``select`` no longer computes apart gives the files and scores it gave: the no-stitch
    reference scored in the positions' run (two passes here) as ``score_on_validation`` scored
    ``TwoModelEnsemble`` on its own, and every position's validation predictions exported from
    the run's logits (three cases kept, the others predicted again) as ``predict_folder`` wrote them."""
    import pickle

    import pandas as pd

    from stitch_ops.nnunet.predict import predict_folder, predict_preprocessed, preprocess_cases
    from stitch_ops.stitching import TwoModelEnsemble, scoring

    n = len(combined.matches)
    positions = scoring.evaluated_positions(n, 5)
    own = _model(toy_pair.network_a, toy_pair, "own")
    images, labels = validation_folder / "imagesTr", validation_folder / "labelsTr"
    cases = preprocess_cases(own, images, progress=False)
    monkeypatch.setattr(scoring, "POSITIONS_MEMORY", (40 * 36 * 2 * 4) * 3)  # 3 stacked logits per pass
    per_case = 40 * 36 * 2 * 4 * (len(positions) + 1)  # every position's logits and the reference's
    run = scoring.score_positions_and_reference(combined, positions, own, cases, labels, tmp_path / "scored", "cpu",
                                                 identity=IDENTITY, no_stitch=True, keep_logits=3 * per_case + 1)
    assert sorted(run.positions) == positions

    reference = _model(TwoModelEnsemble(combined.parent_a, combined.parent_b), toy_pair, "no-stitch reference")
    alone = scoring.score_on_validation(reference, cases, labels, tmp_path / "reference_alone", "cpu", **IDENTITY)
    pd.testing.assert_frame_equal(run.no_stitch, alone)
    without = scoring.score_positions(combined, positions, own, cases, labels, tmp_path / "without", "cpu", **IDENTITY)
    for k in positions:
        pd.testing.assert_frame_equal(run.positions[k], without[k])

    for k in positions:
        assert len(run.logits[k]) == 3, f"k={k}: three cases kept, three predicted again"
        ensemble = _model(extract_stitch_ensemble(combined, k), toy_pair, f"k={k}")
        before = predict_folder(ensemble, images, tmp_path / "before" / f"k{k}", device="cpu", progress=False)
        after = predict_preprocessed(ensemble, cases, tmp_path / "after" / f"k{k}", device="cpu", progress=False,
                                     logits=run.logits[k])
        names = sorted(p.name for p in before.iterdir())
        assert names == sorted(p.name for p in after.iterdir()) and len(names) == 3 * len(cases)
        for name in names:
            old, new = before / name, after / name
            if name.endswith(".npz"):  # the zip's time stamps differ; the arrays may not
                assert np.array_equal(np.load(old)["probabilities"], np.load(new)["probabilities"]), (k, name)
            elif name.endswith(".pkl"):
                assert pickle.loads(old.read_bytes()).keys() == pickle.loads(new.read_bytes()).keys()
                assert repr(pickle.loads(old.read_bytes())) == repr(pickle.loads(new.read_bytes())), (k, name)
            else:
                assert old.read_bytes() == new.read_bytes(), (k, name)
