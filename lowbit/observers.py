"""Calibration observers: watch activations (``update(x)``), then choose a range (``qparams(fmt)``).

Every observer reduces what it saw to a range ``[min_val, max_val]`` per tensor or per channel
and hands it to :func:`lowbit.primitives.choose_qparams`, so the scale/zero-point arithmetic
lives in one place. They differ only in how the range is chosen:

- :class:`MinMax`               the extremes seen (no clipping).
- :class:`MovingAverageMinMax`  an exponential moving average of each batch's extremes.
- :class:`Percentile`           the ``percentile`` quantiles of a running histogram.
- :class:`Histogram`            the clipping range minimising KL(P || Q) between the histogram
                                and its quantized version (TensorRT's entropy calibration,
                                Migacz 2017, generalised to asymmetric ranges).
- :class:`MSE`                  the clipping range minimising the expected squared
                                quantization error over the histogram.

Granularity is one parameter: ``axis=None`` observes per tensor; ``axis=k`` keeps one range per
index of axis ``k`` (channels of an activation are axis 1, of a weight axis 0).
"""
from __future__ import annotations

import math

import torch

from .formats import QFormat, int_format
from .primitives import choose_qparams

# Activations: unsigned 8 bits, asymmetric, one scale per tensor (what oneDNN's u8 kernels take).
UINT8_TENSOR = int_format(8, signed=False, symmetric=False).replace(granularity="tensor")


class Observer:
    """Base: tracks nothing; subclasses fill ``min_val``/``max_val`` (shape ``[rows, 1]``)."""

    def __init__(self, axis: int | None = None, name: str = "tensor") -> None:
        self.axis = axis
        self.name = name
        self.num_batches = 0

    # --- the two calls ------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Watch one batch of ``x`` (any shape; per channel along ``axis``)."""
        if x.numel() == 0:
            return
        x = x.detach().float()
        if self.axis is None and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            x = x.permute(0, 2, 3, 1)  # contiguous, so the flattening below copies nothing
        self._update(self._rows(x))
        self.num_batches += 1

    def qparams(self, fmt: QFormat = UINT8_TENSOR) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale, zero_point) of the chosen range in ``fmt``, shaped ``[rows, 1]``."""
        lo, hi = self.range()
        rows = lo.shape[0]
        shape_fmt = fmt.replace(granularity="tensor" if rows == 1 else "channel")
        return choose_qparams(torch.zeros(rows, 1), shape_fmt, name=self.name,
                              min_val=lo, max_val=hi)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen ``(min_val, max_val)``, each ``[rows, 1]``."""
        if self.num_batches == 0:
            raise RuntimeError(
                f"{type(self).__name__} observer of {self.name!r} is not calibrated: run "
                f"calibration data through the model first (update())"
            )
        return self._range()

    # --- helpers -------------------------------------------------------------------------
    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[rows, n]``: one row per channel, or a single row per tensor."""
        if self.axis is None:
            return x.reshape(1, -1)
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    def _update(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        axis = "per tensor" if self.axis is None else f"per channel (axis {self.axis})"
        return f"{type(self).__name__}({self.name!r}, {axis}, {self.num_batches} batches)"


class MinMax(Observer):
    """The smallest and largest values seen."""

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x, dim=1, keepdim=True)
        if self.num_batches == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def _range(self):
        return self.min_val, self.max_val


class MovingAverageMinMax(MinMax):
    """``m <- (1 - c) m + c * batch_extreme``, starting from the first batch's extremes."""

    def __init__(self, axis: int | None = None, name: str = "tensor",
                 averaging_constant: float = 0.01) -> None:
        super().__init__(axis, name)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x, dim=1, keepdim=True)
        if self.num_batches == 0:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)


