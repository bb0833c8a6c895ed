"""The report tests' fixture: a fresh copy of the hand-made comparison of report_data.py."""
from __future__ import annotations

import copy

import pytest
from report_data import COMPARISON


@pytest.fixture
def comparison():
    """A deep copy of the hand-made comparison, safe to modify."""
    return copy.deepcopy(COMPARISON)
