"""Shared plans, and the pooled dataset of ``a+b``: no test case is ever trained on."""

from __future__ import annotations

import json

import pytest
from tests.baselines.tiny_pair import PAIR, TINY, TinyPair

from stitch_ops.baselines.merged import TestCaseLeakError, check_no_test_cases, merge_splits
from stitch_ops.baselines.plans import combine_fingerprints
from stitch_ops.config import PARTIES
from stitch_ops.paths import dataset_name


def test_combined_fingerprint_concatenates_cases_and_pools_statistics():
    fp = {"spacings": [[1.0, 1.0]], "shapes_after_crop": [[4, 4]], "median_relative_size_after_cropping": 1.0,
          "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -2.0,
                                                                "max": 2.0, "percentile_00_5": -1.0,
                                                                "percentile_99_5": 1.0}}}
    other = {**fp, "spacings": [[2.0, 2.0]] * 3, "shapes_after_crop": [[8, 8]] * 3,
             "foreground_intensity_properties_per_channel": {"0": {"mean": 4.0, "std": 1.0, "median": 4.0, "min": 3.0,
                                                                   "max": 9.0, "percentile_00_5": 3.0,
                                                                   "percentile_99_5": 5.0}}}
    combined = combine_fingerprints([fp, other])
    assert combined["spacings"] == [[1.0, 1.0]] + [[2.0, 2.0]] * 3
    stats = combined["foreground_intensity_properties_per_channel"]["0"]
    assert stats["mean"] == pytest.approx(3.0)  # (1 * 0 + 3 * 4) / 4 cases
    assert stats["std"] == pytest.approx((1.0 + (0.25 * 9 + 0.75 * 1)) ** 0.5)  # within + between variance
    assert (stats["min"], stats["max"]) == (-2.0, 9.0)


def test_merge_splits_is_the_union_of_each_fold():
    a = [{"train": ["a1", "a2"], "val": ["a3"]}, {"train": ["a3"], "val": ["a1", "a2"]}]
    b = [{"train": ["b1"], "val": ["b2"]}, {"train": ["b2"], "val": ["b1"]}]
    assert merge_splits([a, b]) == [{"train": ["a1", "a2", "b1"], "val": ["a3", "b2"]},
                                    {"train": ["a3", "b2"], "val": ["a1", "a2", "b1"]}]


def test_joint_plans_are_shared_by_both_parties(tiny_pair: TinyPair, joint):
    plans = [json.loads((joint[p] / "nnUNetPlans.json").read_text()) for p in PARTIES]
    assert plans[0]["configurations"]["2d"] == plans[1]["configurations"]["2d"]
    assert [p["dataset_name"] for p in plans] == [dataset_name(PAIR, p) for p in PARTIES]


def test_merged_training_never_sees_a_test_case(tiny_pair: TinyPair, joint):
    from stitch_ops.nnunet.env import NnUNetRoots, configure

    merged = joint["merged"]
    tests = tiny_pair.test_cases()
    check_no_test_cases(merged, tests, "2d")
    configure(NnUNetRoots(preprocessed=merged.parent, results=tiny_pair.root / "results_merged"), training=True)
    from stitch_ops.nnunet.trainer import ScheduledTrainer

    plans = json.loads((merged / "nnUNetPlans.json").read_text())
    plans["continue_training"] = True
    trainer = ScheduledTrainer(plans=plans, configuration="2d", fold=0,
                               dataset_json=json.loads((merged / "dataset.json").read_text()), device=__import__("torch").device("cpu"))
    trainer.apply_schedule(TINY)
    train_keys, val_keys = trainer.do_split()
    all_test = {c for cases in tests.values() for c in cases}
    assert not (set(train_keys) | set(val_keys)) & all_test
    party_splits = [json.loads((tiny_pair.paths.raw_dataset(p) / "splits_final.json").read_text())[0] for p in PARTIES]
    assert sorted(train_keys) == sorted(c for s in party_splits for c in s["train"])
    assert sorted(val_keys) == sorted(c for s in party_splits for c in s["val"])
    assert {k.split("_")[1] for k in train_keys} == set(PARTIES)  # both parties' data, pooled


def test_a_leaked_test_case_is_refused(tiny_pair: TinyPair, joint, tmp_path):
    import shutil

    copy = tmp_path / joint["merged"].name
    shutil.copytree(joint["merged"], copy)
    splits = json.loads((copy / "splits_final.json").read_text())
    leaked = tiny_pair.test_cases()["b"][0]
    splits[0]["train"].append(leaked)
    (copy / "splits_final.json").write_text(json.dumps(splits))
    with pytest.raises(TestCaseLeakError, match=leaked):
        check_no_test_cases(copy, tiny_pair.test_cases(), "2d")
