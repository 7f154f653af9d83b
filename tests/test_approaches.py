"""The one table of approaches (stitch_ops/approaches.py): slugs, shorthands, perspectives."""

from __future__ import annotations

import pytest

from stitch_ops import approaches
from stitch_ops.approaches import Approach, StitchMethod


def test_model_ids_name_the_paper_approaches():
    assert approaches.finetuned("b").tags() == {"perspective": "b", "shorthand": "a→b"}
    assert approaches.finetuned("b").trained_on == "a_to_b"
    assert approaches.finetuned("b").models_used == ("a",)
    assert approaches.ensemble_finetuned("a").trained_on == "a_and_b_to_a"
    assert approaches.ensemble_finetuned("a").shorthand == "a&b→a"
    assert {m.shorthand for m in (approaches.ensemble(), approaches.federated(), approaches.merged())} == {
        "a&b", "a‖b", "a+b"}
    assert [m for m in approaches.all_models() if m.online] == [approaches.federated()]
    assert approaches.lookup("federated", "a_fed_b") == approaches.federated()
    assert approaches.lookup("stitch", "a_b_c") is None
    assert approaches.finetuning_party("b_to_a") == "a"
    with pytest.raises(ValueError, match="a_to_b"):
        approaches.finetuning_party("a")


def test_stitch_ensembles_are_named_after_c_and_the_method():
    model = approaches.stitch_ensemble("b", StitchMethod.DIRECT_MATCHING)
    assert (model.approach, model.trained_on, model.shorthand, model.perspective) == (
        Approach.STITCH, "via_b_direct_matching", "a←[b]→b", "b")
    assert approaches.stitch_ensemble("a", "double_batched").trained_on == "via_a_double_batched"
    with pytest.raises(ValueError, match="c .* must be one of"):
        approaches.stitch_ensemble("c", "double_batched")
    with pytest.raises(ValueError, match="'by_hand' is not a valid StitchMethod"):
        approaches.stitch_ensemble("a", "by_hand")


def test_every_model_has_its_own_slugs_and_a_known_approach():
    models = approaches.all_models()
    assert len({(m.approach, m.trained_on) for m in models}) == len(models)
    assert {m.approach for m in models} == set(Approach)
    # Table 2's basis models and baselines (an added approach adds to them)
    assert {"a", "b", "a_to_b", "b_to_a", "a_and_b", "a_and_b_to_a", "a_and_b_to_b", "a_fed_b", "a_plus_b"} <= {
        m.trained_on for m in models if m.approach != Approach.STITCH}
    # stitch-ensembles: 2 c x 2 methods x 2 parent variants (basis models, a←[a]→b→a) x 3 selection
    # strategies = 24; no-stitch references: 2 c x 2 parent variants = 4
    assert sum(m.approach == Approach.STITCH for m in models) == 24 + 4
    assert approaches.FINETUNE_SLUGS == ("a_to_b", "b_to_a")


@pytest.mark.parametrize(("approach", "trained_on", "party"), [
    ("local", "b", "b"), ("finetune", "a_to_b", "b"), ("ensemble_finetuned", "a_and_b_to_a", "a"),
    ("stitch", "via_a_double_batched", "a"), ("ensemble", "a_and_b", None), ("merged", "a_plus_b", None),
    ("stitch", "via_z_unknown", None),
])
def test_validation_cases_are_the_perspective_party_s(approach, trained_on, party):
    assert approaches.validation_party(approach, trained_on) == party


def test_stitch_models_of_issue_7_are_in_the_table():
    mirrored = approaches.stitch_ensemble("b", "direct_matching", finetuned=True)
    assert approaches.stitch_ensemble("a", "double_batched", finetuned=True).shorthand == "a←[a]→b→a"
    assert (mirrored.shorthand, mirrored.trained_on, mirrored.perspective) == (
        "b←[b]→a→b", "via_b_direct_matching_finetuned", "b")
    strategy = approaches.lookup("stitch", "via_a_double_batched_rule_of_thumb")
    assert strategy is not None and strategy.tags()["selection"] == "rule_of_thumb"
    assert approaches.lookup("stitch", "via_a_double_batched").tags()["selection"] == "current_fold"
    assert approaches.lookup("stitch", "via_b_direct_matching_finetuned_all_folds").selection == "all_folds"
    reference = approaches.lookup("stitch", "no_stitch_via_a_finetuned")
    assert reference == approaches.no_stitch("a", finetuned=True) and reference.perspective == "a"
    assert "selection" not in reference.tags()
    assert approaches.no_stitch("b").trained_on == "no_stitch_via_b"
    slugs = [(m.approach, m.trained_on) for m in approaches.all_models()]
    assert len(slugs) == len(set(slugs))
    with pytest.raises(ValueError, match="selection must be one of"):
        approaches.stitch_ensemble("a", "double_batched", selection="best_on_test")