class _HistogramBase(Observer):
    """A running histogram per row over ``[lo, hi]`` (always containing 0), ``bins`` bins.

    When a batch falls outside the current range, the range grows and the old counts are
    re-binned by their bin centres (an approximation confined to the old bin width).
    """

    def __init__(self, axis: int | None = None, name: str = "tensor", bins: int = 2048) -> None:
        super().__init__(axis, name)
        if bins < 256:
            raise ValueError(f"a histogram observer needs bins >= 256, got {bins}")
        self.bins = bins

    def _update(self, x: torch.Tensor) -> None:
        rows = x.shape[0]
        lo, hi = torch.aminmax(x, dim=1)
        lo, hi = lo.clamp(max=0).double(), hi.clamp(min=0).double()
        hi = torch.where(hi - lo > 0, hi, lo + 1e-8)
        if self.num_batches == 0:
            self.lo, self.hi = lo, hi
            self.hist = torch.zeros(rows, self.bins, dtype=torch.float64)
        elif bool((lo < self.lo).any() or (hi > self.hi).any()):
            new_lo, new_hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
            centres = self._centres()                                            # (rows, bins)
            self.hist = self._bin(centres, self.hist, new_lo, new_hi)
            self.lo, self.hi = new_lo, new_hi
        if rows == 1:  # one pass, no index tensor
            width = float(self.hi[0] - self.lo[0]) / self.bins
            lo0, hi0 = float(self.lo[0]), float(self.lo[0]) + width * self.bins
            self.hist[0] += torch.histc(x, self.bins, lo0, hi0).double()
        else:
            self.hist += self._bin(x, None, self.lo.float(), self.hi.float())

    def _bin(self, values: torch.Tensor, weights, lo, hi) -> torch.Tensor:
        """Histogram of each row of ``values`` (optionally weighted) over its row's [lo, hi]."""
        rows, bins = values.shape[0], self.bins
        width = (hi - lo) / bins
        idx = ((values - lo[:, None]) / width[:, None]).floor().clamp(0, bins - 1).long()
        idx = idx + torch.arange(rows)[:, None] * bins                          # (rows, n)
        w = None if weights is None else weights.reshape(-1)
        return torch.bincount(idx.reshape(-1), w, minlength=rows * bins).double().reshape(rows, bins)

    def _centres(self) -> torch.Tensor:
        width = (self.hi - self.lo) / self.bins
        return self.lo[:, None] + width[:, None] * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def _range(self):
        lo, hi = zip(*(self._choose(r) for r in range(self.hist.shape[0])))
        return torch.tensor(lo).reshape(-1, 1).float(), torch.tensor(hi).reshape(-1, 1).float()

    def _candidates(self, r: int, steps: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipping ranges (in bin indices [i0, i1)) shrinking both ends toward zero together."""
        width = float(self.hi[r] - self.lo[r]) / self.bins
        zero = min(max(int(round(-float(self.lo[r]) / width)), 0), self.bins)   # bin edge of 0.0
        frac = torch.linspace(1.0, 0.05, steps, dtype=torch.float64)
        i0 = (zero - torch.round(frac * zero)).long()
        i1 = (zero + torch.round(frac * (self.bins - zero))).long()
        return i0, torch.maximum(i1, i0 + 1)

    def _edge(self, r: int, index) -> float:
        return float(self.lo[r] + (self.hi[r] - self.lo[r]) * int(index) / self.bins)

    def _choose(self, r: int) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class Percentile(_HistogramBase):
    """The ``100 - percentile`` and ``percentile`` quantiles of the values seen (99.99 default)."""

    def __init__(self, axis: int | None = None, name: str = "tensor", bins: int = 2048,
                 percentile: float = 99.99) -> None:
        super().__init__(axis, name, bins)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _choose(self, r: int) -> tuple[float, float]:
        cdf = self.hist[r].cumsum(0) / self.hist[r].sum()
        tail = 1 - self.percentile / 100
        i0 = int(torch.searchsorted(cdf, torch.tensor([tail], dtype=torch.float64)))
        i1 = int(torch.searchsorted(cdf, torch.tensor([1 - tail], dtype=torch.float64))) + 1
        return min(self._edge(r, i0), 0.0), max(self._edge(r, min(i1, self.bins)), 0.0)


class Histogram(_HistogramBase):
    """Entropy calibration: the range whose 8-bit quantization of the histogram loses the least
    information, KL(P || Q) (Migacz, "8-bit Inference with TensorRT", 2017).

    P is the histogram clipped to a candidate range (outliers folded into its edge bins); Q
    merges P's bins into ``levels`` quantization levels and spreads each level's mass evenly
    over its non-empty bins. Candidates shrink both ends toward zero together, so for
    non-negative data (after ReLU) it is TensorRT's search over the upper threshold.

    KL alone happily clips a point mass at the edge of the range (ReLU6 outputs saturated at
    6: measured on EfficientNet-Lite0 it chose [0, 1.4] for [0, 6] and top-1 agreement fell to
    9%), so a candidate may clip at most ``max_clipped`` of the values seen (default 0.1%).
    """

    def __init__(self, axis: int | None = None, name: str = "tensor", bins: int = 2048,
                 levels: int = 255, max_clipped: float = 1e-3) -> None:
        super().__init__(axis, name, bins)
        self.levels, self.max_clipped = levels, max_clipped

    def _choose(self, r: int) -> tuple[float, float]:
        hist = self.hist[r]
        cdf = torch.cat([torch.zeros(1, dtype=hist.dtype), hist.cumsum(0)]) / hist.sum()
        best, best_kl = (0, self.bins), math.inf
        for i0, i1 in zip(*self._candidates(r)):
            i0, i1 = int(i0), int(i1)
            if i1 - i0 < self.levels or float(cdf[i0] + 1 - cdf[i1]) > self.max_clipped:
                break
            kl = _kl_after_quantization(hist, i0, i1, self.levels)
            if kl < best_kl:
                best, best_kl = (i0, i1), kl
        return min(self._edge(r, best[0]), 0.0), max(self._edge(r, best[1]), 0.0)


def _kl_after_quantization(hist: torch.Tensor, i0: int, i1: int, levels: int) -> float:
    """KL(P || Q) of the histogram clipped to bins [i0, i1) and quantized to ``levels`` levels."""
    p = hist[i0:i1].clone()
    p[0] += hist[:i0].sum()
    p[-1] += hist[i1:].sum()
    n = i1 - i0
    level = (torch.arange(n) * levels // n)                                      # bin -> level
    nonzero = (p > 0).double()
    mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, level, hist[i0:i1])
    count = torch.zeros(levels, dtype=torch.float64).index_add_(0, level, nonzero)
    q = torch.where(nonzero > 0, mass[level] / count[level].clamp_min(1), torch.zeros_like(p))
    p, q = p / p.sum(), q / q.sum().clamp_min(1e-30)
    keep = p > 0
    return float((p[keep] * (p[keep] / q[keep].clamp_min(1e-30)).log()).sum())


class MSE(_HistogramBase):
    """The range minimising the expected squared error of quantizing the values seen,
    ``sum_bins count * (dequant(quant(centre)) - centre)^2``, rounding and clipping included.
    """

    def __init__(self, axis: int | None = None, name: str = "tensor", bins: int = 2048,
                 fmt: QFormat = UINT8_TENSOR) -> None:
        super().__init__(axis, name, bins)
        self.fmt = fmt

    def _choose(self, r: int) -> tuple[float, float]:
        i0, i1 = self._candidates(r)
        lo = self.lo[r] + (self.hi[r] - self.lo[r]) * i0 / self.bins            # (cands,)
        hi = self.lo[r] + (self.hi[r] - self.lo[r]) * i1 / self.bins
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        qmin, qmax = self.fmt.qmin, self.fmt.qmax
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-12)[:, None]            # (cands, 1)
        zero_point = torch.round(qmin - lo[:, None] / scale).clamp(qmin, qmax)
        c = self._centres()[r][None, :]                                          # (1, bins)
        err = (torch.round(c / scale + zero_point).clamp(qmin, qmax) - zero_point) * scale - c
        best = int((err.square() * self.hist[r][None, :]).sum(1).argmin())
        return float(lo[best]), float(hi[best])


OBSERVERS = {
    "minmax": MinMax, "moving_average": MovingAverageMinMax, "percentile": Percentile,
    "histogram": Histogram, "mse": MSE,
}


def make_observer(kind: str, *, axis: int | None = None, name: str = "tensor") -> Observer:
    """An observer by name: one of ``OBSERVERS`` (``"histogram"``, ``"mse"``, ...)."""
    if kind not in OBSERVERS:
        raise ValueError(f"observer must be one of {tuple(OBSERVERS)}, got {kind!r}")
    return OBSERVERS[kind](axis=axis, name=name)
