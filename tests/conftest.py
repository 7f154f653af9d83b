"""Fixtures for every test: no test leaks nnU-Net's environment variables or the global
random generators into the next one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.helpers import kept_global_state


@pytest.fixture(autouse=True)
def isolated_global_state() -> Iterator[None]:
    """nnU-Net's variables (``stitch_ops.nnunet.env.configure`` sets them for the process)
    and Python's, NumPy's and torch's global generators are restored after each test."""
    with kept_global_state():
        yield
