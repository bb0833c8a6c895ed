"""Fixtures of the kernel tests."""
from __future__ import annotations

import pytest
from kernel_cases import stand_in_extension

from lowbit.kernels import cpu, dispatch


@pytest.fixture
def stand_in(monkeypatch):
    """The CPU registration runs a stand-in extension (kernel_cases.stand_in_extension): yields
    the list of kernel names called, in order."""
    calls: list[str] = []
    module = stand_in_extension(calls)
    monkeypatch.setattr(cpu, "extension_status", lambda: (module, "stand-in extension"))
    monkeypatch.setattr(cpu, "vbmi_status", lambda: (True, "stand-in"))
    monkeypatch.setattr(cpu, "amx_status", lambda: (True, "stand-in"))
    dispatch.kernel.cache_clear()
    yield calls
    dispatch.kernel.cache_clear()
