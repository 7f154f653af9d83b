"""Fixtures of the sharing tests: two institutions with tiny real nnU-Net models, built once."""

from __future__ import annotations

import pytest

from tests.bundle.institutions import Institution, make_institution


@pytest.fixture(scope="session")
def institution_a(tmp_path_factory: pytest.TempPathFactory) -> Institution:
    return make_institution("a", tmp_path_factory.mktemp("institution_a"), seed=0)


@pytest.fixture(scope="session")
def institution_b(tmp_path_factory: pytest.TempPathFactory) -> Institution:
    return make_institution("b", tmp_path_factory.mktemp("institution_b"), seed=1)
