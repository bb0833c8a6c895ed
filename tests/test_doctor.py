"""lowbit doctor: the machine, the kernels, and a recipe's plan, before anything runs."""
import pytest
from torch import nn

from lowbit.doctor import diagnose, machine
from lowbit.recipes import from_spec


def test_machine_records_what_a_result_row_needs():
    m = machine()
    assert {"cores", "logical_cpus", "cpu", "cpu_flags", "torch"} <= set(m)
    with pytest.raises(ValueError, match="expects 'cpu' or 'cuda'"):
        machine("tpu")


def test_diagnose_shows_the_plan_and_what_fails():
    net = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    out = diagnose(net, from_spec("rtn:w4g32"))
    assert "| 0 | Linear | (48, 64) | quantize | uint4 asym g32 |" in out
    assert "| 2 | Linear | (10, 48) | error |" in out and "1 would fail" in out
    assert "choose a group size that divides" in out
    assert "give --recipe" in diagnose(net)
