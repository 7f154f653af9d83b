"""A real two-party federated run on Ray with tiny data: a party crash fails the round
cleanly, and training resumes from the last completed round."""

from __future__ import annotations

import json

import pytest
import torch
from tests.baselines.tiny_pair import PAIR, TINY, TinyPair

from stitch_ops.config import PARTIES
from stitch_ops.paths import dataset_name


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from stitch_ops.ray_session import RayOptions, init_ray

    init_ray(RayOptions(), n_workers=2)  # one CPU per party, as in the pipeline
    yield
    ray.shutdown()


def test_two_party_rounds_survive_a_crashed_party(tiny_pair: TinyPair, joint, ray_local, tmp_path):
    from stitch_ops.baselines.federated import (
        FaultInjection,
        FederatedRoundError,
        GlobalCheckpoint,
        PartyData,
        load_canonical_state,
        train_federated,
    )
    from stitch_ops.baselines.plans import JOINT
    from stitch_ops.nnunet.model import build_network

    paths = tiny_pair.paths
    parties = [PartyData(p, dataset_name(PAIR, p), paths.preprocessed_root(p, plans_from=JOINT).resolve(),
                         tmp_path / "parties" / p) for p in PARTIES]
    checkpoint = GlobalCheckpoint(tmp_path / "global")

    with pytest.raises(FederatedRoundError, match="round 1 failed"):
        train_federated(parties, 0, TINY, checkpoint.folder, fault=FaultInjection("b", 1), progress=False)
    completed, after_round_0 = checkpoint.load()
    assert completed == 1  # round 0 completed on both parties, round 1 left no trace
    assert [r["round"] for r in checkpoint.history()] == [0]
    train_sizes = [len(json.loads((paths.raw_dataset(p) / "splits_final.json").read_text())[0]["train"])
                   for p in PARTIES]
    assert checkpoint.history()[0]["weights"] == train_sizes  # FedAvg weights: training cases of fold 0

    curve = []
    state, mirroring, history = train_federated(parties, 0, TINY, checkpoint.folder, progress=False,
                                                on_round=lambda index, values: curve.append((index, values)))
    assert [r["round"] for r in history] == [0, 1]
    assert [index for index, _ in curve] == [0, 1]  # the resumed round first, then the new one
    values = curve[1][1]
    for key in ("train_loss", "val_loss", "pseudo_dice", "lr"):  # each party's curve and the global one
        parties_values = [m[key] for m in history[1]["parties"]]
        assert values[f"a/{key}"] == parties_values[0] and values[f"b/{key}"] == parties_values[1]
        assert values[key] == pytest.approx(sum(w * v for w, v in zip(train_sizes, parties_values)) / sum(train_sizes))
    assert {m["party"] for m in history[1]["parties"]} == set(PARTIES)
    assert any(not torch.equal(state[k], after_round_0[k]) for k in state)  # round 1 trained from the average

    folder = parties[0].preprocessed_root / parties[0].dataset_name
    network = build_network(json.loads((folder / "nnUNetPlans.json").read_text()),
                            json.loads((folder / "dataset.json").read_text()), "2d")
    load_canonical_state(network, state)  # the global model is a complete nnU-Net


def test_pinned_parties_need_a_node_offering_their_resource(ray_local, tmp_path):
    """A local Ray offers no ``party_*`` resource: pinned actors would wait forever."""
    from stitch_ops.baselines.federated import PartyData, RayOptions, train_federated
    from stitch_ops.errors import UserError

    parties = [PartyData(p, dataset_name(PAIR, p), tmp_path, tmp_path / p) for p in PARTIES]
    with pytest.raises(UserError, match=r"no node of the Ray cluster offers \['party_a', 'party_b'\]"):
        train_federated(parties, 0, TINY, tmp_path / "global", ray_options=RayOptions(pin_parties=True),
                        progress=False)


def test_local_workers_run_at_the_drivers_priority(ray_local):
    """Ray nices its workers (15) by default: beside any busy process the parties then starve."""
    import os

    import ray

    @ray.remote(num_cpus=1)
    class Party:
        def niceness(self) -> int:
            return os.nice(0)

    party = Party.remote()
    try:
        assert ray.get(party.niceness.remote()) == os.nice(0)
    finally:
        ray.kill(party)
