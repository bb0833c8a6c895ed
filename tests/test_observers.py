"""Observers against ranges computed by hand on known data; the not-calibrated error."""
import math

import pytest
import torch

from lowbit.observers import (OBSERVERS, MSE, UINT8_TENSOR, Histogram, MinMax,
                              MovingAverageMinMax, Percentile, make_observer)


def test_minmax_per_tensor_and_qparams_by_hand():
    obs = MinMax()
    obs.update(torch.tensor([-1.0, 0.5, 2.0]))
    obs.update(torch.tensor([3.0, -0.5]))
    lo, hi = obs.range()
    assert lo.item() == -1.0 and hi.item() == 3.0
    scale, zero_point = obs.qparams(UINT8_TENSOR)
    assert scale.item() == pytest.approx(4.0 / 255)            # S = (max - min) / (qmax - qmin)
    assert zero_point.item() == round(0 - (-1.0) / (4.0 / 255))  # Z = round(qmin - min / S) = 64


def test_minmax_per_channel():
    x = torch.tensor([[[1.0, -2.0], [0.0, 5.0]]])               # (1, 2 channels, 2)
    obs = MinMax(axis=1)
    obs.update(x)
    lo, hi = obs.range()
    assert lo.flatten().tolist() == [-2.0, 0.0] and hi.flatten().tolist() == [1.0, 5.0]
    assert obs.qparams()[0].shape == (2, 1)


def test_moving_average_by_hand():
    obs = MovingAverageMinMax(averaging_constant=0.5)
    obs.update(torch.tensor([0.0, 4.0]))
    obs.update(torch.tensor([0.0, 8.0]))
    assert obs.range()[1].item() == 6.0                          # 4 + 0.5 * (8 - 4)


def test_percentile_on_uniform_data():
    x = torch.arange(10001, dtype=torch.float32) / 10000         # 0.0 .. 1.0 evenly
    obs = Percentile(percentile=99.0)
    obs.update(x)
    lo, hi = obs.range()
    assert lo.item() == 0.0
    assert hi.item() == pytest.approx(0.99, abs=2e-3)


def test_histogram_keeps_the_range_of_uniform_data():
    x = torch.arange(10_001, dtype=torch.float32) / 10_000         # 0.0 .. 1.0 evenly
    obs = Histogram()
    obs.update(x)
    lo, hi = obs.range()
    assert lo.item() == 0.0 and hi.item() == pytest.approx(1.0, abs=1e-6)


def test_histogram_clips_a_heavy_tail_at_lower_kl():
    torch.manual_seed(0)
    x = torch.exp(torch.randn(100_000))                            # log-normal, max ~ 96
    obs = Histogram()
    obs.update(x)
    lo, hi = obs.range()
    assert lo.item() == 0.0 and 5.0 < hi.item() < 0.5 * x.max().item()
    from lowbit.observers import _kl_after_quantization
    i1 = round(hi.item() / ((obs.hi[0] - obs.lo[0]).item() / obs.bins))
    assert (_kl_after_quantization(obs.hist[0], 0, i1, 255)
            <= _kl_after_quantization(obs.hist[0], 0, obs.bins, 255))


def test_mse_range_minimises_error_on_uniform_data():
    # Uniform data on [0, 1]: clipping costs more than rounding saves, so MSE keeps ~ the range.
    x = torch.arange(100_001, dtype=torch.float32) / 100_000
    obs = MSE()
    obs.update(x)
    assert obs.range()[1].item() == pytest.approx(1.0, abs=0.02)


def test_mse_clips_heavy_tail():
    torch.manual_seed(0)
    x = torch.randn(200_000).abs()                               # half-normal, max ~ 4.5
    hi_minmax = x.max().item()
    obs = MSE()
    obs.update(x)
    hi = obs.range()[1].item()
    assert 2.0 < hi < hi_minmax                                  # the optimum clips the tail
    # and it really has lower squared error than the min-max range
    def err(top):
        s = top / 255
        return ((torch.round(x / s).clamp(0, 255) * s - x) ** 2).mean().item()
    assert err(hi) <= err(hi_minmax)


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
def test_not_calibrated_error(kind):
    obs = make_observer(kind, name="conv1 input")
    with pytest.raises(RuntimeError, match="not calibrated: run calibration data"):
        obs.qparams()


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
def test_every_observer_per_channel(kind):
    torch.manual_seed(0)
    obs = make_observer(kind, axis=1)
    obs.update(torch.randn(8, 3, 16) + torch.tensor([0.0, 5.0, -5.0])[None, :, None])
    lo, hi = obs.range()
    assert lo.shape == hi.shape == (3, 1)
    assert hi[1].item() > 5.0 and lo[2].item() < -5.0


def test_unknown_observer_name():
    with pytest.raises(ValueError, match="observer must be one of"):
        make_observer("kl")
