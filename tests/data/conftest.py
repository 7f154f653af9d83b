"""Fixtures for the data tests: small synthetic pairs generated once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from stitch_ops.data.synthetic import generate_pair


@dataclass(frozen=True)
class SyntheticData:
    """Where the session's synthetic pairs live and how they were made (seed 0)."""

    root: Path  # root / pair / party
    cases: dict[str, dict[str, int]]  # {pair: {party: n}}
    size: int


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticData:
    """Both synthetic pairs, small but enough for a six-part split of party b's videos (>= 6 videos)."""
    data = SyntheticData(
        root=tmp_path_factory.mktemp("synthetic"),
        cases={"polyp": {"a": 12, "b": 14}, "pelvis": {"a": 7, "b": 6}},
        size=64,
    )
    for pair, counts in data.cases.items():
        generate_pair(pair, data.root / pair, counts, seed=0, image_size=data.size, progress=False)
    return data
