"""Fixtures for every test: no test leaks nnU-Net's environment variables or the global
random generators into the next one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.helpers import kept_global_state


LONGEST_FIRST = ("tests/pipeline/", "tests/baselines/test_federated_ray.py", "tests/baselines/test_kill_resume.py")
"""The files with the longest work, in the order the workers should start them: the smoke
pipeline's module fixture (about a third of the suite's work), a federated run that survives
a crashed party, the kill-and-resume trainings."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (stable: every other file keeps its place). ``make test`` runs
    two workers that take one file at a time in this order (``--dist loadfile
    --no-loadscope-reorder``), so the smoke pipeline starts at once on one worker while the
    other works through the rest, instead of one of them starting it last."""
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))
    items.sort(key=rank)


@pytest.fixture(autouse=True)
def isolated_global_state() -> Iterator[None]:
    """nnU-Net's variables (``stitch_ops.nnunet.env.configure`` sets them for the process)
    and Python's, NumPy's and torch's global generators are restored after each test."""
    with kept_global_state():
        yield
