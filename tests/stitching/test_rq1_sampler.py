"""The RQ1 sampler: stitch counts, draws without replacement, no duplicates, the output switch never drawn."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from stitch_ops.stitching.network import Parent
from stitch_ops.stitching.rq1 import eligible_switches, output_matches, sample_networks, stitch_counts
from stitch_ops.stitching.switch import SwitchMode


def active(configuration) -> set[int]:
    modes = configuration.switches_a + configuration.switches_b
    return {i for i, mode in enumerate(modes) if mode is SwitchMode.STITCHED}


def test_counts_are_every_count_or_an_even_stride_with_both_ends():
    assert stitch_counts(6, None) == [0, 1, 2, 3, 4, 5, 6]
    assert stitch_counts(10, 3) == [0, 5, 10]
    assert stitch_counts(4, 9) == [0, 1, 2, 3, 4]  # more counts than switches: every count


def test_eligible_switches_leave_out_both_switches_of_the_output_match():
    # 4 matches, the last one is the output: switches 3 (at a_3) and 7 (at b_3) are excluded
    assert eligible_switches(4, [3]) == [0, 1, 2, 4, 5, 6]


@pytest.mark.parametrize("n_stitches", [0, 1, 3, 6])
def test_each_network_has_exactly_n_distinct_eligible_stitches_and_no_duplicates(n_stitches: int):
    generator = torch.Generator().manual_seed(0)
    networks = sample_networks(4, [3], n_stitches, samples=3, generator=generator)
    assert 1 <= len(networks) <= 3
    assert len(set(networks)) == len(networks)
    for network in networks:
        assert network.active_stitches == n_stitches
        assert active(network) <= {0, 1, 2, 4, 5, 6}
        assert all(mode in (SwitchMode.ORIGINAL, SwitchMode.STITCHED) for mode in network.switches_a + network.switches_b)
    if n_stitches == 6:  # every eligible switch: only the output parent can differ
        assert len(networks) <= 2 and all(active(n) == {0, 1, 2, 4, 5, 6} for n in networks)


def test_duplicates_are_removed():
    # zero stitches: a network is only its output parent, so at most two of many samples survive
    networks = sample_networks(5, [4], 0, samples=20, generator=torch.Generator().manual_seed(1))
    assert sorted(n.output.value for n in networks) == ["a", "b"]


def test_draws_are_uniform_over_eligible_switches_and_both_outputs():
    generator = torch.Generator().manual_seed(2)
    picks, outputs = Counter(), Counter()
    for _ in range(3000):
        (network,) = sample_networks(4, [3], 1, samples=1, generator=generator)
        picks.update(active(network))
        outputs[network.output] += 1
    assert set(picks) == {0, 1, 2, 4, 5, 6}
    assert all(400 < count < 600 for count in picks.values())  # 500 expected each
    assert 1350 < outputs[Parent.A] < 1650


def test_too_many_stitches_are_refused():
    with pytest.raises(ValueError, match=r"n_stitches should be in \[0, 6\]"):
        sample_networks(4, [3], 7, samples=1, generator=torch.Generator())


def test_the_output_match_of_a_real_combined_network_is_its_last(toy_pair):
    from stitch_ops.stitching import StitchedNetwork

    network = StitchedNetwork.from_parents(toy_pair.spec_a, toy_pair.network_a, toy_pair.spec_b, toy_pair.network_b)
    assert output_matches(network) == [len(network.matches) - 1]
